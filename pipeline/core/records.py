"""The one reader and writer of tenny's JSONL record files.

Every stage and the TUI read and write records through this module, so a file
that one part accepts, every part accepts, and a bad line gets the same error
everywhere.

Format (docs/records.md): one JSON object per line, UTF-8 without BOM. Each
record has ``id`` and exactly one body:

- ``text``: a string;
- ``prompt`` + ``completion``: two strings;
- ``messages``: a list of ``{"role": ..., "content": ...}`` (OpenAI chat shape).

``meta`` (an object) holds provenance. Blank lines are ignored. Readers stream:
nothing here loads a whole file into memory except where a caller asks for a
list.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core.errors import UserError

CHAT_ROLES = ("system", "user", "assistant", "tool")
ID_HEX_CHARS = 16  # 64 bits: a collision in a million records has odds ~1e-8
_BODY_FIELDS = ("text", "prompt", "completion", "messages")


class RecordError(UserError, ValueError):
    """A bad line in a records file: says which file, line and field."""

    def __init__(self, path: str | os.PathLike, line: int | None, field: str | None, problem: str):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"{field}: {problem}" if field else problem
        super().__init__(f"{where}: {what}")


# ---------------------------------------------------------------- ids


def normalize(text: str) -> str:
    """The form ids are computed from: NFC, whitespace runs collapsed, trimmed.

    Two samples that differ only in spacing or Unicode composition are the same
    sample, so they get the same id.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def _canonical_body(record: dict) -> str:
    kind = body_kind(record)
    if kind == "text":
        return "text\x00" + normalize(record["text"])
    if kind == "pair":
        return "pair\x00" + normalize(record["prompt"]) + "\x00" + normalize(record["completion"])
    return "chat\x00" + "\x00".join(
        f"{m['role']}\x01{normalize(m['content'])}" for m in record["messages"]
    )


def record_id(record: dict) -> str:
    """A stable id: a hash of the record's normalized body (meta is not part of it)."""
    digest = hashlib.blake2b(_canonical_body(record).encode("utf-8"), digest_size=ID_HEX_CHARS // 2)
    return digest.hexdigest()


def make_record(
    *,
    text: str | None = None,
    prompt: str | None = None,
    completion: str | None = None,
    messages: list[dict] | None = None,
    meta: dict | None = None,
) -> dict:
    """Build a valid record with its id. Exactly one body must be given."""
    record: dict[str, Any] = {}
    if text is not None:
        record["text"] = text
    if prompt is not None or completion is not None:
        record["prompt"] = prompt
        record["completion"] = completion
    if messages is not None:
        record["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    problem = body_problem(record)
    if problem:
        raise ValueError(problem[1] if problem[0] is None else f"{problem[0]}: {problem[1]}")
    out = {"id": record_id(record), **record}
    if meta:
        out["meta"] = meta
    return out


def with_body(record: dict, **body: Any) -> dict:
    """A copy of ``record`` with a new body (and the new body's id); meta kept."""
    meta = record.get("meta")
    return make_record(**body, meta=dict(meta) if meta else None)


# ---------------------------------------------------------------- bodies


def body_kind(record: dict) -> str:
    """'text', 'pair' or 'chat'. Assumes a validated record."""
    if "text" in record:
        return "text"
    if "messages" in record:
        return "chat"
    return "pair"


def body_problem(record: dict) -> tuple[str | None, str] | None:
    """(field, problem) if the record's body is not exactly one valid body."""
    present = [f for f in _BODY_FIELDS if f in record]
    has_text = "text" in present
    has_pair = "prompt" in present or "completion" in present
    has_chat = "messages" in present
    bodies = [name for name, on in (("text", has_text), ("prompt/completion", has_pair), ("messages", has_chat)) if on]
    if not bodies:
        return None, "no body: a record needs 'text', or 'prompt' + 'completion', or 'messages'"
    if len(bodies) > 1:
        return None, f"two bodies ({' and '.join(bodies)}): a record has exactly one"
    if has_text:
        if not isinstance(record["text"], str):
            return "text", f"must be a string, got {_type_name(record['text'])}"
        return None
    if has_pair:
        for field in ("prompt", "completion"):
            if field not in record:
                return field, "missing: 'prompt' and 'completion' come together"
            if not isinstance(record[field], str):
                return field, f"must be a string, got {_type_name(record[field])}"
        return None
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages", f"must be a non-empty list, got {_type_name(messages)}"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages[{i}]", f"must be an object, got {_type_name(message)}"
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            return f"messages[{i}].role", f"must be one of {', '.join(CHAT_ROLES)}, got {role!r}"
        if not isinstance(content, str):
            return f"messages[{i}].content", f"must be a string, got {_type_name(content)}"
    return None


def render_text(record: dict) -> str:
    """One string standing for the record's content (dedupe, search, display).

    text → the text; prompt/completion → prompt, newline, completion;
    messages → one ``role: content`` line per message.
    """
    kind = body_kind(record)
    if kind == "text":
        return record["text"]
    if kind == "pair":
        return f"{record['prompt']}\n{record['completion']}"
    return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])


def editable_turn(messages: list[dict]) -> int:
    """Index of the turn an edit replaces: the last assistant turn, else the last turn."""
    return max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=len(messages) - 1)


def editable_text(record: dict) -> str:
    """The part of a record an edit (or a rewrite) replaces: the text, the completion, or ``editable_turn``."""
    kind = body_kind(record)
    if kind == "text":
        return record["text"]
    if kind == "pair":
        return record["completion"]
    return record["messages"][editable_turn(record["messages"])]["content"]


def with_editable_text(record: dict, text: str) -> dict:
    """A copy of ``record`` with ``editable_text`` replaced by ``text`` (what a review edit does); id and meta kept."""
    out = dict(record)
    kind = body_kind(record)
    if kind == "text":
        out["text"] = text
    elif kind == "pair":
        out["completion"] = text
    else:
        messages = [dict(m) for m in record["messages"]]
        messages[editable_turn(messages)]["content"] = text
        out["messages"] = messages
    return out


def _type_name(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), type(value).__name__
    )


# ---------------------------------------------------------------- reading


def reject_bom(first_line: bytes, path: str | os.PathLike) -> None:
    """A file must not start with a UTF-8 byte-order mark; every reader checks its first line here."""
    if first_line.startswith(b"\xef\xbb\xbf"):
        raise RecordError(path, 1, None, "file starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM")


def parse_line(raw: bytes, path: str | os.PathLike, lineno: int) -> dict | None:
    """One JSONL line as an object (None if blank); a bad line raises RecordError naming it."""
    stripped = raw.strip()
    if not stripped:
        return None
    try:
        line = stripped.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordError(path, lineno, None, f"not valid UTF-8 (byte {err.start}: {stripped[err.start:err.start + 4]!r})") from None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise RecordError(path, lineno, None, f"malformed JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(obj, dict):
        raise RecordError(path, lineno, None, f"each line must be a JSON object, got {_type_name(obj)}")
    if _SURROGATE_ESCAPE.search(stripped):
        _check_no_lone_surrogates(obj, path, lineno)
    return obj


def iter_jsonl(path: str | os.PathLike, *, fh: BinaryIO | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for each non-blank line; errors name the line.

    The generic layer under records and the review log: strict UTF-8, no BOM,
    each line one JSON object.
    """
    own = fh is None
    fh = fh or open(path, "rb")
    try:
        for lineno, raw in enumerate(fh, start=1):
            if lineno == 1:
                reject_bom(raw, path)
            obj = parse_line(raw, path, lineno)
            if obj is None:
                continue
            yield lineno, obj
    finally:
        if own:
            fh.close()


# Only a \uD800-\uDFFF escape can smuggle a lone surrogate through json.loads;
# a cheap byte search keeps the full check off the common path.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _check_no_lone_surrogates(obj: dict, path, lineno: int) -> None:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise RecordError(path, lineno, None,
                          f"a \\u escape encodes a lone surrogate ({err.object[err.start]!r}), which is not text; "
                          "fix the escape or drop the line") from None


def check_record(obj: dict, path: str | os.PathLike, lineno: int | None) -> dict:
    """Validate one parsed record; raise RecordError naming the field."""
    rid = obj.get("id")
    if rid is None:
        raise RecordError(path, lineno, "id", "missing")
    if not isinstance(rid, str) or not rid:
        raise RecordError(path, lineno, "id", f"must be a non-empty string, got {_type_name(rid)}")
    problem = body_problem(obj)
    if problem:
        raise RecordError(path, lineno, *problem)
    meta = obj.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise RecordError(path, lineno, "meta", f"must be an object, got {_type_name(meta)}")
    return obj


def read_records(path: str | os.PathLike, *, check_duplicates: bool = True) -> Iterator[dict]:
    """Stream validated records from a JSONL file.

    A duplicate id is an error naming both lines (ids are content hashes, so a
    duplicate means the same sample twice). Keeping the seen ids costs ~100 MB
    per million records; pass ``check_duplicates=False`` where a caller keeps
    its own index.
    """
    seen: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        check_record(obj, path, lineno)
        if check_duplicates:
            first = seen.setdefault(obj["id"], lineno)
            if first != lineno:
                raise RecordError(path, lineno, "id", f"duplicate id {obj['id']} (first on line {first})")
        yield obj


def read_records_lenient_ids(path: str | os.PathLike) -> Iterator[dict]:
    """Like read_records, but records without an id get one computed from their body.

    For files people bring (an existing dataset, a hand-written file): the id is
    ours to assign when they did not.
    """
    for lineno, obj in iter_jsonl(path):
        if "id" not in obj:
            problem = body_problem(obj)
            if problem:
                raise RecordError(path, lineno, *problem)
            obj = {"id": record_id(obj), **obj}
        yield check_record(obj, path, lineno)


def count_lines(path: str | os.PathLike, chunk: int = 1 << 20) -> int:
    """Number of non-blank-terminated lines, counted in chunks (never the whole file)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


# ---------------------------------------------------------------- writing


def dumps(obj: dict) -> str:
    """One JSONL line (no newline). Non-ASCII kept as is; the file is UTF-8."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "w"):
    """Open a temp file beside ``path``; on success rename it over ``path``.

    A stage killed mid-write leaves the old file (or none), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "\n") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records atomically, validating each; return how many were written."""
    seen: set[str] = set()

    def checked() -> Iterator[str]:
        for n, record in enumerate(records, start=1):
            check_record(record, path, None)
            if record["id"] in seen:
                raise RecordError(path, n, "id", f"duplicate id {record['id']} while writing")
            seen.add(record["id"])
            yield dumps(record)

    return write_lines(path, checked())


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> int:
    """Lines already made by ``dumps`` from checked records, atomically; return how many."""
    n = 0
    with atomic_writer(path) as fh:
        for n, line in enumerate(lines, start=1):
            fh.write(line)
            fh.write("\n")
    return n


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """A report or metrics file, written atomically and readably."""
    with atomic_writer(path) as fh:
        json.dump(obj, fh, ensure_ascii=False, indent=2, sort_keys=False)
        fh.write("\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Any JSON-lines file (reports, generations), atomically."""
    return write_lines(path, map(dumps, rows))


def append_jsonl(path: str | os.PathLike, row: dict, *, fsync: bool = True) -> None:
    """Append one line and make it durable before returning (the review log).

    One ``write`` of a whole line in O_APPEND mode: two writers on one file
    interleave whole lines, never bytes within a line.
    """
    data = (dumps(row) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
