"""``tenny train-watch``: the training monitor as an app of its own (e.g. over SSH on the GPU box).

Flags, checks and the printing modes (``--once``, ``--follow``): pipeline/commands/train_watch.py.
"""

from __future__ import annotations

from typing import Any

from pipeline.commands import train_watch as printing
from pipeline.commands.train_watch import add_arguments

__all__ = ["add_arguments", "run"]


def run(params: Any, args: Any) -> int:
    if args.once or args.follow or args.samples:
        return printing.run(params, args)
    directory = printing.check(args)

    from tui.app import TrainWatchApp

    TrainWatchApp(directory, interval=args.interval).run()
    return 0
