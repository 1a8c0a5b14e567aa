"""The review log data/reviews/decisions.jsonl: append-only, latest decision wins.

One decision per line: ``{"id", "action", "text"?, "tags"?, "at", "by"}`` with
action accept | reject | edit | tag | undo. Nothing is rewritten in place:
``undo`` appends a line that cancels the latest not-yet-undone decision for
that id. ``fold`` turns the log into the current state of each id.

Durability: each decision is one O_APPEND write of a whole line, fsynced
before the caller goes on, so a kill loses at most the keystroke in flight and
two writers interleave whole lines. The one thing a crash can leave is a last
line cut short (the machine died inside the write): ``repair`` sets that tail
aside in a file named after the log and the time, so it is kept, never
silently dropped, and the log ends on a whole line again.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError
from pipeline.records import RecordError, append_jsonl, iter_jsonl, parse_line, reject_bom

ACTIONS = ("accept", "reject", "edit", "tag", "undo")


@dataclass
class ReviewState:
    """Where one sample stands after every decision on it."""

    status: str = "pending"  # pending | accepted | rejected
    text: str | None = None  # the edited text, if edited
    tags: list[str] = field(default_factory=list)

    @property
    def edited(self) -> bool:
        return self.text is not None


def check_decision(obj: dict, path, lineno: int) -> dict:
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(path, lineno, "id", "missing or not a string")
    action = obj.get("action")
    if action not in ACTIONS:
        raise RecordError(path, lineno, "action", f"must be one of {', '.join(ACTIONS)}, got {action!r}")
    if action == "edit" and not isinstance(obj.get("text"), str):
        raise RecordError(path, lineno, "text", "an edit needs the new text as a string")
    if action == "tag":
        tags = obj.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise RecordError(path, lineno, "tags", "a tag decision needs 'tags': a list of strings")
    return obj


def read_decisions(path: str | os.PathLike) -> Iterator[dict]:
    path = Path(path)
    if not path.exists():
        return
    for lineno, obj in iter_jsonl(path):
        yield check_decision(obj, path, lineno)


def _replay(history: list[dict]) -> ReviewState:
    state = ReviewState()
    for d in history:
        action = d["action"]
        if action == "accept":
            state.status = "accepted"
        elif action == "reject":
            state.status = "rejected"
        elif action == "edit":
            # An edit is a person's own version of the sample: it is accepted.
            state.text = d["text"]
            state.status = "accepted"
        elif action == "tag":
            state.tags = list(dict.fromkeys(d["tags"]))
    return state


def fold(decisions: Iterable[dict]) -> dict[str, ReviewState]:
    """The state of every id the log mentions; undo cancels the latest decision in force."""
    histories: dict[str, list[dict]] = {}
    for d in decisions:
        h = histories.setdefault(d["id"], [])
        if d["action"] == "undo":
            if h:
                h.pop()
        else:
            h.append(d)
    return {rid: _replay(h) for rid, h in histories.items()}


def repair(path: str | os.PathLike) -> Path | None:
    """Make the log end on a whole line; return where a cut last line was set aside.

    A last line without its newline is either whole (a hand-edited file: a
    newline is added) or cut by a crash mid-write (it is not valid JSON): its
    bytes go to ``<log>.torn-<time>.jsonl`` beside the log and the log is
    truncated to its last whole line. Appends carry on after either.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb+") as fh:
        size = fh.seek(0, os.SEEK_END)
        fh.seek(max(0, size - 1))
        if fh.read(1) == b"\n":
            return None
        # find the start of the last line, reading backwards in blocks
        pos, tail = size, b""
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            fh.seek(pos)
            tail = fh.read(step) + tail
            cut = tail.rfind(b"\n")
            if cut >= 0:
                pos += cut + 1
                tail = tail[cut + 1:]
                break
        try:
            obj = json.loads(tail.decode("utf-8"))
            whole = isinstance(obj, dict)
        except (UnicodeDecodeError, ValueError):
            whole = False
        if whole:
            fh.seek(0, os.SEEK_END)
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
            return None
        aside = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.jsonl")
        with open(aside, "wb") as out:
            out.write(tail)
            out.flush()
            os.fsync(out.fileno())
        fh.truncate(pos)
        fh.flush()
        os.fsync(fh.fileno())
    return aside


# A line exactly as append_decision/append_decisions write an accept, reject or
# undo: folded without json.loads, which is most of the cost of opening a long log.
_PLAIN = re.compile(rb'\{"id":"([^"\\\n]+)","action":"(accept|reject|undo)","at":"[^"\\\n]*","by":"[^"\\\n]*"\}\r?')
_PLAIN_LINES = re.compile(rb"^" + _PLAIN.pattern + rb"\n", re.MULTILINE)
_CODE = {"accept": "a", "reject": "r"}
_BYTE_CODE = {k.encode(): v for k, v in _CODE.items()}  # the fold of plain lines works on bytes
_READ_BLOCK = 8 << 20


class DecisionLog:
    """The log as one reviewer's session sees it: folded, and followed as it grows.

    Other processes may append to the same file; ``poll`` folds in whatever
    whole lines appeared since the last look, so the latest decision for an id
    wins in every open session. ``stack`` holds ids in the order of the
    decisions in force, for undo across restarts.

    Memory is the point of the representation: a log of a million decisions
    must fit beside a million-sample index. Each id keeps the decisions in
    force as ``"a"``/``"r"`` (one plain accept/reject, a shared string) or a
    tuple of ``"a"``, ``"r"``, ``("e", text)``, ``("t", tags)``; the current
    edited text and tags are kept aside for the few ids that have them.
    """

    def __init__(self, path: str | os.PathLike, by: str | None = None):
        self.path = Path(path)
        self.by = by
        self.hist: dict[str, str | tuple] = {}
        self.texts: dict[str, str] = {}  # id → edited text in force
        self.tags: dict[str, tuple[str, ...]] = {}  # id → tags in force
        self.stack: list[str] = []
        self.offset = 0  # bytes of the log folded so far
        self.lines = 0
        self.set_aside: Path | None = None
        self.last_touched: list[str] = []  # ids the latest poll folded in

    # -- reading

    def open(self) -> None:
        """Repair a cut last line, then fold the whole log (RecordError names a bad line)."""
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; pass a decisions .jsonl file with --decisions")
        self.set_aside = repair(self.path)
        self.poll()

    def poll(self) -> list[str]:
        """Fold whole lines appended since the last call; return the ids they touched."""
        self.last_touched = touched = []
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return touched
        if size < self.offset:
            raise UserError(f"{self.path}: the review log shrank while open (was it replaced?); reopen the review")
        with open(self.path, "rb") as fh:
            while self.offset < size:
                fh.seek(self.offset)
                data = fh.read(min(_READ_BLOCK, size - self.offset))
                end = data.rfind(b"\n") + 1  # a line still being written waits for the next poll
                if end == 0 and len(data) < size - self.offset:  # one line longer than a block
                    data += fh.read(size - self.offset - len(data))
                    end = data.rfind(b"\n") + 1
                if end == 0:
                    break
                self._fold_block(data, end, touched)
                self.offset += end
        return touched

    def _fold_block(self, data: bytes, end: int, touched: list[str]) -> None:
        n_lines = data.count(b"\n", 0, end)
        plain = _PLAIN_LINES.findall(data, 0, end)
        if len(plain) == n_lines and (data.isascii() or _utf8(data[:end])):
            self._fold_plain(plain, touched)
            self.lines += n_lines
            return
        at, lineno = 0, self.lines
        if self.offset == 0:
            reject_bom(data, self.path)
        while at < end:
            nl = data.index(b"\n", at)
            lineno += 1
            m = _PLAIN.fullmatch(data, at, nl)
            rid = None
            if m is not None and data[at:nl].isascii():  # else the JSON path checks the UTF-8
                rid = m.group(1).decode("ascii")
            if rid is not None:
                self._apply(rid, m.group(2).decode("ascii"), None)
                touched.append(rid)
            elif data[at:nl].strip():
                d = check_decision(parse_line(data[at:nl], self.path, lineno), self.path, lineno)
                self._apply(d["id"], d["action"], d)
                touched.append(d["id"])
            at = nl + 1
        self.lines = lineno

    def _fold_plain(self, plain: list[tuple[bytes, bytes]], touched: list[str]) -> None:
        """A block of only plain accept/reject/undo lines: the common case, kept tight."""
        hist, stack, code = self.hist, self.stack, _BYTE_CODE
        rids = [raw.decode("utf-8") for raw, _ in plain]
        touched.extend(rids)
        actions = [action for _, action in plain]
        if b"undo" not in set(actions) and hist.keys().isdisjoint(rids) and len(set(rids)) == len(rids):
            # each id decided once in this block and never before (opening a long log):
            # the whole block folds in C
            hist.update(zip(rids, map(code.__getitem__, actions)))
            stack.extend(rids)
            return
        for rid, action in zip(rids, actions):
            c = code.get(action)
            if c is None:
                self._apply(rid, "undo", None)
                continue
            old = hist.get(rid)
            # an accept/reject changes neither the edited text nor the tags in force
            hist[rid] = c if old is None or old == () else ((old, c) if isinstance(old, str) else old + (c,))
            stack.append(rid)

    def _apply(self, rid: str, action: str, d: dict | None) -> None:
        old = self.hist.get(rid, ())
        entries = (old,) if isinstance(old, str) else old
        if action == "undo":
            if not entries:
                return
            entries = entries[:-1]
            for i in range(len(self.stack) - 1, -1, -1):
                if self.stack[i] == rid:
                    del self.stack[i]
                    break
        else:
            if action in _CODE:
                entry = _CODE[action]
            elif action == "edit":
                entry = ("e", d["text"])
            else:
                entry = ("t", tuple(dict.fromkeys(d["tags"])))
            entries = entries + (entry,)
            self.stack.append(rid)
        self.hist[rid] = entries[0] if len(entries) == 1 and isinstance(entries[0], str) else entries
        status, text, tags = _replay_compact(entries)
        if text is None:
            self.texts.pop(rid, None)
        else:
            self.texts[rid] = text
        if tags:
            self.tags[rid] = tags
        else:
            self.tags.pop(rid, None)

    # -- the state of ids

    def state(self, rid: str) -> ReviewState | None:
        value = self.hist.get(rid)
        if value is None:
            return None
        status, text, tags = _replay_compact((value,) if isinstance(value, str) else value)
        return ReviewState(status=status, text=text, tags=list(tags))

    @property
    def states(self) -> "_StatesView":
        """Every id's ReviewState, built on access (a mapping, like ``fold``'s result)."""
        return _StatesView(self)

    # -- writing

    def append(self, rid: str, action: str, *, text: str | None = None, tags: list[str] | None = None) -> dict:
        """Append one decision (fsynced), then fold it and anything others wrote before it."""
        row = append_decision(self.path, rid, action, text=text, tags=tags, by=self.by)
        self.poll()
        return row

    def undo_last(self) -> str | None:
        """Undo the latest decision in force; None when there is none."""
        self.poll()
        if not self.stack:
            return None
        rid = self.stack[-1]
        self.append(rid, "undo")
        return rid

    def known_tags(self) -> list[str]:
        seen: dict[str, None] = {}
        for tags in self.tags.values():
            for t in tags:
                seen.setdefault(t, None)
        return sorted(seen)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class _StatesView(Mapping):
    def __init__(self, log: DecisionLog):
        self._log = log

    def __getitem__(self, rid: str) -> ReviewState:
        state = self._log.state(rid)
        if state is None:
            raise KeyError(rid)
        return state

    def __iter__(self):
        return iter(self._log.hist)

    def __len__(self) -> int:
        return len(self._log.hist)


def _replay_compact(entries: tuple) -> tuple[str, str | None, tuple[str, ...]]:
    """(status, edited text, tags) of compact entries; the same rules as ``_replay``."""
    status, text, tags = "pending", None, ()
    for e in entries:
        if e == "a":
            status = "accepted"
        elif e == "r":
            status = "rejected"
        elif e[0] == "e":
            text, status = e[1], "accepted"
        else:
            tags = e[1]
    return status, text, tags


def load_states(path: str | os.PathLike) -> dict[str, ReviewState]:
    return fold(read_decisions(path))


def append_decision(path: str | os.PathLike, rid: str, action: str, *, text: str | None = None,
                    tags: list[str] | None = None, by: str | None = None) -> dict:
    """Append one decision, fsynced before returning (a kill loses nothing written)."""
    row = {"id": rid, "action": action}
    if text is not None:
        row["text"] = text
    if tags is not None:
        row["tags"] = tags
    row["at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    row["by"] = by or os.environ.get("TENNY_REVIEWER") or _user()
    check_decision(row, path, 0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, row)
    return row


def append_decisions(path: str | os.PathLike, rids: Iterable[str], action: str, *, by: str | None = None,
                     batch: int = 20_000) -> int:
    """Append one decision per id (a bulk accept/reject): whole lines, one fsync per batch.

    Each batch is one O_APPEND write, so another session's lines never land
    inside one of ours; a kill mid-way leaves the batches already written.
    """
    if action not in ("accept", "reject"):
        raise ValueError(f"bulk decisions are accept or reject, not {action!r}")
    at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    who = json.dumps(by or os.environ.get("TENNY_REVIEWER") or _user(), ensure_ascii=False)
    tail = f',"action":"{action}","at":"{at}","by":{who}}}\n'
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        chunk: list[str] = []
        for rid in rids:
            chunk.append('{"id":' + json.dumps(rid, ensure_ascii=False) + tail)
            if len(chunk) >= batch:
                n += _write_all(fd, "".join(chunk).encode("utf-8"))
                chunk = []
        if chunk:
            n += _write_all(fd, "".join(chunk).encode("utf-8"))
    finally:
        os.close(fd)
    return n


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    return data.count(b"\n")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "unknown"
