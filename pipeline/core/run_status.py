"""What a training run tells its watchers: the live-metric names and ``dvclive/run.json``.

The train stage writes through this module and ``tenny train-watch`` / the
Training screen read the same names, so a rename cannot split writer from
reader.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core.records import write_json

RUN_JSON = "run.json"
SAMPLES = "samples.jsonl"  # answers while it trains (pipeline/engines/train_samples.py)

# dvclive metric names, one TSV each under dvclive/plots/metrics/
TRAIN_LOSS = "train/loss"
LEARNING_RATE = "train/lr"
TOKENS_PER_S = "train/tokens_per_s"
TOKENS = "train/tokens"  # training tokens (non-pad) seen so far, all processes
EPOCH = "train/epoch"
STEP_TIME = "train/step_time_s"
EVAL_LOSS = "eval/loss"


class RunStatus:
    """dvclive/run.json: progress a watcher can read at any moment (written atomically).

    Fields: status (running | finished | failed | interrupted), step, total_steps,
    eta_s, device, base_model, quantization, last_checkpoint, resumed_from_step,
    started_at, updated_at, and error when it failed; with early stopping,
    best_step and best_val_loss (at each checkpoint), kept_step and
    stop_reason (at the end).
    """

    def __init__(self, path: Path, **fixed: Any):
        self.path = path
        self.state: dict[str, Any] = {"status": "running", "step": 0, "started_at": time.time(),
                                      "last_checkpoint": None, "resumed_from_step": None, **fixed}

    def update(self, durable: bool = False, **changes: Any) -> None:
        """Write the new state; fsync only when ``durable`` or the status changes.

        Always atomic (temp file + rename: a watcher never reads half a file).
        Between checkpoints a power cut may lose the newest progress figures,
        which the next write replaces anyway; an fsync per log step would make
        a fast GPU step wait on the disk.
        """
        self.state.update(changes, updated_at=time.time())
        if durable or "status" in changes:
            write_json(self.path, self.state)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self.state, fh, ensure_ascii=False, indent=2)
                fh.write("\n")
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
