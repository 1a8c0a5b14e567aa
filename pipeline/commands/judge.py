"""`tenny judge REV_A REV_B`: did the new data help? A judge compares the adapters of two versions.

Reads ``reports/generations.jsonl`` as stored at two revisions (a commit,
branch, tag, experiment name, or ``workspace``), matches the prompts by text
and has the judge compare REV_A's adapter answers (the baseline) with REV_B's
(the challenger), every pair in both orders. No model is loaded: the answers
are the ones the eval stage wrote. The judge is ``eval.judge`` from the
params in force (params.yaml and --set), not those stored at either revision.

Writes judge.json and judgments.jsonl (the eval stage's formats, docs/judge.md)
into ``--out`` (default .tenny/judge/<A>_vs_<B>/) and prints a summary, or,
with ``--json``, judge.json on stdout.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import json_safe


def add_arguments(parser) -> None:
    parser.add_argument("rev_a", metavar="REV_A", help="baseline: commit, branch, tag, experiment name, or 'workspace'")
    parser.add_argument("rev_b", metavar="REV_B", help="challenger (same forms)")
    parser.add_argument("--out", metavar="DIR", help="where judge.json and judgments.jsonl go (default .tenny/judge/<A>_vs_<B>/)")
    parser.add_argument("--json", action="store_true", help="print judge.json to stdout instead of the summary")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: the current folder)")


def safe_name(rev: str) -> str:
    """A revision as a folder name: HEAD~1 → HEAD-1, feature/x → feature-x."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", rev).strip(".-")[:60] or "rev"


def adapter_answers(root: Path, rev: str) -> dict[str, str]:
    """prompt → the adapter's answer in ``reports/generations.jsonl`` at ``rev`` (first one if a prompt repeats)."""
    from pipeline.core.records import iter_jsonl
    from pipeline.engines.dvc import revisions

    path = paths.GENERATIONS.as_posix()
    label = f"{path}@{rev}"
    answers: dict[str, str] = {}
    try:
        with revisions.open_at(root, path, rev) as fh:
            for lineno, row in iter_jsonl(label, fh=fh):
                for name in ("prompt", "adapter"):
                    if not isinstance(row.get(name), str):
                        raise UserError(f"{label}:{lineno}: field {name!r} missing or not text "
                                        f"(a generations file has prompt, base and adapter)")
                answers.setdefault(row["prompt"], row["adapter"])
    except UserError as err:
        if "not in the repository" in str(err):
            raise UserError(f"revision {rev!r} has no {path}: run the eval stage there (`dvc repro eval`, or "
                            f"`dvc exp run`) and commit its outputs, or pick a revision that has them") from None
        raise
    if not answers:
        raise UserError(f"{label}: no generations (the file is empty); run the eval stage there")
    return answers


def run(params, args) -> int:
    from pipeline.engines.dvc import cli as dvc_cli, revisions
    from pipeline.engines.judging.runner import Answers, judge_answers, prepare, summary, write_reports

    judge = prepare(params.eval.judge)  # not configured → exit 2 before any revision is read
    root = dvc_cli.find_root(Path(args.repo))
    for rev in (args.rev_a, args.rev_b):
        revisions.check_rev(root, rev)
    a, b = adapter_answers(root, args.rev_a), adapter_answers(root, args.rev_b)
    items = [Answers(p, a[p], b[p]) for p in a if p in b]
    if not items:
        raise UserError(f"{paths.GENERATIONS.as_posix()}: no prompt is the same at {args.rev_a!r} and {args.rev_b!r}; "
                        f"the judge compares answers to the same prompts (eval.prompts, eval.sample_val)")
    baseline, challenger = args.rev_a, args.rev_b
    if baseline == challenger:  # a revision against itself is a fair check of the judge (expect 0.5)
        baseline, challenger = f"{baseline} (baseline)", f"{challenger} (challenger)"
    report, rows = judge_answers(judge, items, baseline=baseline, challenger=challenger)
    out = Path(args.out) if args.out else root / paths.STATE_DIR / "judge" / f"{safe_name(args.rev_a)}_vs_{safe_name(args.rev_b)}"
    write_reports(report, rows, out / "judge.json", out / "judgments.jsonl")
    if args.json:
        sys.stdout.write(json_safe(json.dumps(report, ensure_ascii=False, indent=2)) + "\n")
    else:
        sys.stdout.write(f"{summary(report)}\n  → {out / 'judge.json'}, {out / 'judgments.jsonl'}\n")
    sys.stdout.flush()
    return 0
