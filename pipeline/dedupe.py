"""Stage dedupe: drop near-duplicates, exactly as shared/DESIGN.md defines them.

Score = ``fuzz.ratio(default_process(a), default_process(b))``. Walking the
input in order, a sample is dropped iff its score against some earlier *kept*
sample is >= threshold. Records whose body is not ``text`` are compared on
``records.render_text`` (prompt, newline, completion; or ``role: content``
lines).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz, process
from rapidfuzz.utils import default_process

from pipeline import paths
from pipeline.errors import UserError
from pipeline.params import Params
from pipeline.records import read_records, render_text, write_json, write_jsonl, write_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", help=f"records file (default: {paths.RAW})")
    parser.add_argument("-o", "--output", help=f"kept records (default: {paths.DEDUPED})")
    parser.add_argument("--threshold", type=float, help="override dedupe.threshold (0-100)")
    parser.add_argument("--report", help=f"metrics JSON (default: {paths.DEDUPE_REPORT})")


def dedupe_texts(texts: list[str], threshold: float, n_fixed: int = 0) -> list[tuple[int, int, float] | None]:
    """For each text: None if kept, else (index of the kept text it matched, score).

    The first ``n_fixed`` texts are always kept (``dedupe.against``).
    """
    processed = [default_process(t) for t in texts]
    kept_idx: list[int] = []
    kept_proc: list[str] = []
    out: list[Any] = []
    for i, p in enumerate(processed):
        if i >= n_fixed and kept_proc:
            hit = process.extractOne(p, kept_proc, scorer=fuzz.ratio, processor=None, score_cutoff=threshold)
            if hit is not None:
                out.append((kept_idx[hit[2]], hit[1]))
                continue
        kept_idx.append(i)
        kept_proc.append(p)
        out.append(None)
    return out


def run(params: Params, args: Any = None) -> int:
    threshold = getattr(args, "threshold", None)
    threshold = params.dedupe.threshold if threshold is None else threshold
    if not 0 <= threshold <= 100:
        raise UserError(f"--threshold {threshold}: must be between 0 and 100")
    src = Path(getattr(args, "input", None) or paths.RAW)
    dst = Path(getattr(args, "output", None) or paths.DEDUPED)
    report_path = Path(getattr(args, "report", None) or paths.DEDUPE_REPORT)
    dropped_path = report_path.with_name(report_path.stem + "_dropped.jsonl")
    if not src.exists():
        raise UserError(f"{src}: no such records file (run `tenny synthesize` first, or pass INPUT)")

    fixed: list[dict] = []
    for other in params.dedupe.against:
        fixed.extend(read_records(other))
    new = list(read_records(src))
    records = fixed + new
    verdicts = dedupe_texts([render_text(r) for r in records], threshold, n_fixed=len(fixed))

    kept, dropped, exact = [], [], 0
    for rec, verdict in zip(records[len(fixed):], verdicts[len(fixed):]):
        if verdict is None:
            kept.append(rec)
            continue
        j, score = verdict
        exact += score >= 100
        dropped.append({"id": rec["id"], "matched_id": records[j]["id"], "score": round(score, 2),
                        "text": render_text(rec), "matched_text": render_text(records[j])})
    write_records(dst, kept)
    write_jsonl(dropped_path, dropped)
    write_json(report_path, {
        "threshold": threshold,
        "input": len(new),
        "against": len(fixed),
        "exact_duplicates": exact,
        "near_duplicates": len(dropped) - exact,
        "dropped": len(dropped),
        "kept": len(kept),
    })
    print(f"dedupe: {len(new)} in, {len(kept)} kept, {len(dropped)} dropped ({exact} exact) → {dst}")
    return 0
