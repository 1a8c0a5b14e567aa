"""`tenny train-watch`: the training monitor on its own, e.g. over SSH on the GPU box.

    tenny train-watch                  # follow ./dvclive in the terminal app
    tenny train-watch --dir runs/x     # another dvclive folder
    tenny train-watch --once           # print one status line and exit (scripts, cron, CI logs)
    tenny train-watch --follow         # print a status line every --interval seconds, no app
    tenny train-watch --once --gpu     # ... plus one line per GPU (NVML)

Textual is imported only when the app opens: the `tenny` command imports this
module at startup.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import clean


def add_arguments(parser) -> None:
    parser.add_argument("--dir", default=str(paths.DVCLIVE_DIR), help="dvclive folder to follow (default: dvclive)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between reads (default 1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="print one status line and exit")
    mode.add_argument("--follow", action="store_true", help="print a status line per interval until the run ends")
    parser.add_argument("--gpu", action="store_true", help="with --once/--follow: add a line per GPU (NVML)")


def run(params, args) -> int:
    from pipeline.engines.train_progress import Nvml, ProgressReader, gpu_line, summary_line

    if args.interval <= 0:
        raise UserError("--interval must be a positive number of seconds")
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a dvclive folder: pass the folder with --dir")
    if args.once or args.follow:
        reader = ProgressReader(directory)
        nvml = Nvml() if args.gpu else None
        last = None
        while True:
            p = reader.poll()
            # run.json's error, device and checkpoint fields are whatever the run wrote: made safe.
            line = clean(summary_line(p))
            if nvml is not None:
                line += "\n" + clean(gpu_line(*nvml.read()), multiline=True)
            if line != last:
                print(line, flush=True)
                last = line
            if args.once or p.status in ("finished", "failed"):
                return 1 if p.status == "failed" else 0
            time.sleep(args.interval)

    from tui.app import TrainWatchApp

    TrainWatchApp(directory, interval=args.interval).run()
    return 0
