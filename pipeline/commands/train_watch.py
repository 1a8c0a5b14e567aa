"""`tenny train-watch`: the training monitor on its own, e.g. over SSH on the GPU box.

    tenny train-watch                  # follow ./dvclive in the terminal app
    tenny train-watch --dir runs/x     # another dvclive folder
    tenny train-watch --once           # print one status line and exit (scripts, cron, CI logs)
    tenny train-watch --follow         # print a status line every --interval seconds, no app
    tenny train-watch --once --gpu     # ... plus one line per GPU (NVML)

This module holds the flags and the printing modes (--once, --follow); the
app is opened by ``tui/commands/train_watch.py`` (the CLI's table points
there), so ``pipeline/`` never imports the app above it.
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
    parser.add_argument("--samples", action="store_true",
                        help="print the answers the run gave while training (dvclive/samples.jsonl), no app; "
                             "with --follow, new ones as they come")


def check(args) -> Path:
    """The dvclive folder to follow, or a UserError before anything opens."""
    if args.interval <= 0:
        raise UserError("--interval must be a positive number of seconds")
    directory = Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"{directory} is a file, not a dvclive folder: pass the folder with --dir")
    return directory


def run(params, args) -> int:
    """Status lines, no app: one with --once, else one per --interval until the run ends."""
    from pipeline.engines.train_progress import Nvml, ProgressReader, gpu_line, summary_line

    directory = check(args)
    reader = ProgressReader(directory)
    if args.samples:
        return print_samples(reader, args)
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


def print_samples(reader, args) -> int:
    """The answers given while training, grouped by step; with --follow, new ones until the run ends."""
    from pipeline.engines.train_progress import sample_lines

    shown = 0
    while True:
        p = reader.poll()
        new = p.samples[shown:]
        if new:
            # Model text: made safe before it reaches the terminal.
            print("\n".join(clean(line) for line in sample_lines(new)), flush=True)
            shown = len(p.samples)
        if not args.follow or p.status in ("finished", "failed"):
            if not p.samples:
                print(f"{reader.dir}: no answers yet (the run writes them every train.sample_every steps)", flush=True)
            return 1 if p.status == "failed" else 0
        time.sleep(args.interval)
