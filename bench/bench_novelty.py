"""What watching for saturation costs a synthesis run: the novelty check per arriving sample.

    .venv/bin/python bench/bench_novelty.py                  # 20,000 realistic samples, 3 runs
    .venv/bin/python bench/bench_novelty.py --n 50000 --kind hostile --runs 1

``synthesize.stop_when_novelty_below`` asks, for every sample as it arrives,
whether dedupe would keep it (``dedupe_index.Incremental``). The baseline, in
the same process and on the same samples, is the obvious loop: rapidfuzz
``process.extractOne`` over every kept sample with the same cutoff. Both must
give the same verdicts (checked). Prints, per method, the median wall time
over --runs, the time per sample at the end of the run (the last 1,000, when
the kept set is largest: what a long paid run pays per answer), and the kept
count.
"""

from __future__ import annotations

import argparse
import statistics
import time

from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

from bench.corpus import make_corpus
from pipeline.engines.dedupe_index import Incremental

TAIL = 1000


def naive(texts: list[str], threshold: float) -> tuple[list[bool], float]:
    kept: list[str] = []
    verdicts: list[bool] = []
    tail_start = 0.0
    for i, text in enumerate(texts):
        if i == len(texts) - TAIL:
            tail_start = time.perf_counter()
        hit = process.extractOne(text, kept, scorer=fuzz.ratio, processor=None, score_cutoff=threshold) if kept else None
        verdicts.append(hit is None)
        if hit is None:
            kept.append(text)
    return verdicts, time.perf_counter() - tail_start


def incremental(texts: list[str], threshold: float) -> tuple[list[bool], float]:
    index = Incremental(threshold)
    verdicts: list[bool] = []
    tail_start = 0.0
    for i, text in enumerate(texts):
        if i == len(texts) - TAIL:
            tail_start = time.perf_counter()
        verdicts.append(index.add(text))
    return verdicts, time.perf_counter() - tail_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--kind", choices=["realistic", "hostile"], default="realistic")
    parser.add_argument("--threshold", type=float, default=90.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    texts = [default_process(t) for t in make_corpus(args.n, args.kind, seed=0)]
    print(f"{args.n:,} {args.kind} samples, threshold {args.threshold:g}, median of {args.runs} runs")
    results = {}
    for name, method in (("baseline extractOne", naive), ("Incremental", incremental)):
        walls, tails = [], []
        for _ in range(args.runs):
            start = time.perf_counter()
            verdicts, tail = method(texts, args.threshold)
            walls.append(time.perf_counter() - start)
            tails.append(tail)
        results[name] = verdicts
        print(f"  {name:<20} {statistics.median(walls):7.2f} s  "
              f"{statistics.median(tails) / TAIL * 1000:6.3f} ms/sample over the last {TAIL:,}  "
              f"kept {sum(verdicts):,}")
    base, new = results.values()
    assert base == new, "the two methods disagree"
    print("  same verdicts: yes")


if __name__ == "__main__":
    main()
