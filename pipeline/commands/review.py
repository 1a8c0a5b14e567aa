"""``tenny review [RECORDS] [--decisions FILE]``: the review queue in the terminal.

This module holds the command's flags and the checks that run before the
screen opens; the screen itself is opened by ``tui/commands/review.py`` (the
CLI's table points there), so ``pipeline/`` never imports the app above it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.decisions import default_reviewer, reviewer_log
from pipeline.core.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("records", nargs="?", help=f"records file to review (default: {paths.DEDUPED})")
    parser.add_argument("--as", dest="as_name", metavar="NAME",
                        help=f"who is reviewing: decisions go to {paths.REVIEWS_DIR}/NAME.jsonl "
                             "(default: $TENNY_REVIEWER, git's user.name, then $USER)")
    parser.add_argument("--decisions", help=f"the review log to append to (default: {paths.REVIEWS_DIR}/NAME.jsonl; "
                                            "the other logs in its folder are the team's)")
    parser.add_argument("--dropped", help=f"dedupe's dropped rows, shown as near-twins (default: {paths.DEDUPE_DROPPED})")
    parser.add_argument("--by", help="the same as --as (kept for scripts written before team review)")
    parser.add_argument("--theme", help="a Textual theme, e.g. textual-light or textual-dark")
    parser.add_argument("--prescore", action="store_true",
                        help="let the eval judge score the samples first (as review.prescore: true)")


def check(args: Any = None) -> tuple[Path, Path, str | None]:
    """(records, decisions, dropped) from the flags, or a UserError before the screen opens."""
    records = Path(getattr(args, "records", None) or paths.DEDUPED)
    name = getattr(args, "as_name", None) or getattr(args, "by", None) or default_reviewer()
    decisions = Path(getattr(args, "decisions", None) or reviewer_log(paths.REVIEWS_DIR, name))
    if args is not None:
        args.by = name  # written into each decision's "by"
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
    run_prescore(records, getattr(args, "prescore", False))
    return records, decisions, dropped


def run_prescore(records: Path, forced: bool = False) -> dict | None:
    """With review.prescore (or --prescore): the judge scores what it has not yet, here in the shell, with a bar."""
    from pipeline.core.params import load_params

    params = load_params(paths.PARAMS) if paths.PARAMS.exists() else None
    if not forced and not (params is not None and params.review.prescore):
        return None
    if params is None or not params.eval.judge.model:
        raise UserError("review.prescore needs a judge: set eval.judge.model (and its base_url / api_key_env) in "
                        "params.yaml; see docs/judge.md")
    from pipeline.engines.prescore import prescore

    counts = prescore(records, params.eval.judge)
    print(f"prescore: {counts['scored']:,} scored now, {counts['already']:,} already "
          f"(judge {counts['model']}, {counts['judge']}); {counts['unreadable']:,} unreadable, "
          f"{counts['unanswered']:,} unanswered")
    return counts
