"""What a training run tells its watchers: the live-metric names and ``dvclive/run.json``.

The train stage writes through this module and ``tenny train-watch`` / the
Training screen read the same names, so a rename cannot split writer from
reader.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.core.records import write_json

RUN_JSON = "run.json"

# dvclive metric names, one TSV each under dvclive/plots/metrics/
TRAIN_LOSS = "train/loss"
LEARNING_RATE = "train/lr"
TOKENS_PER_S = "train/tokens_per_s"
EPOCH = "train/epoch"
STEP_TIME = "train/step_time_s"
EVAL_LOSS = "eval/loss"


class RunStatus:
    """dvclive/run.json: progress a watcher can read at any moment (written atomically).

    Fields: status (running | finished | failed | interrupted), step, total_steps,
    eta_s, device, base_model, quantization, last_checkpoint, resumed_from_step,
    started_at, updated_at, and error when it failed.
    """

    def __init__(self, path: Path, **fixed: Any):
        self.path = path
        self.state: dict[str, Any] = {"status": "running", "step": 0, "started_at": time.time(),
                                      "last_checkpoint": None, "resumed_from_step": None, **fixed}

    def update(self, **changes: Any) -> None:
        self.state.update(changes, updated_at=time.time())
        write_json(self.path, self.state)
