"""The review log data/reviews/decisions.jsonl: append-only, latest decision wins.

One decision per line: ``{"id", "action", "text"?, "tags"?, "at", "by"}`` with
action accept | reject | edit | tag | undo. Nothing is rewritten in place:
``undo`` appends a line that cancels the latest not-yet-undone decision for
that id. ``Fold`` turns decisions into the current state of each id; it is
the one fold, behind ``fold`` (decisions already parsed), ``load_states`` (a
log file, read strictly: build) and ``DecisionLog`` (a session following the
log as it grows: the review queue).

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
import secrets
import subprocess
import time
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.records import (
    RecordError,
    append_jsonl,
    iter_jsonl,
    parse_line,
    reject_bom,
)

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


# ---------------------------------------------------------------- the fold

# What each id keeps: its decisions in force, oldest first, as "a" (accept),
# "r" (reject), ("e", text) or ("t", tags). A lone accept or reject, by far the
# most common history, is the shared one-letter string itself, not a 1-tuple.
_CODE = {"accept": "a", "reject": "r"}


class Fold:
    """The one fold of the review log: the state of every id the decisions mention.

    ``apply`` is the rule: a decision is pushed onto its id's decisions in
    force and ``undo`` pops the latest; the state is a replay of what is left.
    Memory is the point of the representation: a million decisions must fit
    beside a million-sample index (the build stage, the review queue), so a
    line leaves only its effect behind, never the row. The edited text and
    tags in force are also kept aside (``texts``, ``tags``) for the few ids
    that have them.
    """

    def __init__(self) -> None:
        self.hist: dict[str, str | tuple] = {}
        self.texts: dict[str, str] = {}  # id → edited text in force
        self.tags: dict[str, tuple[str, ...]] = {}  # id → tags in force
        # Every decision and every undo that cancelled one, in log order (pushed: 1 for a
        # decision), for undo across restarts: an undo appends here instead of searching
        # a list of the decisions in force, which made a long log with undos quadratic.
        self._order: list[str] = []
        self._pushed = bytearray()

    def apply(self, rid: str, action: str, text: str | None = None, tags: Iterable[str] | None = None) -> None:
        """Fold one checked decision in."""
        code = _CODE.get(action)
        if code is not None:  # the common case, kept short: the edited text and tags in force stay as they are
            old = self.hist.get(rid)
            if old is None or old == ():
                self.hist[rid] = code
            else:
                self.hist[rid] = (old, code) if isinstance(old, str) else old + (code,)
            self._order.append(rid)
            self._pushed.append(1)
            return
        old = self.hist.get(rid, ())
        entries = (old,) if isinstance(old, str) else old
        if action == "undo":
            if not entries:
                self.hist.setdefault(rid, ())  # nothing to undo, but the id is mentioned: pending
                return
            entries = entries[:-1]
        elif action == "edit":
            entries += (("e", text),)
        elif action == "tag":
            entries += (("t", tuple(dict.fromkeys(tags))),)
        else:
            raise ValueError(f"not a review action: {action!r}")
        self._order.append(rid)
        self._pushed.append(action != "undo")
        self.hist[rid] = entries[0] if len(entries) == 1 and isinstance(entries[0], str) else entries
        _, text, tags = _replay(entries)
        if text is None:
            self.texts.pop(rid, None)
        else:
            self.texts[rid] = text
        if tags:
            self.tags[rid] = tags
        else:
            self.tags.pop(rid, None)

    def in_force(self) -> Iterator[str]:
        """The id of each decision in force, latest first.

        Read backwards, an undo cancels the latest decision of its id not yet
        cancelled: the same decisions stay in force as when the log is read forwards.
        """
        undone: dict[str, int] = {}
        for rid, pushed in zip(reversed(self._order), reversed(self._pushed)):
            if not pushed:
                undone[rid] = undone.get(rid, 0) + 1
            elif undone.get(rid):
                undone[rid] -= 1
            else:
                yield rid

    @property
    def stack(self) -> list[str]:
        """The id of each decision in force, oldest first."""
        return list(self.in_force())[::-1]

    def state(self, rid: str) -> ReviewState | None:
        value = self.hist.get(rid)
        if value is None:
            return None
        status, text, tags = _replay((value,) if isinstance(value, str) else value)
        return ReviewState(status=status, text=text, tags=list(tags))

    @property
    def states(self) -> _StatesView:
        """Every id's ReviewState, each built when asked for (a million of them held at once would cost ~1 GB)."""
        return _StatesView(self)


def _replay(entries: tuple) -> tuple[str, str | None, tuple[str, ...]]:
    """(status, edited text, tags) after the decisions in force, oldest first."""
    status, text, tags = "pending", None, ()
    for e in entries:
        if e == "a":
            status = "accepted"
        elif e == "r":
            status = "rejected"
        elif e[0] == "e":
            # An edit is a person's own version of the sample: it is accepted.
            text, status = e[1], "accepted"
        else:
            tags = e[1]
    return status, text, tags


class _StatesView(Mapping):
    def __init__(self, fold: Fold):
        self._fold = fold

    def __getitem__(self, rid: str) -> ReviewState:
        state = self._fold.state(rid)
        if state is None:
            raise KeyError(rid)
        return state

    def get(self, rid: str, default=None):
        # build asks once per sample, most of them undecided: no KeyError raised and caught each time
        state = self._fold.state(rid)
        return default if state is None else state

    def __iter__(self):
        return iter(self._fold.hist)

    def __len__(self) -> int:
        return len(self._fold.hist)


def fold(decisions: Iterable[dict]) -> Mapping[str, ReviewState]:
    """The state of every id that checked decisions (in log order) mention; undo cancels the latest in force."""
    folded = Fold()
    for d in decisions:
        folded.apply(d["id"], d["action"], d.get("text"), d.get("tags"))
    return folded.states


# ---------------------------------------------------------------- the log file

# A line exactly as append_decision/append_decisions write an accept, reject or
# undo: folded without json.loads, which is most of the cost of opening a long
# log. Only lines json.loads would take match (no escapes, no control characters).
_PLAIN = re.compile(rb'\{"id":"([^"\\\x00-\x1f]+)","action":"(accept|reject|undo)",'
                    rb'"at":"[^"\\\x00-\x1f]*","by":"[^"\\\x00-\x1f]*"(?:,"did":"[0-9a-f]*")?\}\r?')
_PLAIN_LINES = re.compile(rb"^" + _PLAIN.pattern + rb"\n", re.MULTILINE)
_ACTION = {a.encode(): a for a in ACTIONS}
_READ_BLOCK = 8 << 20


class DecisionLog(Fold):
    """The log as one reviewer's session sees it: folded, and followed as it grows.

    Other processes may append to the same file; ``poll`` folds in whatever
    whole lines appeared since the last look, so the latest decision for an id
    wins in every open session.
    """

    def __init__(self, path: str | os.PathLike, by: str | None = None):
        super().__init__()
        self.path = Path(path)
        self.by = by
        self.offset = 0  # bytes of the log folded so far
        self.lines = 0
        self.set_aside: Path | None = None
        self.last_touched: list[str] = []  # ids the latest poll folded in

    # -- reading

    def open(self) -> None:
        """Repair a cut last line, then fold the whole log (RecordError names a bad line)."""
        self._refuse_folder()
        self.set_aside = repair(self.path)
        self.poll()

    def _refuse_folder(self) -> None:
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; pass a decisions .jsonl file with --decisions")

    def poll(self, final: bool = False) -> list[str]:
        """Fold whole lines appended since the last call; return the ids they touched.

        A last line without its newline is still being written and waits for
        the next poll, unless ``final``: then it is folded too, or is the
        RecordError naming it (a reader that may not repair the log, like build).
        """
        self.last_touched = touched = []
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return touched
        self._refuse_folder()
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
            if final and self.offset < size:
                fh.seek(self.offset)
                tail = fh.read(size - self.offset) + b"\n"
                self._fold_block(tail, len(tail), touched)
                self.offset = size
        return touched

    def _fold_block(self, data: bytes, end: int, touched: list[str]) -> None:
        """Fold the whole lines of data[:end]: plain lines straight from the regex, any other through json."""
        if self.offset == 0:
            reject_bom(data, self.path)
        # A plain line is taken as it is, so it must be UTF-8: checked once for the
        # block, else line by line (one that is not goes to the JSON path, which names it).
        utf8 = data.isascii() or _utf8(data[:end])
        lineno, at = self.lines, 0
        for m in _PLAIN_LINES.finditer(data, 0, end):
            if not utf8 and not data[m.start():m.end()].isascii():
                continue
            if m.start() > at:
                lineno = self._fold_json(data[at:m.start()], lineno, touched)
            rid = m.group(1).decode("utf-8")
            self.apply(rid, _ACTION[m.group(2)])
            touched.append(rid)
            lineno += 1
            at = m.end()
        self.lines = self._fold_json(data[at:end], lineno, touched)

    def _fold_json(self, lines: bytes, lineno: int, touched: list[str]) -> int:
        """Fold whole lines that are not plain, each parsed and checked; return the number of the last."""
        for line in lines.split(b"\n")[:-1]:
            lineno += 1
            obj = parse_line(line, self.path, lineno)
            if obj is not None:
                d = check_decision(obj, self.path, lineno)
                self.apply(d["id"], d["action"], d.get("text"), d.get("tags"))
                touched.append(d["id"])
        return lineno

    def read_settled(self) -> str | None:
        """Fold the whole log as a reader that may not repair it (build, agreement); return a note or None.

        Every line is checked, as ``load_states`` does, except a cut last line
        (no newline, not a whole JSON object: a crash inside a write): it is
        skipped and named in the note. A reviewer's crash costs the team's build
        only that keystroke; ``tenny review --as NAME`` sets the bytes aside.
        """
        self.poll()
        size = self.path.stat().st_size if self.path.exists() else 0
        if self.offset >= size:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            tail = fh.read(size - self.offset)
        try:
            whole = isinstance(json.loads(tail.decode("utf-8")), dict)
        except (UnicodeDecodeError, ValueError):
            whole = False
        if whole:
            self.poll(final=True)  # only its newline is missing: a decision like any other
            return None
        return (f"{self.path}:{self.lines + 1}: a cut last line ({len(tail)} bytes, a crash inside a write) "
                f"was skipped; every other decision counts. `tenny review` sets it aside when that reviewer reopens")

    # -- writing

    def append(self, rid: str, action: str, *, text: str | None = None, tags: list[str] | None = None) -> dict:
        """Append one decision (fsynced), then fold it and anything others wrote before it."""
        row = append_decision(self.path, rid, action, text=text, tags=tags, by=self.by)
        self.poll()
        return row

    def undo_last(self) -> str | None:
        """Undo the latest decision in force; None when there is none."""
        self.poll()
        rid = next(self.in_force(), None)
        if rid is not None:
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


def load_states(path: str | os.PathLike) -> Mapping[str, ReviewState]:
    """Every id's state in the log at ``path`` (none if there is no log), read strictly.

    Every line is checked and a bad one, a cut last line included, is a
    RecordError naming the file, line and field. Unlike a review session this
    never repairs the file: build is a DVC stage and must not change its deps.
    """
    log = DecisionLog(path)
    log.poll(final=True)
    return log.states


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
    row["did"] = new_decision_id()
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
    tail = f',"action":"{action}","at":"{at}","by":{who},"did":"'
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        chunk: list[str] = []
        for rid in rids:
            chunk.append('{"id":' + json.dumps(rid, ensure_ascii=False) + tail + new_decision_id() + '"}\n')
            if len(chunk) >= batch:
                n += _write_all(fd, "".join(chunk).encode("utf-8"))
                chunk = []
        if chunk:
            n += _write_all(fd, "".join(chunk).encode("utf-8"))
    finally:
        os.close(fd)
    return n


def new_decision_id() -> str:
    """A decision's own id (64 random bits): two machines appending as one reviewer never write
    the same line, so a git merge of their logs (``merge=union``, .gitattributes) keeps every decision."""
    return secrets.token_hex(8)


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    return data.count(b"\n")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


# ---------------------------------------------------------------- reviewers

PRESCORE_NAME = "prescore"  # data/reviews/prescore.jsonl holds the judge's scores, not a person's log
LEGACY_NAME = "decisions"  # data/reviews/decisions.jsonl: the one log before team review, read as a reviewer


def reviewer_slug(name: str) -> str:
    """The file-name form of a reviewer's name: letters, digits, ``.``, ``_`` and ``-``; any other run is ``_``.

    ``Zoë Smith`` → ``Zoë_Smith``. The full name still goes in each decision's ``by``.
    """
    norm = unicodedata.normalize("NFC", name.strip())
    slug = re.sub(r"[^\w.-]+", "_", norm).strip("._")[:80]
    if not slug:
        raise UserError(f"reviewer name {name!r}: needs a letter or digit (pass --as NAME)")
    if slug == PRESCORE_NAME:
        raise UserError(f"reviewer name {name!r}: {PRESCORE_NAME}.jsonl holds the judge's scores; choose another --as NAME")
    return slug


def reviewer_log(folder: str | os.PathLike, name: str) -> Path:
    """``data/reviews/<name>.jsonl``: one reviewer's own log (one writer per file: no locks, clean merges)."""
    return Path(folder) / f"{reviewer_slug(name)}.jsonl"


def reviewer_logs(folder: str | os.PathLike) -> dict[str, Path]:
    """Every reviewer's log in ``folder``, by name (the file's stem), sorted.

    Not logs: prescore.jsonl and the ``*.torn-*`` files a repair set aside.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.glob("*.jsonl")):
        if path.stem == PRESCORE_NAME or ".torn-" in path.name or not path.is_file():
            continue
        out[path.stem] = path
    return out


def default_reviewer() -> str:
    """Who is reviewing when ``--as`` is not given: $TENNY_REVIEWER, git's user.name, then the login."""
    name = os.environ.get("TENNY_REVIEWER")
    if name and name.strip():
        return name.strip()
    try:
        out = subprocess.run(["git", "config", "user.name"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("USER") or _user()
