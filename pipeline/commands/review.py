"""``tenny review [RECORDS] [--decisions FILE]``: the review queue in the terminal.

Textual is imported inside ``run`` only: the CLI imports every command module
to build its help, and that must stay fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", nargs="?", help=f"records file to review (default: {paths.DEDUPED})")
    parser.add_argument("--decisions", help=f"the review log to append to (default: {paths.DECISIONS})")
    parser.add_argument("--dropped", help=f"dedupe's dropped rows, shown as near-twins (default: {paths.DEDUPE_DROPPED})")
    parser.add_argument("--by", help="reviewer name written with each decision (default: $TENNY_REVIEWER or your login)")
    parser.add_argument("--theme", help="a Textual theme, e.g. textual-light or textual-dark")


def run(params: Any, args: Any = None) -> int:
    records = Path(getattr(args, "records", None) or paths.DEDUPED)
    decisions = Path(getattr(args, "decisions", None) or paths.DECISIONS)
    dropped = getattr(args, "dropped", None)
    # Fail before the terminal switches to full screen: a missing file is a one-line error.
    if not records.exists():
        raise UserError(f"{records}: no such records file (run `tenny dedupe` first, or pass RECORDS)")
    if records.is_dir():
        raise UserError(f"{records}: is a folder; pass a .jsonl records file")
    if decisions.is_dir():
        raise UserError(f"{decisions}: is a folder; pass a decisions .jsonl file with --decisions")
    if not sys.stdout.isatty() and not sys.stdin.isatty():
        raise UserError("tenny review needs a terminal (run it in one, or over ssh -t)")

    from tui.review_app import ReviewApp

    app = ReviewApp(records, decisions, dropped=dropped, base_dir=paths.BASE_DIR, by=getattr(args, "by", None),
                    theme=getattr(args, "theme", None))
    app.run()
    screen = app.review
    if screen.error is not None:
        # the app showed the problem; repeat it where it stays readable after the screen closes
        raise UserError(screen.error.split("\n")[0] + " — " + " ".join(screen.error.split("\n")[2:3]))
    return 0
