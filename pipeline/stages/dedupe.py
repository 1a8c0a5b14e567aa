"""Stage dedupe: drop near-duplicates, exactly as shared/DESIGN.md defines them.

Score = ``fuzz.ratio(default_process(a), default_process(b))``. Walking the
input in order, a sample is dropped iff its score against some earlier *kept*
sample is >= threshold; it is reported against the best such sample (highest
score, the earliest on a tie). Records whose body is not ``text`` are compared
on ``records.render_text`` (prompt, newline, completion; or ``role: content``
lines). ``dedupe.against`` files go first and are never dropped.

reports/novelty.csv (a DVC plot) is the share kept per block of 100 input
samples, in input order: when it falls towards 0, the generator mostly repeats
itself and more synthesis buys little.

The engine (pipeline/engines/dedupe_index.py) gives the brute-force result without
comparing every pair; docs/dedupe.md explains how and what it costs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rapidfuzz.utils import default_process

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.params import Params
from pipeline.core.records import (
    atomic_writer,
    dumps,
    read_records,
    render_text,
    write_json,
    write_jsonl,
    write_lines,
)
from pipeline.engines.dedupe_index import Verdicts, dedupe_processed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help=f"records file (default: {paths.RAW})")
    parser.add_argument("-o", "--output", help=f"kept records (default: {paths.DEDUPED})")
    parser.add_argument("--threshold", type=float, help="override dedupe.threshold (0-100)")
    parser.add_argument("--report", help=f"metrics JSON (default: {paths.DEDUPE_REPORT}); the dropped "
                                         f"samples go beside it as <name>_dropped.jsonl, and {paths.NOVELTY.name}")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def check_threshold(threshold: float) -> float:
    if not 0 <= threshold <= 100:  # also false for NaN
        raise UserError(f"threshold {threshold}: must be a fuzz.ratio score between 0 and 100 "
                        "(e.g. --threshold 90 or dedupe.threshold: 90 in params.yaml)")
    return float(threshold)


class _Progress:
    """samples processed and candidate pairs verified, on stderr (tqdm)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="sample", desc="dedupe", file=sys.stderr, mininterval=0.5,
                            dynamic_ncols=True)

    def __call__(self, done: int, pairs: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"{pairs:,} pairs verified", refresh=False)
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


NOVELTY_BLOCK = 100


def novelty_rows(kept: Sequence[bool], block: int = NOVELTY_BLOCK) -> list[tuple[int, float]]:
    """(samples read so far, share of the last block kept), one row per block of input.

    The last block may be short; its share is over the samples it holds.
    """
    rows = []
    for start in range(0, len(kept), block):
        chunk = kept[start:start + block]
        rows.append((start + len(chunk), round(sum(chunk) / len(chunk), 4)))
    return rows


def write_novelty(path: Path, kept: Sequence[bool]) -> None:
    with atomic_writer(path) as fh:
        fh.write("samples,kept_share\n")
        fh.writelines(f"{n},{share}\n" for n, share in novelty_rows(kept))


def _engine(params: Params):
    """(run_jobs, close) for dedupe.engine; None means the local thread pool."""
    if params.dedupe.engine == "dask":
        from pipeline.engines.dedupe_dask import (
            dask_runner,  # imported here: the CLI must start without dask
        )

        return dask_runner(params.dedupe.scheduler, params.dedupe.workers)
    return None, (lambda: None)


def run(params: Params, args: Any = None) -> int:
    threshold = getattr(args, "threshold", None)
    threshold = check_threshold(params.dedupe.threshold if threshold is None else threshold)
    src = Path(getattr(args, "input", None) or paths.RAW)
    dst = Path(getattr(args, "output", None) or paths.DEDUPED)
    report_path = Path(getattr(args, "report", None) or paths.DEDUPE_REPORT)
    dropped_path = report_path.with_name(report_path.stem + "_dropped.jsonl")
    for other in [*params.dedupe.against, src]:
        if not Path(other).exists():
            hint = "run `tenny synthesize` first, or pass INPUT" if Path(other) == src else "fix dedupe.against in params.yaml"
            raise UserError(f"{other}: no such records file ({hint})")

    # One pass over the files: the engine needs every processed text; the
    # records themselves wait as compact JSON lines (a fraction of the dicts'
    # size) until the kept ones are written.
    lines: list[str] = []
    processed: list[str] = []

    def load(path) -> None:
        for rec in read_records(path):
            lines.append(dumps(rec))
            processed.append(default_process(render_text(rec)))

    for other in params.dedupe.against:
        load(other)
    n_fixed = len(lines)
    load(src)
    n_new = len(lines) - n_fixed
    if n_new == 0:
        print(f"dedupe: {src} holds no records; writing an empty {dst}", file=sys.stderr)

    started = time.perf_counter()
    progress = _Progress(n_new, enabled=not getattr(args, "no_progress", False))
    run_jobs, close = _engine(params)
    try:
        verdicts: Verdicts = dedupe_processed(processed, threshold, n_fixed, run_jobs=run_jobs,
                                              workers=params.dedupe.workers,
                                              progress=lambda done, pairs: progress(max(0, done - n_fixed), pairs))
    finally:
        close()
        progress.close()
    processed.clear()  # the texts are not needed for writing
    seconds = time.perf_counter() - started

    matched, score, exact = verdicts.matched.tolist(), verdicts.score.tolist(), verdicts.exact.tolist()
    dropped_idx = [i for i in range(n_fixed, len(lines)) if matched[i] >= 0]
    shown: dict[int, tuple[str, str]] = {}  # kept sample -> (id, text); a few are matched over and over

    def view(i: int) -> tuple[str, str]:
        rec = json.loads(lines[i])
        return rec["id"], render_text(rec)

    def dropped_rows():
        for i in dropped_idx:
            (rid, text), j = view(i), matched[i]
            if j not in shown:
                shown[j] = view(j)
            yield {"id": rid, "matched_id": shown[j][0], "score": round(score[i], 2),
                   "exact": exact[i], "text": text, "matched_text": shown[j][1]}

    n_exact = sum(exact[n_fixed:])
    # the kept lines are records read (and validated) above, already in their written form
    kept = write_lines(dst, (lines[i] for i in range(n_fixed, len(lines)) if matched[i] < 0))
    write_jsonl(dropped_path, dropped_rows())
    write_novelty(report_path.with_name(paths.NOVELTY.name), [m < 0 for m in matched[n_fixed:]])
    write_json(report_path, {
        "threshold": threshold,
        "input": n_new,
        "against": n_fixed,
        "exact_duplicates": n_exact,
        "near_duplicates": len(dropped_idx) - n_exact,
        "dropped": len(dropped_idx),
        "kept": kept,
        "pairs_verified": verdicts.pairs_verified,
        "engine": params.dedupe.engine,
    })
    print(f"dedupe: {n_new} in, {kept} kept, {len(dropped_idx)} dropped ({n_exact} exact) in {seconds:.1f}s → {dst}")
    return 0
