"""Stage build: review decisions applied, split, formatted and checked.

Reads data/deduped/samples.jsonl and the review log; writes
data/final/{train,val}.jsonl, reports/dataset.json (counts, token figures,
warnings) and reports/token_lengths.csv (the histogram DVC plots).

- ``build.include``: how the reviewers' logs (data/reviews/<name>.jsonl, one per
  reviewer) choose what is kept: ``not_rejected``, ``accepted``, ``majority``,
  ``unanimous``, ``adjudicated`` (``pipeline.core.team.Settled``; docs/review.md).
  The report counts the records each rule took; reviewer agreement goes to
  reports/review.json (a DVC metric).
- An edit replaces the sample's editable part (text; a completion; the last
  assistant turn) and keeps the id; tags and the review status go into meta.
- The split is by a hash of (seed, id): a sample stays on its side of the
  split across versions, whatever else is added or removed.
- ``build.format: chat`` turns every record into OpenAI chat fine-tuning shape
  (system + user + assistant); text records get their user turn from
  ``build.user_template`` filled from meta. ``text`` keeps text and
  prompt/completion records as they are.
- Token counts are the tokens train feeds the model (modeling.encode_example,
  turn end included); ``over_max_seq_len`` warns at ``train.max_seq_len``,
  past which train leaves a sample out rather than cut its turn end. A chat
  template with no turn end fails here (engines/turn_end.py, ``build.stop_token``).
"""

from __future__ import annotations

import hashlib
import statistics
from array import array
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core import paths
from pipeline.core.decisions import ReviewState, load_states  # noqa: F401 (bench/bench_build.py times it via build)
from pipeline.core.errors import UserError
from pipeline.core.params import BuildParams, Params
from pipeline.core.records import atomic_writer, body_kind, dumps, read_records, with_editable_text, write_json
from pipeline.core.team import Settled, Team, id_key
from pipeline.engines.prescore_file import PRESCORE, Scores, read_scores

MAX_EXAMPLE_IDS = 5


def split_of(record_id: str, seed: int, val_fraction: float) -> str:
    h = hashlib.blake2b(f"{seed}:{record_id}".encode(), digest_size=8).digest()
    return "val" if int.from_bytes(h, "big") / 2**64 < val_fraction else "train"


def apply_review(record: dict, state: ReviewState | None) -> dict:
    """The record as the reviewer left it: edited part replaced, tags in meta; id unchanged."""
    if state is None:
        return record
    out = with_editable_text(record, state.text) if state.edited else dict(record)
    meta = dict(out.get("meta") or {})
    meta["review"] = state.status
    if state.tags:
        meta["tags"] = state.tags
    if state.edited:
        meta["edited"] = True
    out["meta"] = meta
    return out


class _Topic(dict):
    """Template fields from meta; an unknown field renders as the default topic."""

    def __init__(self, meta: dict, default: str):
        super().__init__({k: v for k, v in meta.items() if isinstance(v, (str, int, float))})
        slots = meta.get("slots")
        if isinstance(slots, dict):
            self.update({k: v for k, v in slots.items() if isinstance(v, (str, int, float))})
        self.default = default

    def __missing__(self, key: str) -> str:
        return self.default


def to_format(record: dict, bp: BuildParams) -> dict:
    """The record in the training format; id and meta kept."""
    kind = body_kind(record)
    if bp.format == "text" or kind == "chat" and any(m["role"] == "system" for m in record["messages"]):
        return record
    system = [{"role": "system", "content": bp.system_prompt}] if bp.system_prompt else []
    if kind == "chat":
        messages = system + record["messages"]
    elif kind == "pair":
        messages = system + [{"role": "user", "content": record["prompt"]},
                             {"role": "assistant", "content": record["completion"]}]
    else:
        user = bp.user_template.format_map(_Topic(record.get("meta") or {}, bp.default_topic))
        messages = system + [{"role": "user", "content": user}, {"role": "assistant", "content": record["text"]}]
    out = {"id": record["id"], "messages": messages}
    if record.get("meta"):
        out["meta"] = record["meta"]
    return out


# ---------------------------------------------------------------- checks


class Checks:
    """Data checks in the spirit of OpenAI's fine-tuning format checks: warnings, counted."""

    def __init__(self, max_seq_len: int):
        self.max_seq_len = max_seq_len
        self.found: dict[str, list[str]] = defaultdict(list)
        self.counts: Counter = Counter()
        self.prompts: dict[str, str] = {}

    def warn(self, kind: str, rid: str) -> None:
        self.counts[kind] += 1
        if len(self.found[kind]) < MAX_EXAMPLE_IDS:
            self.found[kind].append(rid)

    def check(self, record: dict, n_tokens: int, templated_prompt: bool) -> None:
        rid = record["id"]
        kind = body_kind(record)
        if kind == "text":
            bodies = [record["text"]]
        elif kind == "pair":
            bodies = [record["prompt"], record["completion"]]
        else:
            bodies = [m["content"] for m in record["messages"] if m["role"] != "system"]
        if any(not b.strip() for b in bodies):
            self.warn("empty_or_whitespace_body", rid)
        if n_tokens > self.max_seq_len:
            self.warn("over_max_seq_len", rid)
        if kind == "chat":
            roles = [m["role"] for m in record["messages"] if m["role"] != "system"]
            if any(m["role"] == "system" for m in record["messages"][1:]):
                self.warn("system_not_first", rid)
            expected = ["user", "assistant"] * (len(roles) // 2 + 1)
            if roles != expected[: len(roles)] or not roles or roles[-1] != "assistant":
                self.warn("roles_out_of_order", rid)
        # A prompt the template wrote is shared by design; a prompt the data brought should be unique.
        if not templated_prompt and kind != "text":
            prompt = record["prompt"] if kind == "pair" else next(
                (m["content"] for m in record["messages"] if m["role"] == "user"), "")
            first = self.prompts.setdefault(prompt.strip(), rid)
            if first != rid:
                self.warn("duplicate_prompt", rid)

    def to_json(self) -> dict:
        return {kind: {"count": self.counts[kind], "examples": self.found[kind]} for kind in sorted(self.counts)}


# ---------------------------------------------------------------- token lengths


def histogram(lengths: list[int], bins: int) -> list[dict]:
    """Equal-width bins over [shortest, longest]; labels zero-padded so they sort as numbers."""
    if not lengths:
        return []
    low, top = min(lengths), max(lengths)
    width = max(1, -(-(top - low + 1) // bins))
    counts = Counter((n - low) // width for n in lengths)
    digits = len(str(top + width))
    return [
        {"tokens": f"{low + b * width:0{digits}d}-{low + (b + 1) * width - 1:0{digits}d}", "samples": counts.get(b, 0)}
        for b in range((top - low) // width + 1)
    ]


def length_stats(lengths: list[int], max_seq_len: int) -> dict:
    if not lengths:
        return {"count": 0}
    ordered = sorted(lengths)
    return {
        "count": len(ordered),
        "total": sum(ordered),
        "mean": round(statistics.fmean(ordered), 2),
        "p50": ordered[len(ordered) // 2],
        "p95": ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))],
        "max": ordered[-1],
        "over_max_seq_len": sum(n > max_seq_len for n in ordered),
    }


# ---------------------------------------------------------------- stage


def read_unique(path: Path) -> Iterator[dict]:
    """``read_records`` with its duplicate-id check in 8 bytes per record.

    read_records' own check keeps every id in a dict (~130 MB per million,
    beside the review log's fold); here each id leaves a 64-bit hash. A
    repeated hash, seen after the last record and before any output is
    committed, sends the file through read_records' check, which names the
    duplicate and both its lines (a mere hash collision passes it).
    """
    hashes = array("q")
    for record in read_records(path, check_duplicates=False):
        hashes.append(hash(record["id"]))
        yield record
    keys = np.sort(np.frombuffer(hashes, dtype=np.int64))
    if (keys[1:] == keys[:-1]).any():
        for _ in read_records(path):
            pass


def included(records: Iterator[dict], settled: Settled, tally: Counter, rules: Counter,
             judge: tuple[Scores, int] | None = None) -> Iterator[dict]:
    """The records the policy keeps, reviewed; ``tally`` counts by status, ``rules`` by the rule that decided.

    ``judge`` (scores, T): a record no person decided is kept when the judge scored it T or more
    (build.judge_above), and left out otherwise; a person's decision always wins over the judge's.
    """
    keep_pending = settled.policy == "not_rejected"
    for record in records:
        rule, state = settled.decide(record["id"])
        status = state.status if state else "pending"
        kept = status == "accepted" or (status == "pending" and keep_pending)
        if judge is not None and rule == "undecided":
            score = int(judge[0].lookup(np.array([id_key(record["id"])], np.uint64))[0])
            rule = "judge_above" if score else "judge_unscored"
            kept = score >= judge[1]
        rules[f"{rule}: {'kept' if kept else 'left out'}"] += 1
        if not kept:
            tally[f"excluded_{status}"] += 1
            continue
        if state and state.edited:
            tally["edited"] += 1
        if state and state.tags:
            tally["tagged"] += 1
        tally[f"included_{status}"] += 1
        yield apply_review(record, state)


def run(params: Params, args: Any = None) -> int:
    from pipeline.engines.modeling import token_counter  # transformers: only when the stage runs

    bp = params.build
    if not paths.DEDUPED.exists():
        raise UserError(f"{paths.DEDUPED}: missing; run `tenny dedupe` (or `dvc repro dedupe`) first")
    team = Team.load(paths.REVIEWS_DIR)
    rp = params.review
    team.check_adjudicators(rp.adjudicators)
    settled = Settled(team, bp.include, rp.overlap, rp.adjudicators)
    for note in team.notes:
        print(f"  note: {note}")
    rules: Counter = Counter()
    scores = read_scores(PRESCORE)  # the judge of the file's latest rows; other judges' rows are stale, unused
    judge = (scores, bp.judge_above) if bp.judge_above is not None else None
    if judge is not None and not len(scores):
        raise UserError(f"build.judge_above: {bp.judge_above} needs the judge's scores in {PRESCORE}; set "
                        "review.prescore: true and run `tenny review` (or set build.judge_above: null)")
    count_tokens, tokenizer_name = token_counter(paths.BASE_DIR, bp.format, bp.stop_token)
    max_len = params.train.max_seq_len  # the trainer's length: what it leaves out is what build warns about
    checks = Checks(max_len)
    tally: Counter = Counter()
    lengths = {"train": [], "val": []}
    with atomic_writer(paths.TRAIN) as train_fh, atomic_writer(paths.VAL) as val_fh:
        for record in included(read_unique(paths.DEDUPED), settled, tally, rules, judge):
            formatted = to_format(record, bp)
            n_tokens = count_tokens(formatted)
            checks.check(formatted, n_tokens, templated_prompt=body_kind(record) == "text")
            side = split_of(record["id"], bp.seed, bp.val_fraction)
            lengths[side].append(n_tokens)
            (val_fh if side == "val" else train_fh).write(dumps(formatted) + "\n")
        if not lengths["train"]:
            raise UserError(
                f"build: no training samples left (include={bp.include}: {dict(tally) or 'the input is empty'}); "
                "review some samples as accepted, or set build.include: not_rejected"
            )
    all_lengths = lengths["train"] + lengths["val"]
    hist = histogram(all_lengths, bp.histogram_bins)
    with atomic_writer(paths.TOKEN_HIST) as fh:
        fh.write("tokens,samples\n")
        fh.writelines(f"{row['tokens']},{row['samples']}\n" for row in hist)
    report = {
        "format": bp.format,
        "include": bp.include,
        "tokenizer": tokenizer_name,
        "train": len(lengths["train"]),
        "val": len(lengths["val"]),
        "review": dict(sorted(tally.items())),
        "reviewers": team.names,
        "review_rules": dict(sorted(rules.items())),
        "review_notes": team.notes,
        "max_seq_len": max_len,
        "tokens": {"train": length_stats(lengths["train"], max_len),
                   "val": length_stats(lengths["val"], max_len),
                   "all": length_stats(all_lengths, max_len)},
        "warnings": checks.to_json(),
        "warnings_total": sum(checks.counts.values()),
    }
    write_json(paths.DATASET_REPORT, report)
    from pipeline.engines.agreement import agreement  # numpy statistics over the logs: only when the stage runs

    write_json(paths.REVIEW_REPORT, {"overlap": rp.overlap, "adjudicators": rp.adjudicators, "include": bp.include,
                                     **agreement(team, rp.adjudicators, rp.overlap, scores)})
    print(f"build: {report['train']} train, {report['val']} val ({bp.format}, include={bp.include}); "
          f"{report['warnings_total']} warnings → {paths.DATASET_REPORT}")
    for kind, found in report["warnings"].items():
        print(f"  warning: {kind}: {found['count']} (e.g. {', '.join(found['examples'])})")
    if checks.counts["over_max_seq_len"]:
        print(f"  (over_max_seq_len: train leaves these out, never cut: a cut sample loses its turn end; "
              f"raise train.max_seq_len ({max_len}) to keep them)")
    if bp.val_fraction > 0 and not lengths["val"]:
        print("  warning: val split is empty; eval needs val samples (raise build.val_fraction or add data)")
    return 0
