"""`tenny diff REV_A REV_B [PATH]`: a record-level diff of one records file between two revisions.

``dvc diff`` stops at files ("data/deduped/samples.jsonl modified"); this says
which records. REV_A and REV_B are anything git or DVC resolves (a commit,
branch, tag, ``HEAD~1``, an experiment name from ``dvc exp list``) or
``workspace`` for the files on disk. Files are read through ``dvc.api.open``,
so DVC-tracked outputs (from the cache) and plain git files both work.

Definitions (docs/app.md says the same):

- **added / removed**: an id present at only one revision.
- **edited**: the id is at both revisions but its body differs. Ids are hashes
  of the normalized body, so in a records file this mostly happens through
  review: for the review input (``data/deduped/samples.jsonl``, the file the
  review log's ids refer to) a review ``edit`` decision in force at a revision
  replaces the record's text at that revision. It also catches bodies that
  differ only in whitespace or Unicode form (same normalized text, same id).
- **meta changed**: same id, same body, different ``meta``.
- **decisions changed**: ids whose folded review state (status, edited text,
  tags) differs between the two revisions' ``data/reviews/decisions.jsonl``.
- **tokens**: an estimate, ``ceil(characters / 4)`` of the body's text, so the
  diff needs no tokenizer; ``reports/dataset.json`` has the real counts.

Both files are streamed: side A is kept as one small integer (body and meta
hash) per id, side B is compared line by line; whole records are never held.
The default PATH is the review input, ``data/deduped/samples.jsonl``: that is
where ids are stable across versions and where review edits show up as
"edited". Pass ``data/final/train.jsonl`` to diff what was trained on.

``--show ID`` prints one record old → new, word by word (``[-deleted-]``
``{+inserted+}``; the assistant turn or completion first, unchanged turns as
one line), and the meta keys that changed. When PATH has the same DVC hash at
both revisions but a metrics file of the stage that writes it changed while
dvc.lock says it did not, the stage ran outside ``dvc repro`` and the record
diff compares stale data: a warning on stderr says so (``warnings`` in --json).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import paths
from pipeline.core.errors import UserError
from pipeline.core.text import clean, json_safe

DEFAULT_PATH = str(paths.DEDUPED)
MASK64 = (1 << 64) - 1
TOKEN_BINS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# ---------------------------------------------------------------- result types


@dataclass
class Example:
    id: str
    text: str  # rendered body at B (added, edited) or A (removed), cut to a preview
    old_text: str | None = None  # for edited: the body at A


@dataclass
class SideStats:
    rev: str
    path: str
    records: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # text / pair / chat
    token_counts: dict[int, int] = field(default_factory=dict)  # estimated tokens → records
    edits_applied: int = 0  # review edits in force that replaced a body
    decisions_found: bool = False

    def token_stats(self) -> dict[str, float]:
        return distribution(self.token_counts)

    def token_histogram(self) -> list[tuple[str, int]]:
        return histogram(self.token_counts)


@dataclass
class DecisionDiff:
    path: str
    decided_a: int = 0
    decided_b: int = 0
    changed: int = 0  # ids whose state differs
    transitions: dict[str, int] = field(default_factory=dict)  # "pending → accepted" → n
    edit_text_changed: int = 0
    tags_changed: int = 0
    examples: list[dict] = field(default_factory=list)


@dataclass
class DiffResult:
    path: str
    a: SideStats
    b: SideStats
    added: int = 0
    removed: int = 0
    edited: int = 0
    meta_changed: int = 0
    unchanged: int = 0
    added_examples: list[Example] = field(default_factory=list)
    removed_examples: list[Example] = field(default_factory=list)
    edited_examples: list[Example] = field(default_factory=list)
    meta_examples: list[str] = field(default_factory=list)
    decisions: DecisionDiff | None = None
    reviewers: dict[str, DecisionDiff] = field(default_factory=dict)  # each reviewer's log in data/reviews/
    params: dict[str, dict[str, dict]] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what could not be compared, and why
    warnings: list[str] = field(default_factory=list)  # the comparison may mislead (stale_lock_warnings)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for side in ("a", "b"):
            s = getattr(self, side)
            out[side]["token_counts"] = {str(k): v for k, v in sorted(s.token_counts.items())}
            out[side]["tokens"] = s.token_stats()
            out[side]["token_histogram"] = s.token_histogram()
        return out


# ---------------------------------------------------------------- distributions


def distribution(counts: dict[int, int]) -> dict[str, float]:
    """count, mean, min, p50, p90, p99, max of a {value: how many} table (exact, no list kept)."""
    n = sum(counts.values())
    if not n:
        return {"count": 0}
    keys = sorted(counts)
    out: dict[str, float] = {"count": n, "mean": round(sum(k * c for k, c in counts.items()) / n, 2),
                             "min": keys[0], "max": keys[-1]}
    targets = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
    seen, ti = 0, 0
    for k in keys:
        seen += counts[k]
        while ti < len(targets) and seen >= targets[ti][1] * n:
            out[targets[ti][0]] = k
            ti += 1
    return out


def histogram(counts: dict[int, int]) -> list[tuple[str, int]]:
    bins = [0] * len(TOKEN_BINS)
    for value, c in counts.items():
        i = 0
        while i + 1 < len(TOKEN_BINS) and value >= TOKEN_BINS[i + 1]:
            i += 1
        bins[i] += c
    labels = [f"{lo}-{TOKEN_BINS[i + 1] - 1}" if i + 1 < len(TOKEN_BINS) else f"{lo}+" for i, lo in enumerate(TOKEN_BINS)]
    return list(zip(labels, bins))


# ---------------------------------------------------------------- streaming one side


def _loads():
    try:
        import orjson

        return orjson.loads, orjson.JSONDecodeError
    except ImportError:  # orjson comes with dvc; plain json is the same result, slower
        return json.loads, json.JSONDecodeError


def _chars(obj: dict) -> int:
    if "text" in obj:
        return len(obj["text"])
    if "messages" in obj:
        return sum(len(m["content"]) for m in obj["messages"])
    return len(obj["prompt"]) + len(obj["completion"])


def _preview(obj: dict | None, text: str | None = None, limit: int = 200) -> str:
    """The first ``limit`` characters of the body, exactly as written: ``--json`` keeps
    the text, and the human summary makes it safe when it prints it."""
    from pipeline.core.records import render_text

    if text is None:
        text = render_text(obj) if obj else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Reader:
    """Streams one records file at one revision, validating like records.py does."""

    def __init__(self, root: Path, path: str, rev: str, edits: dict[str, str]):
        self.root, self.path, self.rev, self.edits = root, path, rev, edits
        self.label = f"{path}@{rev}"

    def __iter__(self):
        """Yield (lineno, record, body_hash, meta_hash, tokens, kind)."""
        from pipeline.core.records import RecordError, check_record, reject_bom
        from pipeline.engines.dvc import revisions

        loads, decode_error = _loads()
        dumps = _dumps()
        edits = self.edits
        label = self.label
        with revisions.open_at(self.root, self.path, self.rev) as fh:
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1:
                    reject_bom(raw, label)
                if not raw.strip():
                    continue
                try:
                    obj = loads(raw)
                except (decode_error, UnicodeDecodeError) as err:
                    raise RecordError(label, lineno, None, f"malformed JSON or not UTF-8: {err}") from None
                if not isinstance(obj, dict):
                    raise RecordError(label, lineno, None, "each line must be a JSON object")
                rid = obj.get("id")
                # Fast path for the common shape (a text record); anything else goes
                # through the one validator in records.py, which also names the problem.
                if not (type(rid) is str and rid and type(obj.get("text")) is str
                        and (len(obj) == 2 or (len(obj) == 3 and type(obj.get("meta")) is dict))):
                    check_record(obj, label, lineno)
                if "text" in obj:
                    kind, body = "text", hash(("t", obj["text"]))
                elif "messages" in obj:
                    kind, body = "chat", hash(("c", dumps(obj["messages"])))
                else:
                    kind, body = "pair", hash(("p", obj["prompt"], obj["completion"]))
                if edits and rid in edits:
                    # A review edit replaces the body at this revision (see the module docstring).
                    text = edits[rid]
                    body = hash(("e", text))
                    tokens = -(-len(text) // 4)
                else:
                    tokens = -(-_chars(obj) // 4)
                meta = obj.get("meta")
                mh = hash(dumps(meta)) if meta else 0
                yield lineno, obj, body & MASK64, mh & MASK64, tokens, kind


def _dumps():
    try:
        import orjson

        return lambda v: orjson.dumps(v, option=orjson.OPT_SORT_KEYS)
    except ImportError:
        return lambda v: json.dumps(v, sort_keys=True, ensure_ascii=False).encode()


# ---------------------------------------------------------------- decisions


def _decision_states(root: Path, path: str, rev: str) -> dict | None:
    """Folded review states at ``rev``; None when the log does not exist there."""
    from pipeline.core.decisions import check_decision, fold
    from pipeline.core.records import iter_jsonl
    from pipeline.engines.dvc import revisions

    label = f"{path}@{rev}"
    try:
        with revisions.open_at(root, path, rev) as fh:
            return fold(check_decision(obj, label, n) for n, obj in iter_jsonl(label, fh=fh))
    except UserError as err:
        if "not in the repository" in str(err):
            return None
        raise


def _reviewer_paths(root: Path, folder: str, rev: str) -> dict[str, str]:
    """name → path of each reviewer's log in ``folder`` at ``rev`` (git tracks the logs)."""
    from pipeline.core.decisions import PRESCORE_NAME, reviewer_logs
    from pipeline.engines.dvc import revisions

    if revisions.is_workspace(rev):
        return {name: str(Path(folder) / p.name) for name, p in reviewer_logs(root / folder).items()}
    out = subprocess.run(["git", "ls-tree", "--name-only", "-z", rev, "--", f"{folder}/"], cwd=root,
                         capture_output=True, text=True)
    found = {}
    for rel in sorted(filter(None, out.stdout.split("\0"))):
        p = Path(rel)
        if p.suffix == ".jsonl" and p.stem != PRESCORE_NAME and ".torn-" not in p.name:
            found[p.stem] = rel
    return found


def diff_reviewers(root: Path, rev_a: str, rev_b: str, folder: str, examples: int) -> dict[str, DecisionDiff]:
    """Each reviewer's decisions compared between the two revisions (a log missing at one side: nothing decided there)."""
    at_a, at_b = _reviewer_paths(root, folder, rev_a), _reviewer_paths(root, folder, rev_b)
    out = {}
    for name in sorted(at_a.keys() | at_b.keys()):
        a = _decision_states(root, at_a[name], rev_a) if name in at_a else None
        b = _decision_states(root, at_b[name], rev_b) if name in at_b else None
        out[name] = diff_decisions(a, b, at_b.get(name) or at_a[name], examples)
    return out


def _state_key(state) -> tuple:
    return (state.status, state.text, tuple(state.tags))


def diff_decisions(a: dict | None, b: dict | None, path: str, examples: int) -> DecisionDiff:
    a, b = a or {}, b or {}
    d = DecisionDiff(path=path)
    d.decided_a = sum(1 for s in a.values() if s.status != "pending")
    d.decided_b = sum(1 for s in b.values() if s.status != "pending")
    transitions: Counter[str] = Counter()
    for rid in a.keys() | b.keys():
        sa, sb = a.get(rid), b.get(rid)
        ka = _state_key(sa) if sa else ("pending", None, ())
        kb = _state_key(sb) if sb else ("pending", None, ())
        if ka == kb:
            continue
        d.changed += 1
        if ka[0] != kb[0]:
            transitions[f"{ka[0]} → {kb[0]}"] += 1
        if ka[1] != kb[1]:
            d.edit_text_changed += 1
        if ka[2] != kb[2]:
            d.tags_changed += 1
        if len(d.examples) < examples:
            d.examples.append({"id": rid, "a": ka[0], "b": kb[0], "edited": kb[1] is not None, "tags": list(kb[2])})
    d.transitions = dict(transitions.most_common())
    return d


# ---------------------------------------------------------------- the diff


def diff_records(root: str | Path, rev_a: str, rev_b: str, path: str = DEFAULT_PATH, *,
                 decisions_path: str = str(paths.DECISIONS), apply_edits: bool | None = None,
                 examples: int = 5, with_params: bool = True) -> DiffResult:
    """Compare ``path`` at two revisions record by record (see the module docstring)."""
    from pipeline.engines.dvc import cli as dvc_cli, revisions

    started = time.perf_counter()
    root = Path(root)
    dvc_cli.find_root(root)
    shas = tuple(revisions.check_rev(root, rev) for rev in (rev_a, rev_b))
    if apply_edits is None:
        apply_edits = Path(path) == paths.DEDUPED

    states_a = _decision_states(root, decisions_path, rev_a)
    states_b = _decision_states(root, decisions_path, rev_b)
    edits_a = {rid: s.text for rid, s in (states_a or {}).items() if s.edited} if apply_edits else {}
    edits_b = {rid: s.text for rid, s in (states_b or {}).items() if s.edited} if apply_edits else {}

    result = DiffResult(path=path, a=SideStats(rev_a, path), b=SideStats(rev_b, path))
    result.a.decisions_found = states_a is not None
    result.b.decisions_found = states_b is not None

    # Side A: one int per id, body hash in the high 64 bits and meta hash in the low.
    side_a: dict[str, int] = {}
    kinds: Counter[str] = Counter()
    tokens: Counter[int] = Counter()
    from pipeline.core.records import RecordError

    reader_a = _Reader(root, path, rev_a, edits_a)
    for lineno, obj, body, meta, tok, kind in reader_a:
        rid = obj["id"]
        if rid in side_a:
            raise RecordError(reader_a.label, lineno, "id", f"duplicate id {rid} (fix the file at that revision)")
        side_a[rid] = (body << 64) | meta
        kinds[kind] += 1
        tokens[tok] += 1
        if edits_a and rid in edits_a:
            result.a.edits_applied += 1
    result.a.records = len(side_a)
    result.a.kinds, result.a.token_counts = dict(kinds), dict(tokens)

    kinds, tokens = Counter(), Counter()
    seen_b: set[str] = set()
    edited_ids: list[str] = []
    reader_b = _Reader(root, path, rev_b, edits_b)
    for lineno, obj, body, meta, tok, kind in reader_b:
        rid = obj["id"]
        if rid in seen_b:
            raise RecordError(reader_b.label, lineno, "id", f"duplicate id {rid} (fix the file at that revision)")
        seen_b.add(rid)
        kinds[kind] += 1
        tokens[tok] += 1
        if edits_b and rid in edits_b:
            result.b.edits_applied += 1
        packed = side_a.pop(rid, None)
        if packed is None:
            result.added += 1
            if len(result.added_examples) < examples:
                result.added_examples.append(Example(rid, _preview(obj, edits_b.get(rid))))
            continue
        if packed >> 64 != body:
            result.edited += 1
            if len(edited_ids) < examples:
                edited_ids.append(rid)
                result.edited_examples.append(Example(rid, _preview(obj, edits_b.get(rid))))
        elif packed & MASK64 != meta:
            result.meta_changed += 1
            if len(result.meta_examples) < examples:
                result.meta_examples.append(rid)
        else:
            result.unchanged += 1
    del seen_b
    result.b.records = result.added + result.edited + result.meta_changed + result.unchanged
    result.b.kinds, result.b.token_counts = dict(kinds), dict(tokens)
    result.removed = len(side_a)

    # Previews of removed records and the old side of edits need A's text: a
    # second pass, only for the few shown, and it stops once it has them all.
    if examples and (side_a or edited_ids):
        want_removed = set(list(side_a)[:examples])
        want_old = set(edited_ids)
        old_text: dict[str, str] = {}
        for _, obj, *_ in _Reader(root, path, rev_a, edits_a):
            rid = obj["id"]
            if rid in want_removed:
                result.removed_examples.append(Example(rid, _preview(obj, edits_a.get(rid))))
                want_removed.discard(rid)
            elif rid in want_old:
                old_text[rid] = _preview(obj, edits_a.get(rid))
                want_old.discard(rid)
            if not want_removed and not want_old:
                break
        for ex in result.edited_examples:
            ex.old_text = old_text.get(ex.id)
    del side_a

    if states_a is None and states_b is None:
        result.notes.append(f"no review log ({decisions_path}) at either revision")
    else:
        result.decisions = diff_decisions(states_a, states_b, decisions_path, examples)
        for rev, states in ((rev_a, states_a), (rev_b, states_b)):
            if states is None:
                result.notes.append(f"no review log ({decisions_path}) at {rev}: every record counts as pending there")

    if Path(decisions_path).parent == paths.REVIEWS_DIR:
        result.reviewers = diff_reviewers(root, rev_a, rev_b, str(paths.REVIEWS_DIR), examples)

    try:
        result.warnings = stale_lock_warnings(root, path, rev_a, rev_b, shas=shas)
    except UserError as err:  # a broken dvc.lock at one side: the diff above still stands
        result.notes.append(f"could not check dvc.lock for {path}: {err}")

    if with_params:
        for kind in ("params", "metrics"):
            try:
                setattr(result, kind, getattr(revisions, f"{kind}_diff")(root, rev_a, rev_b))
            except UserError as err:
                result.notes.append(f"{kind} diff unavailable: {err}")
            except Exception as err:  # DVC internals; the record diff above still stands
                result.notes.append(f"{kind} diff unavailable: {type(err).__name__}: {err}")
    result.seconds = round(time.perf_counter() - started, 3)
    return result


# ---------------------------------------------------------------- outputs rebuilt outside dvc repro


def _text_at(root: Path, rev: str, path: str) -> str | None:
    """A small file (dvc.yaml, dvc.lock, a metrics file) at ``rev``: git first, then DVC; None if absent."""
    from pipeline.engines.dvc import cli as dvc_cli, revisions

    if rev == revisions.WORKSPACE:
        try:
            return (root / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    text = dvc_cli.git_show(root, rev, path)
    if text is not None:
        return text
    try:
        with revisions.open_at(root, path, rev) as fh:
            return fh.read().decode("utf-8", errors="replace")
    except UserError:
        return None


def _parse(text: str | None) -> Any:
    import yaml

    if text is None:
        return None
    try:
        return yaml.safe_load(text)  # YAML reads JSON too
    except yaml.YAMLError:
        return text  # compared as text: still says whether it changed


def stale_lock_warnings(root: str | Path, path: str, rev_a: str, rev_b: str, *,
                        shas: tuple[str, str] | None = None) -> list[str]:
    """Warnings for ``path`` having the same DVC hash at both revisions while a metrics file of
    the stage that writes it changed, though dvc.lock records that metrics file as unchanged
    too: the stage ran outside ``dvc repro`` (``tenny build`` in a shell, a script) and
    dvc.lock, which says which data each revision holds, was not updated. The record diff
    then compares the old data on both sides and reports no change where there was one.
    """
    from pipeline.engines.dvc import project, revisions

    root = Path(root)
    shas = shas or tuple(revisions.check_rev(root, r) for r in (rev_a, rev_b))  # experiment names → commits
    # dvc.lock through its one reader: a broken one is a UserError the caller turns into a note
    locks = [project.lock_outs(project.read_lock(root, None if sha == revisions.WORKSPACE else sha)) for sha in shas]
    (stage_a, hash_a), (stage_b, hash_b) = locks[0].get(path, (None, None)), locks[1].get(path, (None, None))
    if not hash_a or hash_a != hash_b or stage_a != stage_b:
        return []
    warnings = []
    for sha in shas:
        defs = _parse(_text_at(root, sha, "dvc.yaml"))
        spec = ((defs or {}).get("stages") or {}).get(stage_a) if isinstance(defs, dict) else None
        if not isinstance(spec, dict):
            continue
        for mfile in project.metric_files(spec):
            if mfile in (w[0] for w in warnings):
                continue
            if locks[0].get(mfile) != locks[1].get(mfile):
                continue  # dvc.lock knows this one changed: a real run, and then path's hash is right
            va, vb = (_parse(_text_at(root, s, mfile)) for s in shas)
            if va is not None and vb is not None and va != vb:
                warnings.append((mfile, (f"{path} has the same DVC hash at {rev_a} and {rev_b}, but {mfile} changed: "
                                         "an output was rebuilt outside `dvc repro` (dvc.lock not updated); "
                                         "run `dvc repro` and commit dvc.lock")))
    return [w for _, w in warnings]


# ---------------------------------------------------------------- one record, old → new


def records_at(root: str | Path, path: str, rev: str, ids: set[str], *, decisions_path: str = str(paths.DECISIONS),
               apply_edits: bool | None = None) -> dict[str, dict]:
    """The whole records with these ids at ``rev`` (review edits in force applied, as the diff counts
    them); streams the file and stops once it has them all."""
    from pipeline.core.records import with_editable_text

    root = Path(root)
    if apply_edits is None:
        apply_edits = Path(path) == paths.DEDUPED
    edits: dict[str, str] = {}
    if apply_edits:
        states = _decision_states(root, decisions_path, rev) or {}
        edits = {rid: s.text for rid, s in states.items() if s.edited and rid in ids}
    found: dict[str, dict] = {}
    for _, obj, *_ in _Reader(root, path, rev, {}):
        rid = obj["id"]
        if rid in ids and rid not in found:
            found[rid] = with_editable_text(obj, edits[rid]) if rid in edits else obj
            if len(found) == len(ids):
                break
    return found


def record_change(root: str | Path, rev_a: str, rev_b: str, rid: str, path: str = DEFAULT_PATH, *,
                  decisions_path: str = str(paths.DECISIONS)):
    """One record old → new (``pipeline.engines.word_diff.RecordChange``); a UserError when
    the id is at neither revision."""
    from pipeline.engines.dvc import revisions
    from pipeline.engines.word_diff import record_changes

    root = Path(root)
    for rev in (rev_a, rev_b):
        revisions.check_rev(root, rev)
    old = records_at(root, path, rev_a, {rid}, decisions_path=decisions_path).get(rid)
    new = records_at(root, path, rev_b, {rid}, decisions_path=decisions_path).get(rid)
    if old is None and new is None:
        raise UserError(f"{path}: no record with id {clean(rid)!r} at {clean(rev_a)} or at {clean(rev_b)} "
                        "(`tenny diff REV_A REV_B` lists changed ids)")
    return record_changes(old, new)


# ---------------------------------------------------------------- printing


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return "—" if v is None else str(v)


def changed_values(diff: dict[str, dict[str, dict]]) -> list[tuple[str, str, Any, Any, Any]]:
    """(file, key, old, new, delta) for each value that differs."""
    rows = []
    for fname, keys in sorted(diff.items()):
        for key, v in sorted(keys.items()):
            if not isinstance(v, dict):
                continue
            old, new = v.get("old"), v.get("new")
            if old != new:
                rows.append((fname, key, old, new, v.get("diff")))
    return rows


def format_summary(r: DiffResult) -> str:
    a, b = r.a, r.b
    w = max(12, len(a.rev), len(b.rev))
    lines = [f"{r.path}: {a.rev} → {b.rev}  ({r.seconds:.1f} s)", ""]
    lines.append(f"{'':<22}{a.rev:>{w}}  {b.rev:>{w}}")
    lines.append(f"{'records':<22}{a.records:>{w},}  {b.records:>{w},}")
    for kind in ("text", "pair", "chat"):
        if a.kinds.get(kind) or b.kinds.get(kind):
            lines.append(f"{'  ' + kind:<22}{a.kinds.get(kind, 0):>{w},}  {b.kinds.get(kind, 0):>{w},}")
    if a.edits_applied or b.edits_applied:
        lines.append(f"{'  review edits applied':<22}{a.edits_applied:>{w},}  {b.edits_applied:>{w},}")
    sa, sb = a.token_stats(), b.token_stats()
    lines.append("tokens (≈ chars/4)")
    for key in ("mean", "p50", "p90", "p99", "max"):
        lines.append(f"{'  ' + key:<22}{_fmt(sa.get(key)):>{w}}  {_fmt(sb.get(key)):>{w}}")
    for (label, ca), (_, cb) in zip(a.token_histogram(), b.token_histogram()):
        if ca or cb:
            lines.append(f"{'  ' + label:<22}{ca:>{w},}  {cb:>{w},}")
    lines += ["", "records",
              f"  added         {r.added:>10,}",
              f"  removed       {r.removed:>10,}",
              f"  edited        {r.edited:>10,}   same id, different body",
              f"  meta changed  {r.meta_changed:>10,}   same id and body, different meta",
              f"  unchanged     {r.unchanged:>10,}"]
    for sign, exs in (("+", r.added_examples), ("-", r.removed_examples)):
        for ex in exs:
            lines.append(f"  {sign} {ex.id}  {ex.text}")
    for ex in r.edited_examples:
        lines.append(f"  ~ {ex.id}  {ex.old_text or '?'}")
        lines.append(f"    {'':<16}→ {ex.text}")
    if r.decisions:
        d = r.decisions
        lines += ["", f"decisions ({d.path}): {d.decided_a:,} decided at {a.rev}, {d.decided_b:,} at {b.rev}; "
                  f"{d.changed:,} ids changed"]
        for t, n in d.transitions.items():
            lines.append(f"  {t:<24}{n:>8,}")
        if d.edit_text_changed:
            lines.append(f"  {'edited text changed':<24}{d.edit_text_changed:>8,}")
        if d.tags_changed:
            lines.append(f"  {'tags changed':<24}{d.tags_changed:>8,}")
    if r.reviewers:
        lines += ["", f"decisions per reviewer ({paths.REVIEWS_DIR}/):"]
        for name, d in r.reviewers.items():
            moves = ", ".join(f"{t} {n:,}" for t, n in d.transitions.items())
            lines.append(f"  {name[:24]:<24}{d.decided_a:>9,} → {d.decided_b:<9,} decided; {d.changed:,} changed"
                         + (f" ({moves})" if moves else ""))
    for title, diff in (("params", r.params), ("metrics", r.metrics)):
        rows = changed_values(diff)
        lines += ["", f"{title}: " + ("no changes" if not rows else f"{len(rows)} changed")]
        for fname, key, old, new, delta in rows:
            extra = f"  ({'+' if isinstance(delta, (int, float)) and delta > 0 else ''}{_fmt(delta)})" if delta is not None else ""
            lines.append(f"  {fname}: {key}  {_fmt(old)} → {_fmt(new)}{extra}")
    for note in r.notes:
        lines.append(f"note: {note}")
    # Ids, bodies, revisions, keys and notes all came from files or the command line:
    # each line is made safe as a whole, so nothing interpolated above can slip through.
    return "\n".join(clean(line) for line in lines)


# ---------------------------------------------------------------- command line


def add_arguments(parser) -> None:
    parser.add_argument("rev_a", metavar="REV_A", help="old revision: commit, branch, tag, experiment name, or 'workspace'")
    parser.add_argument("rev_b", metavar="REV_B", help="new revision (same forms)")
    parser.add_argument("path", metavar="PATH", nargs="?", default=DEFAULT_PATH,
                        help=f"records file to compare (default: {DEFAULT_PATH}, the review input)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    parser.add_argument("--examples", type=int, default=5, metavar="N", help="records to show per kind of change (default 5)")
    parser.add_argument("--decisions", default=str(paths.DECISIONS), metavar="PATH",
                        help=f"review log to compare (default {paths.DECISIONS})")
    parser.add_argument("--no-params", action="store_true", help="skip the params and metrics diffs")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: the current folder)")
    parser.add_argument("--show", metavar="ID", help="print one record old → new, word by word "
                        "([-deleted-] {+inserted+}), and the meta keys that changed")


def run(params, args) -> int:
    if args.examples < 0:
        raise UserError("--examples must be 0 or more")
    if getattr(args, "show", None):
        return _show(args)
    result = diff_records(Path(args.repo), args.rev_a, args.rev_b, args.path, decisions_path=args.decisions,
                          examples=args.examples, with_params=not args.no_params)
    for warning in result.warnings:
        # stderr: `tenny diff ... --json | jq` still gets one JSON document (it carries them too).
        print(clean(f"warning: {warning}"), file=sys.stderr)
    if args.json:
        # The exact text, as JSON escapes where a raw character could act on a terminal.
        out = json_safe(json.dumps(result.to_json(), ensure_ascii=False, indent=2, default=str)) + "\n"
    else:
        out = format_summary(result) + "\n"
    return _write(out)


def _show(args) -> int:
    from pipeline.engines.word_diff import plain_lines

    change = record_change(Path(args.repo), args.rev_a, args.rev_b, args.show, args.path,
                           decisions_path=args.decisions)
    if args.json:
        data = {"id": change.id, "status": change.status,
                "parts": [{"label": p.label, "old": p.old, "new": p.new, "ops": p.ops() if p.changed else []}
                          for p in change.parts],
                "meta": [{"key": m.key, "old": _json_value(m.old), "new": _json_value(m.new)} for m in change.meta]}
        return _write(json_safe(json.dumps(data, ensure_ascii=False, indent=2, default=str)) + "\n")
    # Record text is untrusted: every line made safe as a whole, markers included.
    return _write("\n".join(clean(line) for line in plain_lines(change)) + "\n")


def _json_value(value: Any) -> Any:
    from pipeline.engines.word_diff import MISSING

    return None if value is MISSING else value


def _write(out: str) -> int:
    try:
        sys.stdout.write(out)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
    except BrokenPipeError:
        # The reader stopped (`tenny diff ... | head`): it has what it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not print a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 0
