"""Benchmark: tenny's exact dedupe against brute force (rapidfuzz.process.cdist), same run.

    .venv/bin/python -m bench.bench_dedupe --sizes 20000 100000 1000000 --corpora realistic hostile

Each (corpus, size) runs in its own process so that peak memory (ru_maxrss) is
that configuration's alone. Brute force scores every pair with
``process.cdist(..., workers=-1)`` in row chunks and then applies the contract
in order; it runs for sizes up to ``--brute-max`` and its verdicts are compared
with the engine's, sample by sample (matched sample and score included).
Times are medians: brute force runs ``--repeats`` times and, where it runs, the
engine runs three times per brute-force run, interleaved with them, after one
untimed warm-up (the machine's speed drifts by minutes; a median of a few
one-second runs would hang on whichever minute they fell in). Without brute
force the engine runs ``--repeats`` times. The CPU may be shared, so compare
figures from one run only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def brute_force(texts: list[str], threshold: float, chunk: int = 1000):
    """The contract by scoring every pair with cdist (both cores), then walking in order."""
    from rapidfuzz import fuzz, process

    n = len(texts)
    matched = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n)
    cutoff = max(0.0, threshold - 1e-3)
    for start in range(0, n, chunk):
        rows = texts[start:start + chunk]
        m = process.cdist(rows, texts[: start + len(rows)], scorer=fuzz.ratio, processor=None,
                          score_cutoff=cutoff, dtype=np.float64, workers=-1)
        for r in range(len(rows)):  # rows come in input order: every earlier verdict is final
            i = start + r
            cols = np.flatnonzero(m[r, :i] >= threshold)
            cols = cols[matched[cols] < 0]
            if len(cols):
                sc = m[r, cols]
                best = int(np.argmax(sc))  # first maximum: the earliest on a tie
                matched[i], score[i] = cols[best], sc[best]
    return matched, score


def score_shares(texts: list[str], sample: int = 2000, seed: int = 0) -> dict:
    """Share of pairs by score band, on a random sample of the corpus."""
    from rapidfuzz import fuzz, process

    rng = np.random.default_rng(seed)
    pick = [texts[i] for i in rng.choice(len(texts), size=min(sample, len(texts)), replace=False)]
    m = process.cdist(pick, pick, scorer=fuzz.ratio, processor=None, dtype=np.float32, workers=-1)
    s = m[np.triu_indices(len(pick), 1)]
    return {"70-89": float(((s >= 70) & (s < 90)).mean()), ">=90": float((s >= 90).mean())}


ENGINE_RUNS = 3  # engine runs per brute-force run


class _OutOfTime(Exception):
    pass


def one(kind: str, n: int, threshold: float, repeats: int, brute_max: int, seed: int, limit: float) -> dict:
    from rapidfuzz.utils import default_process

    from bench.corpus import make_corpus
    from pipeline.engines.dedupe_index import dedupe_processed

    raw = make_corpus(n, kind, seed)
    out: dict = {"corpus": kind, "n": n, "mean_chars": round(sum(map(len, raw)) / n, 1)}
    brute = n <= brute_max
    # With brute force, the engine runs ENGINE_RUNS times per brute-force run, the two
    # interleaved, after one untimed warm-up: the machine's speed drifts, and a median
    # of a few one-second runs would otherwise hang on whatever minute they fell in.
    runs = repeats * ENGINE_RUNS if brute else repeats
    times, brute_times = [], []
    for r in range(runs + brute):
        t0 = time.perf_counter()
        last = [t0]

        def progress(done: int, pairs: int) -> None:
            now = time.perf_counter()
            if now - last[0] > 10:
                last[0] = now
                print(f"  {kind} {n:,}: {done:,} samples, {pairs:,} pairs verified, {now - t0:.0f} s", file=sys.stderr, flush=True)
            if limit and now - t0 > limit and done < n:
                out.update(partial_samples=done, partial_seconds=now - t0)
                raise _OutOfTime

        texts = [default_process(t) for t in raw]
        try:
            v = dedupe_processed(texts, threshold, progress=progress)
        except _OutOfTime:
            out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return out
        if brute and r == 0:
            continue  # the warm-up
        times.append(time.perf_counter() - t0)
        if brute and len(times) % ENGINE_RUNS == 0:
            t0 = time.perf_counter()
            texts = [default_process(t) for t in raw]
            bm, bs = brute_force(texts, threshold)
            brute_times.append(time.perf_counter() - t0)
    out.update(seconds=statistics.median(times), runs=len(times), kept=int((v.matched < 0).sum()), exact=int(v.exact.sum()),
               near=int(((v.matched >= 0) & ~v.exact).sum()), pairs_bounded=v.pairs_bounded,
               pairs_scored=v.pairs_verified, leaders=v.leaders, all_pairs=n * (n - 1) // 2)
    if brute:
        out.update(brute_seconds=statistics.median(brute_times), brute_runs=len(brute_times),
                   identical=bool((bm == v.matched).all() and (bs == v.score).all()))
        out["speedup"] = out["brute_seconds"] / out["seconds"]
    if n <= 200_000:
        out["score_share"] = score_shares(texts)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    ap.add_argument("--corpora", nargs="+", default=["realistic", "hostile"], choices=["realistic", "hostile"])
    ap.add_argument("--threshold", type=float, default=90.0)
    ap.add_argument("--repeats", type=int, default=1, help="runs per figure; the median is printed")
    ap.add_argument("--brute-max", type=int, default=20_000, help="largest size also run by brute force")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=0, help="stop a run after this many seconds and print how far it got")
    ap.add_argument("--one", nargs=2, metavar=("CORPUS", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.threshold, args.repeats, args.brute_max, args.seed,
                             args.time_limit)))
        return 0
    print(f"threshold {args.threshold}, repeats {args.repeats} (medians), brute force up to {args.brute_max}", flush=True)
    for kind in args.corpora:
        for n in args.sizes:
            cmd = [sys.executable, "-m", "bench.bench_dedupe", "--one", kind, str(n), "--threshold", str(args.threshold),
                   "--repeats", str(args.repeats), "--brute-max", str(args.brute_max), "--seed", str(args.seed),
                   "--time-limit", str(args.time_limit)]
            r = json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)
            if "partial_samples" in r:
                print(f"{kind:9} n={n:>9,}  stopped at --time-limit: {r['partial_samples']:,} samples in"
                      f" {r['partial_seconds']:.0f} s  peak {r['peak_rss_mib']:,.0f} MiB", flush=True)
                continue
            line = (f"{kind:9} n={n:>9,}  {r['seconds']:8.2f} s (median of {r['runs']})  kept {r['kept']:,}  dropped exact {r['exact']:,}"
                    f" near {r['near']:,}  leaders {r['leaders']}  pairs bounded {r['pairs_bounded']:,} verified exactly {r['pairs_scored']:,}"
                    f" (of {r['all_pairs']:,})  peak {r['peak_rss_mib']:,.0f} MiB  ~{r['mean_chars']} chars")
            if "brute_seconds" in r:
                line += (f"\n{'':9}   brute force cdist {r['brute_seconds']:.2f} s (median of {r['brute_runs']}, interleaved)"
                         f" → {r['speedup']:.1f}x faster,"
                         f" identical output: {r['identical']}")
            if "score_share" in r:
                sh = r["score_share"]
                line += f"\n{'':9}   pairs scoring 70-89: {sh['70-89']:.3%}, >=90: {sh['>=90']:.3%} (2,000-sample estimate)"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
