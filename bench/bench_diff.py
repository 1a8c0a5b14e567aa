"""How long `tenny diff` takes on two versions of N records (default 1M).

Builds a throwaway git + DVC repository with two committed versions of
data/deduped/samples.jsonl (DVC-tracked, in the local cache) and a review log,
then times the record-level diff (median of --runs) against a baseline that
only reads both files with json.loads. The target: 1M vs 1M under 20 s.

    .venv/bin/python bench/bench_diff.py            # 1M records, 3 runs
    .venv/bin/python bench/bench_diff.py --n 100000 --runs 1

Version B differs from A by: 1% removed, 1% added, 1% meta changed, 0.5%
bodies re-spaced (same id, different body), 0.5% review edits; the printed
counts are checked against those numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.core.records import dumps, make_record  # noqa: E402

WORDS = ("coffee airports meetings inbox weekend traffic brunch gym wifi printer queue deadline "
         "neighbors weather elevator update password subscription podcast startup").split()


def sample(i: int) -> dict:
    words = " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(8 + i % 9))
    return make_record(text=f"Sample {i}: {words}, obviously.", meta={"source": "bench", "n": i, "template": f"t{i % 5}"})


def git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def dvc(repo: Path, *args: str) -> None:
    exe = Path(sys.executable).parent / "dvc"
    subprocess.run([str(exe) if exe.exists() else "dvc", *args], cwd=repo, check=True, capture_output=True)


def build(repo: Path, n: int) -> dict:
    """Two committed versions; returns the expected diff counts."""
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    data = repo / "data/deduped/samples.jsonl"
    data.parent.mkdir(parents=True)
    (repo / "data/reviews").mkdir(parents=True)
    decisions = repo / "data/reviews/decisions.jsonl"
    pct = n // 100
    half = n // 200
    with open(data, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(dumps(sample(i)) + "\n")
    decisions.write_text("")
    dvc(repo, "add", "-q", str(data.relative_to(repo)))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")

    removed = set(range(0, pct))  # first 1% gone
    meta_changed = set(range(pct, 2 * pct))
    respaced = set(range(2 * pct, 2 * pct + half))
    edited = list(range(2 * pct + half, 2 * pct + 2 * half))
    with open(data, "w", encoding="utf-8") as fh:
        for i in range(n):
            if i in removed:
                continue
            rec = sample(i)
            if i in meta_changed:
                rec["meta"]["template"] = "changed"
            if i in respaced:
                rec["text"] = rec["text"].replace(" ", "  ", 1)  # same normalized text, same id
            fh.write(dumps(rec) + "\n")
        for i in range(n, n + pct):
            fh.write(dumps(sample(i)) + "\n")
    with open(decisions, "w", encoding="utf-8") as fh:
        for i in edited:
            fh.write(json.dumps({"id": sample(i)["id"], "action": "edit", "text": f"edited {i}", "at": "t", "by": "bench"}) + "\n")
    dvc(repo, "add", "-q", str(data.relative_to(repo)))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v2")
    return {"added": pct, "removed": pct, "meta_changed": pct, "edited": 2 * half,
            "unchanged": n - 2 * pct - 2 * half}


def baseline(repo: Path) -> float:
    """Read both versions with json.loads only: the floor a record-level diff sits on."""
    from pipeline.engines.dvc.revisions import open_at

    t = time.perf_counter()
    for rev in ("HEAD~1", "HEAD"):
        with open_at(repo, "data/deduped/samples.jsonl", rev) as fh:
            for line in fh:
                json.loads(line)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", help="build the repo here and keep it (default: a temp folder, removed)")
    args = ap.parse_args()

    from pipeline.commands.diff import diff_records

    with tempfile.TemporaryDirectory(prefix="tenny-bench-diff-") as tmp:
        repo = Path(args.keep or tmp)
        repo.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        expected = build(repo, args.n)
        print(f"built 2 versions of {args.n:,} records in {time.perf_counter() - t:.1f} s "
              f"({(repo / 'data/deduped/samples.jsonl').stat().st_size / 1e6:.0f} MB each)")

        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            result = diff_records(repo, "HEAD~1", "HEAD")
            times.append(time.perf_counter() - t)
        got = {k: getattr(result, k) for k in expected}
        base = [baseline(repo) for _ in range(args.runs)]
        print(f"tenny diff HEAD~1 HEAD ({args.n:,} vs {result.b.records:,} records): "
              f"median {statistics.median(times):.2f} s over {args.runs} runs (min {min(times):.2f}, max {max(times):.2f})")
        print(f"baseline, json.loads of both files only: median {statistics.median(base):.2f} s")
        print(f"counts: {got}")
        if got != expected:
            print(f"MISMATCH: expected {expected}", file=sys.stderr)
            return 1
        print("counts match the changes made")
    return 0


if __name__ == "__main__":
    sys.exit(main())
