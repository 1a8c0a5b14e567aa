"""Peak memory and time of the build stage over a long review log (default 1M decisions).

    .venv/bin/python bench/bench_build.py                       # 1,000,000 samples and decisions, 3 runs
    .venv/bin/python bench/bench_build.py --n 100000 --runs 1
    .venv/bin/python bench/bench_build.py --mix edits           # every decision an edit: the most memory
    .venv/bin/python bench/bench_build.py --mix uniform         # random actions on random samples
    git show REV:pipeline/core/decisions.py > /tmp/old.py
    .venv/bin/python bench/bench_build.py --old /tmp/old.py     # the same steps with another decisions.py

Makes, in a temp folder, a project with N text samples in
data/deduped/samples.jsonl, the tiny base (no tokenizer: build counts
approximate tokens, so the figures are the stage's own work) and a review log
of N decisions on them, in the lines `tenny review` writes (--mix review:
mostly accepts and rejects, and one sample in 25 each edited, tagged then
accepted, and rejected then undone). Each step runs in its own child process,
so its peak RSS (ru_maxrss) is that step's alone:

- floor: the interpreter with the build stage imported, nothing read;
- rows: the baseline, the log read with json.loads and folded keeping whole
  rows and a ReviewState per id (the strict reader before the compact fold);
- load_states: the fold the build stage uses (also timed alone), then every
  sample's state looked up while the samples file is read;
- build: the whole stage, ``build.run(params)``;
- with --old FILE: load_states and build again with FILE as pipeline.core.decisions
  (only that module swapped; the build stage is this tree's).

Prints, per step, the median wall time over --runs and the largest peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

WORDS = ["the", "a", "cynical", "airport", "gym", "fridge", "coffee", "queue", "wifi", "meeting", "email", "phone",
         "train", "delay", "printer", "monday", "inbox", "password", "update", "reboot", "calendar", "lanyard"]
AT = "2026-01-01T00:00:00+0000"
PARAMS = ["train.base_model=tiny"]


def generate(project: Path, n: int, mix: str) -> int:
    """The samples, the tiny base and the log; returns the number of decisions written."""
    from pipeline.core import paths
    from pipeline.core.params import load_params
    from pipeline.core.records import dumps, make_record
    from pipeline.stages import base

    rng = random.Random(0)
    samples, log = project / paths.DEDUPED, project / paths.DECISIONS
    samples.parent.mkdir(parents=True)
    log.parent.mkdir(parents=True)
    ids, texts = [], []
    with open(samples, "w", encoding="utf-8") as out:
        for i in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + f" #{i}"
            rec = make_record(text=text, meta={"topic": WORDS[3 + i % 9], "source": "bench"})
            out.write(dumps(rec) + "\n")
            ids.append(rec["id"])
            texts.append(text)
    rows: list[dict] = []
    for i, (rid, text) in enumerate(zip(ids, texts)):
        if len(rows) >= n:
            break  # samples past the end of the log stay pending
        if mix == "uniform":
            rid, action = rng.choice(ids), rng.choice(["accept", "reject", "edit", "tag", "undo"])
        elif mix == "edits":
            action = "edit"
        else:
            action = {0: "edit", 1: "tag", 2: "undo"}.get(i % 25, "accept" if i % 5 else "reject")
        edit = {"id": rid, "action": "edit", "text": f"An edited take, number {i}: " + text[:80]}
        if action == "edit":
            rows.append(edit)
        elif action == "tag":  # a tag, then the decision
            rows += [{"id": rid, "action": "tag", "tags": ["keeper", WORDS[i % 7]]}, {"id": rid, "action": "accept"}]
        elif action == "undo":  # a reject taken back (uniform: the latest decision on a random sample)
            rows += [{"id": rid, "action": "undo"}] if mix == "uniform" else [
                {"id": rid, "action": "reject"}, {"id": rid, "action": "undo"}]
        else:
            rows.append({"id": rid, "action": action})
    with open(log, "w", encoding="utf-8") as dec:
        dec.writelines(json.dumps({**row, "at": AT, "by": "bench"}, separators=(",", ":")) + "\n" for row in rows)
    os.chdir(project)
    base.run(load_params("params.yaml", PARAMS))
    return len(rows)


def fold_rows(path: Path) -> dict:
    """The baseline: every row parsed and kept per id, replayed into a ReviewState each."""
    from pipeline.core.decisions import ReviewState, read_decisions

    histories: dict[str, list[dict]] = {}
    for d in read_decisions(path):
        h = histories.setdefault(d["id"], [])
        if d["action"] != "undo":
            h.append(d)
        elif h:
            h.pop()
    states = {}
    for rid, h in histories.items():
        state = states[rid] = ReviewState()
        for d in h:
            if d["action"] in ("accept", "reject"):
                state.status = d["action"] + "ed"
            elif d["action"] == "edit":
                state.text, state.status = d["text"], "accepted"
            else:
                state.tags = list(dict.fromkeys(d["tags"]))
    return states


def use_module(file: str) -> None:
    """Make ``file`` the pipeline.core.decisions that build imports."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pipeline.core.decisions", file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["pipeline.core.decisions"] = module
    spec.loader.exec_module(module)


def child(step: str, project: Path, old: str | None) -> dict:
    if old:
        use_module(old)
    from pipeline.core import paths
    from pipeline.core.params import load_params
    from pipeline.core.records import iter_jsonl
    from pipeline.stages import build

    os.chdir(project)
    t = time.perf_counter()
    out: dict = {}
    if step == "rows":
        out["ids"] = len(fold_rows(paths.DECISIONS))
    elif step == "load_states":
        states = build.load_states(paths.DECISIONS)
        out["fold_s"] = time.perf_counter() - t
        decided = 0
        for _, rec in iter_jsonl(paths.DEDUPED):
            state = states.get(rec["id"])
            decided += state is not None and state.status != "pending"
        out["ids"], out["decided"] = len(states), decided
    elif step == "build":
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # stdout carries the figures
            build.run(load_params("params.yaml", PARAMS))
        report = json.loads(Path(paths.DATASET_REPORT).read_text())
        out["review"] = report["review"]
    out["s"] = time.perf_counter() - t
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def run_child(step: str, project: Path, old: str | None = None, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--child", step, "--project", str(project), *(["--old", old] if old else []), *extra]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="samples, and decisions in the log (default 1,000,000)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mix", choices=["review", "edits", "uniform"], default="review",
                    help="review: as a reviewer works (default); edits: every decision an edit (~100 characters); "
                         "uniform: random actions on random samples, undos of old decisions included")
    ap.add_argument("--old", metavar="FILE", help="also run load_states and build with this decisions.py")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "generate":
        print(json.dumps({"decisions": generate(Path(args.project), args.n, args.mix)}))
        return 0
    if args.child:
        print(json.dumps(child(args.child, Path(args.project), args.old)))
        return 0

    with tempfile.TemporaryDirectory(prefix="tenny-bench-build-") as tmp:
        project = Path(tmp)
        t = time.perf_counter()
        made = run_child("generate", project, extra=["--n", str(args.n), "--mix", args.mix])
        log = project / "data/reviews/decisions.jsonl"
        print(f"generated {args.n:,} samples and {made['decisions']:,} decisions, mix {args.mix} "
              f"({log.stat().st_size / 1e6:.0f} MB log) in {time.perf_counter() - t:.1f} s")
        steps = [("floor", None), ("rows", None), ("load_states", None), ("build", None)]
        if args.old:
            steps += [("load_states", args.old), ("build", args.old)]
        results: dict[tuple, list[dict]] = {}
        for _ in range(args.runs):
            for step, old in steps:
                results.setdefault((step, old), []).append(run_child(step, project, old))
    print(f"{'step':<32} {'median s':>9} {'peak RSS MB':>12}")
    for (step, old), outs in results.items():
        name = f"{step} ({Path(old).name})" if old else step
        print(f"{name:<32} {statistics.median(o['s'] for o in outs):>9.2f} {max(o['rss_mb'] for o in outs):>12.0f}")
    for (step, old), outs in results.items():
        if step == "build":
            print(f"build review counts{f' ({Path(old).name})' if old else ''}: {outs[0]['review']}")
        if step == "load_states":
            print(f"load_states{f' ({Path(old).name})' if old else ''}: the fold alone median "
                  f"{statistics.median(o['fold_s'] for o in outs):.2f} s; {outs[0]['ids']:,} ids, "
                  f"{outs[0]['decided']:,} samples decided")
    return 0


if __name__ == "__main__":
    sys.exit(main())
