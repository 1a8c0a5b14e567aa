"""What tenny adds to transformers' Trainer loop: live figures, sealed checkpoints, a clean stop.

The Trainer owns the loop, schedule, accumulation, precision, checkpoint
contents and resume; these callbacks only watch it. Every file is written by
the main process alone, so ``accelerate launch`` with N processes writes one
dvclive folder, one run.json and one set of checkpoints.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback

from pipeline.core import run_status as rs
from pipeline.engines import checkpoints

# Trainer log key → dvclive metric name (the names train-watch and the app read)
LOG_NAMES = {"loss": rs.TRAIN_LOSS, "learning_rate": rs.LEARNING_RATE, "eval_loss": rs.EVAL_LOSS}


class InOrderTrainer(Trainer):
    """Takes the train rows in the order given (the train stage shuffles them per epoch)."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def open_live(directory: Path, resume: bool):
    """dvclive's logger for dvclive/; metrics and plots are declared in dvc.yaml, not by dvclive."""
    import dvclive.live
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    kwargs = dict(dir=str(directory), dvcyaml=None, save_dvc_exp=False, report=None, resume=resume)
    try:
        return Live(**kwargs)
    except SCMError:
        # dvclive fails in a git repo with no commit yet (`git init` then `dvc repro`);
        # nothing of DVC's is needed here, so log without the DVC integration.
        original = dvclive.live.get_dvc_repo
        dvclive.live.get_dvc_repo = lambda: None
        try:
            return Live(**kwargs)
        finally:
            dvclive.live.get_dvc_repo = original


def drop_points_after(directory: Path, step: int) -> None:
    """A resumed run logs again from ``step``: drop the points the killed run logged past it."""
    from pipeline.core.records import atomic_writer

    for tsv in (directory / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t") if lines else []
        if "step" not in header:
            continue
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[col].isdigit() and int(ln.split("\t")[col]) <= step]
        with atomic_writer(tsv) as fh:
            fh.write("\n".join(kept) + "\n")


class LiveMetrics(TrainerCallback):
    """dvclive metrics under tenny's names, dvclive/run.json and the progress bar (main process)."""

    def __init__(self, directory: Path, status: rs.RunStatus, collator: Any, resumed_from: int | None,
                 steps_per_epoch: float):
        self.steps_per_epoch = steps_per_epoch
        self.dir = directory
        self.status = status
        self.collator = collator
        self.resumed_from = resumed_from
        self.live = None
        self.bar = None
        self.last_val = self.last_train = float("nan")
        # Set when the run begins (main process): the clock and token count tokens/s and the ETA start from.
        self.started = self.t_step = 0.0
        self.start_step = self.tokens_seen = 0
        self.tokens_per_s = self.step_time = 0.0

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from tqdm import tqdm

        if self.resumed_from:
            drop_points_after(self.dir, self.resumed_from)
        self.live = open_live(self.dir, resume=bool(self.resumed_from))
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
        self.started = self.t_step = time.time()
        self.start_step = state.global_step
        self.tokens_seen = self.collator.real_tokens
        self.status.update(total_steps=state.max_steps, step=state.global_step, resumed_from_step=self.resumed_from)

    def on_step_end(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        now = time.time()
        # Tokens collated since the run began over the time since: the loader collates a batch
        # ahead, so a per-step count would be off by one batch (and 0 at the last step).
        # DDP peers collate as many rows as this process.
        tokens = (self.collator.real_tokens - self.tokens_seen) * args.world_size
        self.tokens_per_s = tokens / (now - self.started) if now > self.started else 0.0
        self.step_time, self.t_step = now - self.t_step, now
        done = state.global_step - self.start_step
        eta = (now - self.started) / done * (state.max_steps - state.global_step) if done else None
        self.status.update(step=state.global_step, eta_s=None if eta is None else round(eta, 1))
        self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or self.live is None or not logs:
            return
        self.live.step = state.global_step
        for key, name in LOG_NAMES.items():
            if key in logs:
                self.live.log_metric(name, round(float(logs[key]), 6))
        if "loss" in logs:
            self.last_train = float(logs["loss"])
            self.live.log_metric(rs.EPOCH, round(state.global_step / self.steps_per_epoch, 4))
            self.live.log_metric(rs.TOKENS_PER_S, round(self.tokens_per_s, 1))
            self.live.log_metric(rs.STEP_TIME, round(self.step_time, 4))
        if "eval_loss" in logs:
            self.last_val = float(logs["eval_loss"])
        self.live.make_summary()
        self.bar.set_postfix(loss=f"{self.last_train:.3f}", val=f"{self.last_val:.3f}")

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.status.update(last_checkpoint=str(Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"))

    def close(self, **summary: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.live is not None:
            for key, value in summary.items():
                self.live.summary[key] = value
            self.live.end()


class SealCheckpoints(TrainerCallback):
    """Marks each checkpoint complete once the Trainer has written it, then keeps the newest few."""

    def __init__(self, info: dict, keep: int):
        self.info = info
        self.keep = keep

    def on_save(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"
        checkpoints.mark_complete(folder, {**self.info, "step": state.global_step, "saved_at": time.time()})
        checkpoints.prune(Path(args.output_dir), self.keep)
        # One plain line per checkpoint: logs show it, and tests wait for it before a kill -9.
        print(f"train: checkpoint at step {state.global_step} → {folder}", flush=True)


class StopOnSignal(TrainerCallback):
    """SIGTERM / SIGINT: finish the step, save a checkpoint, stop. A second signal stops at once."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may take signals (a run started from a worker thread)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        print(f"\ntrain: {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
              "(again to stop now)", flush=True)

    def on_step_end(self, args, state, control, **kw):
        if self.received is not None:
            control.should_save = True
            control.should_training_stop = True
