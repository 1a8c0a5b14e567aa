"""What tenny adds to transformers' Trainer loop: live figures, sealed checkpoints.

(Stopping on a signal, for one process or many: engines/train_stop.py.)

The Trainer owns the loop, schedule, accumulation, precision, checkpoint
contents and resume; these callbacks only watch it. Every file is written by
the main process alone, so ``accelerate launch`` with N processes writes one
dvclive folder, one run.json and one set of checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback

from pipeline.core import run_status as rs
from pipeline.engines import checkpoints
from pipeline.engines.packing import REAL_TOKENS

# Trainer log key → dvclive metric name (the names train-watch and the app read)
LOG_NAMES = {"loss": rs.TRAIN_LOSS, "learning_rate": rs.LEARNING_RATE, "eval_loss": rs.EVAL_LOSS}


class InOrderTrainer(Trainer):
    """Takes the train rows in the order given (the train stage shuffles them per epoch).

    Counts the real tokens of training batches in ``state.num_input_tokens_seen``
    (saved in every checkpoint, so a resumed run counts on): the collator puts
    the count into the batch (packing.REAL_TOKENS) and it is taken out here,
    before the forward, for training batches only. Counted where the batch is
    used, not where it is collated, so eval passes, a loader that collates
    ahead and worker processes leave it exact, and it costs no device sync.
    """

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)

    def compute_loss(self, model, inputs, *args, **kwargs):
        real = inputs.pop(REAL_TOKENS, None)
        if real is not None and model.training:
            self.state.num_input_tokens_seen += int(real)
        return super().compute_loss(model, inputs, *args, **kwargs)


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
    import json

    from pipeline.core.records import atomic_writer

    # dvclive writes metrics.json in place: a kill -9 mid-write leaves it torn, and dvclive's resume
    # would fail reading it. The resumed run's next log writes it afresh.
    try:
        json.loads((directory / "metrics.json").read_text(encoding="utf-8"))
    except ValueError:
        (directory / "metrics.json").unlink()
    except OSError:
        pass
    for tsv in (directory / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text(encoding="utf-8").splitlines()
        header = lines[0].split("\t") if lines else []
        if "step" not in header:
            continue
        col = header.index("step")
        kept = [lines[0]] + [ln for ln in lines[1:] if ln.split("\t")[col].isdigit() and int(ln.split("\t")[col]) <= step]
        with atomic_writer(tsv) as fh:
            fh.write("\n".join(kept) + "\n")


class SeriesFiles:
    """dvclive's plot files (``plots/metrics/<name>.tsv``: a ``step <name>`` header, one row per point),
    appended through handles kept open.

    dvclive opens and closes each file per point: six opens per logged step,
    about a millisecond on this project's test machine, which a fast step
    should not pay (bench/bench_train.py --overhead).
    The format is dvclive's, so `dvc plots` and the watchers read it as before;
    dvclive still keeps the summary (metrics.json). Whole lines are written
    and flushed per log, so a kill -9 loses none that was logged.
    """

    def __init__(self, directory: Path):
        self.base = directory / "plots" / "metrics"
        self.files: dict[str, Any] = {}

    def add(self, name: str, step: int, value: float) -> None:
        fh = self.files.get(name)
        if fh is None:
            path = self.base / f"{name}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            fh = self.files[name] = open(path, "a", encoding="utf-8", newline="")
            if new:
                fh.write(f"step\t{name.rsplit('/', 1)[-1]}\n")
        fh.write(f"{step}\t{value}\n")

    def flush(self) -> None:
        for fh in self.files.values():
            fh.flush()

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        self.files.clear()


FILES_EVERY_S = 1.0  # metrics.json and run.json: rewritten at most this often between evals and checkpoints


def postfix(train_loss: float, val_loss: float) -> dict[str, str]:
    """The bar's figures: a loss shows once there is one (no ``val=nan`` before the first eval)."""
    return {name: f"{value:.3f}" for name, value in (("loss", train_loss), ("val", val_loss)) if value == value}


class LiveMetrics(TrainerCallback):
    """dvclive metrics under tenny's names, dvclive/run.json and the progress bar (main process).

    Writes at the Trainer's log steps only (``logging_steps``: train.log_every),
    so a fast GPU step does not wait for files: the loss is read off the device
    (the one sync) and a line appended to each plot every N steps; metrics.json
    and run.json are rewritten at most once a second (and at evals, checkpoints
    and the end). run.json is made durable (fsync) only at checkpoints and when
    the run's status changes (run_status.RunStatus).

    Figures: step time is the optimizer step alone (``on_step_begin`` to
    ``on_step_end``: forward, backward, optimizer; not eval, checkpoint saves
    or sample answers); tokens/s is the training tokens of the steps since the
    last log over their step time.
    """

    def __init__(self, directory: Path, status: rs.RunStatus, resumed_from: int | None, steps_per_epoch: float):
        self.steps_per_epoch = steps_per_epoch
        self.dir = directory
        self.status = status
        self.resumed_from = resumed_from
        self.live = None
        self.series: SeriesFiles | None = None
        self.bar = None
        self.last_val = self.last_train = float("nan")
        # Set when the run begins (main process): the clock the ETA starts from.
        self.started = self.t_step = 0.0
        self.start_step = 0
        # Since the last log: step time summed, steps, and the token count at the last log.
        self.window_s = 0.0
        self.window_steps = 0
        self.tokens_at_log = 0
        self.tokens_per_s = self.step_time = 0.0
        self.t_files = 0.0  # when metrics.json and run.json were last rewritten

    def on_train_begin(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        from tqdm import tqdm

        if self.resumed_from:
            drop_points_after(self.dir, self.resumed_from)
        self.live = open_live(self.dir, resume=bool(self.resumed_from))
        self.series = SeriesFiles(self.dir)
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True)
        self.started = self.t_step = time.time()
        self.start_step = state.global_step
        self.tokens_at_log = state.num_input_tokens_seen
        self.status.update(total_steps=state.max_steps, step=state.global_step, resumed_from_step=self.resumed_from)

    def on_step_begin(self, args, state, control, **kw):
        if state.is_world_process_zero:
            self.t_step = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        if not state.is_world_process_zero:
            return
        self.window_s += time.perf_counter() - self.t_step
        self.window_steps += 1
        self.bar.update(1)

    def on_log(self, args, state, control, logs=None, **kw):
        if not state.is_world_process_zero or self.live is None or not logs:
            return
        self.live.step = step = state.global_step

        def log(name: str, value: float) -> None:
            self.live.log_metric(name, value, plot=False)  # the summary (metrics.json)
            self.series.add(name, step, value)  # the plot

        for key, name in LOG_NAMES.items():
            if key in logs:
                log(name, round(float(logs[key]), 6))
        if "loss" in logs:
            self.last_train = float(logs["loss"])
            if self.window_steps:
                # Each process counts its own rows: DDP peers take as many.
                tokens = (state.num_input_tokens_seen - self.tokens_at_log) * args.world_size
                self.tokens_per_s = tokens / self.window_s if self.window_s > 0 else 0.0
                self.step_time = self.window_s / self.window_steps
            self.tokens_at_log, self.window_s, self.window_steps = state.num_input_tokens_seen, 0.0, 0
            log(rs.EPOCH, round(state.global_step / self.steps_per_epoch, 4))
            log(rs.TOKENS, state.num_input_tokens_seen * args.world_size)
            log(rs.TOKENS_PER_S, round(self.tokens_per_s, 1))
            log(rs.STEP_TIME, round(self.step_time, 4))
        if "eval_loss" in logs:
            self.last_val = float(logs["eval_loss"])
        self.series.flush()
        # Drawn at the bar's next refresh (tqdm redraws at most 10 times a second), not per log.
        self.bar.set_postfix(postfix(self.last_train, self.last_val), refresh=False)
        now = time.time()
        # The series above get every logged point; the two whole-file rewrites (metrics.json,
        # run.json) at most once a second, and at each eval and the last step: a watcher polls
        # about that often, and a fast step need not wait on them.
        if now - self.t_files >= FILES_EVERY_S or "eval_loss" in logs or state.global_step >= state.max_steps:
            self.t_files = now
            self.live.make_summary()
            done = state.global_step - self.start_step
            eta = (now - self.started) / done * (state.max_steps - state.global_step) if done else None
            self.status.update(step=state.global_step, eta_s=None if eta is None else round(eta, 1))

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            best = checkpoints.step_of(Path(state.best_model_checkpoint)) if state.best_model_checkpoint else None
            if self.live is not None:
                self.live.make_summary()
            self.status.update(durable=True, step=state.global_step, best_step=best,
                               best_val_loss=state.best_metric if best is not None else None,
                               last_checkpoint=str(Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"))

    def close(self, **summary: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.series is not None:
            self.series.close()
        if self.live is not None:
            for key, value in summary.items():
                self.live.summary[key] = value
            self.live.end()


def early_stopping_arguments(eval_every: int) -> dict:
    """TrainingArguments for ``train.early_stopping``: the Trainer keeps the best val loss and restores it.

    A checkpoint at every evaluation (``save_steps = eval_every``), so the best
    step always has one to restore; SealCheckpoints never prunes it.
    """
    return dict(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                save_strategy="steps", save_steps=eval_every)


def early_stopping_callback(es):
    from transformers import EarlyStoppingCallback

    return EarlyStoppingCallback(early_stopping_patience=es.patience, early_stopping_threshold=es.min_delta)


def early_stopping_report(state, es) -> dict:
    """What training.json and run.json say: which step was kept, and why."""
    kept = checkpoints.step_of(Path(state.best_model_checkpoint)) if state.best_model_checkpoint else None
    stopped = state.global_step < state.max_steps
    best = None if state.best_metric is None else round(float(state.best_metric), 5)
    if kept is None:
        reason = "no evaluation took place: the last step was kept"
    elif stopped:
        reason = (f"val loss did not improve by more than {es.min_delta:g} for {es.patience} evaluation"
                  f"{'s' if es.patience > 1 else ''} after step {kept}: stopped at step {state.global_step}, "
                  f"kept step {kept} (val loss {best})")
    else:
        reason = f"ran all {state.max_steps} steps; kept step {kept}, the lowest val loss ({best})"
    return {"metric": es.metric, "patience": es.patience, "min_delta": es.min_delta, "stopped_early": stopped,
            "stopped_at_step": state.global_step, "kept_step": kept, "best_val_loss": best, "reason": reason}


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
        # The best checkpoint so far stays whatever its age: early stopping restores it at the end,
        # and a resumed run needs it to keep its best-so-far.
        checkpoints.prune(Path(args.output_dir), self.keep, protect=state.best_model_checkpoint)
        # One plain line per checkpoint: logs show it, and tests wait for it before a kill -9.
        print(f"train: checkpoint at step {state.global_step} → {folder}", flush=True)
