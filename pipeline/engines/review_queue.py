"""A fast, read-only index over a records file for the review screen.

A million samples must open in under a second and stay under a few hundred MB,
so nothing here parses the whole file. Like Textualize/toolong, the file is
scanned for line breaks in fixed-size batches (numpy does the byte work) and
only the lines on screen are fetched (``os.pread``) and parsed.

Per sample the index keeps four numbers: where its line starts and ends, its
line number, and a 64-bit key for its id (about 30 bytes; 30 MB a million). Records written by ``records.dumps`` start with
``{"id":"<16 hex>"`` so the key is read straight from the bytes, vectorized;
any other line is parsed once with ``json`` to find its id. Status filters are
then numpy operations over the key array, never a Python loop per sample.

Every parse of a shown line goes through ``records.check_record``: a bad line
names its file and line, as everywhere else.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.decisions import DecisionLog, ReviewState, append_decisions, reviewer_logs
from pipeline.core.team import (  # noqa: F401 (re-exported: the screen and tests name them here)
    ACCEPTED,
    EDITED,
    PENDING,
    REJECTED,
    STATUS_CODES,
    TAGGED,
    decided_arrays,
    id_key,
    id_keys,
    lookup,
    state_code,
)
from pipeline.core.errors import UserError
from pipeline.core.records import RecordError, body_kind, check_record, parse_line, reject_bom

CHUNK = 8 << 20  # bytes scanned per batch: large enough for numpy, small for memory
_PREFIX = np.frombuffer(b'{"id":"', dtype=np.uint8)
_HEX_ID = re.compile(r"[0-9a-f]{16}")
_HEAD = np.arange(24, dtype=np.int64)
_NIBBLE = np.full(256, 255, dtype=np.uint8)  # hex digit → value; anything else → 255
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)

@dataclass
class Sample:
    """One parsed record as the screen shows it."""

    pos: int  # 0-based position in the queue
    line: int  # 1-based line number in the file
    record: dict
    nbytes: int

    @property
    def id(self) -> str:
        return self.record["id"]

    @property
    def kind(self) -> str:
        return body_kind(self.record)


def body_strings(record: dict) -> list[str]:
    """The strings a person reads in a record (what search looks in)."""
    kind = body_kind(record)
    if kind == "text":
        return [record["text"]]
    if kind == "pair":
        return [record["prompt"], record["completion"]]
    return [m["content"] for m in record["messages"]]


# ---------------------------------------------------------------- line index


class LineIndex:
    """Starts, ends and id keys of the non-blank lines of a JSONL file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path}: no such records file (run `tenny dedupe` first, or pass RECORDS)")
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a folder; pass a .jsonl records file")
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size
        # Arrays grow by doubling while a scan runs in a worker thread; readers
        # take the array reference first, then index below ``n`` (old arrays
        # stay valid for what they held).
        self.n = 0
        self.starts = np.zeros(1024, dtype=np.int64)
        self.ends = np.zeros(1024, dtype=np.int64)
        self.keys = np.zeros(1024, dtype=np.uint64)
        self.lines = np.zeros(1024, dtype=np.int64)  # 1-based line numbers
        self.scanned = 0  # bytes scanned so far
        self.done = False
        self.slow_ids: dict[int, str] = {}  # line → id, for ids not in tenny's 16-hex form

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __len__(self) -> int:
        return self.n

    def scan(self, progress: Callable[[int, int], None] | None = None) -> None:
        """Index the whole file; ``progress(bytes_done, bytes_total)`` after each batch."""
        for _ in self.batches():
            if progress:
                progress(self.scanned, self.size)

    def batches(self) -> Iterator[tuple[int, int]]:
        """Index the file batch by batch, yielding the (start, stop) positions each added."""
        pos, line_base, chunk = 0, 1, CHUNK
        buf = bytearray(chunk)
        while pos < self.size:
            want = min(chunk, self.size - pos)
            if len(buf) < want:
                buf = bytearray(want)
            got = _pread_into(self._fd, memoryview(buf)[:want], pos)
            if got == 0:
                break  # the file shrank under us; index what there was
            a = np.frombuffer(buf, dtype=np.uint8, count=got)
            nl = np.flatnonzero(a == 10)
            at_eof = pos + got >= self.size
            if len(nl) == 0 and not at_eof:
                chunk *= 2  # one line longer than a batch: read a bigger batch
                continue
            if at_eof and (len(nl) == 0 or nl[-1] != got - 1):
                nl = np.append(nl, got)  # a last line with no newline
            s = np.empty(len(nl), dtype=np.int64)
            s[0] = 0
            s[1:] = nl[:-1] + 1
            e = nl.astype(np.int64)
            ks, keep = self._keys(a, s, e, pos, line_base)
            first = self.n
            self._extend(s[keep] + pos, e[keep] + pos, ks[keep], np.flatnonzero(keep) + line_base)
            line_base += len(nl)
            pos += int(nl[-1]) + 1
            self.scanned = min(pos, self.size)
            yield first, self.n
        self.done = True

    def _extend(self, s, e, k, ln) -> None:
        n, m = self.n, len(s)
        if n + m > len(self.starts):
            cap = max(2 * len(self.starts), n + m)
            for name in ("starts", "ends", "keys", "lines"):
                old = getattr(self, name)
                new = np.zeros(cap, dtype=old.dtype)
                new[:n] = old[:n]
                setattr(self, name, new)
        self.starts[n:n + m] = s
        self.ends[n:n + m] = e
        self.keys[n:n + m] = k
        self.lines[n:n + m] = ln
        self.n = n + m

    def _keys(self, a: np.ndarray, s: np.ndarray, e: np.ndarray, base: int, line_base: int):
        """Id keys of the lines [s, e) of one batch, and which lines are not blank."""
        n = len(s)
        keys = np.zeros(n, dtype=np.uint64)
        length = e - s
        # tenny's own form: {"id":"<16 lowercase hex>", … } — read without parsing
        fast = length >= 26
        idx = np.where(fast, s, 0)[:, None] + _HEAD
        np.minimum(idx, len(a) - 1, out=idx)
        head = a[idx]
        fast &= (head[:, :7] == _PREFIX).all(axis=1) & (head[:, 23] == 34)
        nib = _NIBBLE[head[:, 7:23]]
        fast &= (nib < 16).all(axis=1)
        # a cut line (a crash mid-write) would pass the head test; its tail shows it
        last = a[np.maximum(e - 1, 0)]
        last = np.where((last == 13) & (e - 2 >= s), a[np.maximum(e - 2, 0)], last)
        fast &= last == 125  # '}'
        packed = np.ascontiguousarray(nib[:, 0::2] << 4 | nib[:, 1::2])
        keys[:] = packed.view(">u8")[:, 0]
        keys[~fast] = 0
        keep = fast.copy()
        for i in np.flatnonzero(~fast):
            raw = bytes(a[s[i]:e[i]])
            stripped = raw.strip()
            if not stripped:
                continue
            lineno = line_base + int(i)
            if lineno == 1:
                reject_bom(raw, self.path)
            obj = _parse(stripped, self.path, lineno)
            check_record(obj, self.path, lineno)
            keys[i] = id_key(obj["id"])
            if not _HEX_ID.fullmatch(obj["id"]):  # a key that is not the id itself: keep the id
                self.slow_ids[lineno] = obj["id"]
            keep[i] = True
        return keys, keep

    def id_of(self, pos: int) -> str:
        """The id at ``pos`` without parsing its line."""
        rid = self.slow_ids.get(int(self.lines[pos])) if self.slow_ids else None
        return rid if rid is not None else format(int(self.keys[pos]), "016x")

    def raw(self, pos: int, limit: int | None = None) -> bytes:
        start, end = int(self.starts[pos]), int(self.ends[pos])
        if limit is not None:
            end = min(end, start + limit)
        return os.pread(self._fd, end - start, start)

    def sample(self, pos: int) -> Sample:
        raw = self.raw(pos)
        lineno = int(self.lines[pos])
        obj = _parse(raw.strip(), self.path, lineno)
        check_record(obj, self.path, lineno)
        return Sample(pos=pos, line=lineno, record=obj, nbytes=len(raw))


def _pread_into(fd: int, view: memoryview, pos: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], pos)
    data = os.pread(fd, len(view), pos)
    view[: len(data)] = data
    return len(data)


def _parse(raw: bytes, path: Path, lineno: int) -> dict:
    obj = parse_line(raw, path, lineno)
    if obj is None:
        raise RecordError(path, lineno, None, "blank line where a record was indexed")
    return obj


# ---------------------------------------------------------------- filters


# Team filters: mine (I decided), undecided (nobody has), needs-more (someone has, fewer than
# review.overlap and no adjudicator), disagreements (one reviewer accepted, another rejected).
TEAM_FILTERS = ("mine", "undecided", "needs-more", "disagreements")


@dataclass(frozen=True)
class Filter:
    """Which samples the queue shows: all, a status, edited, a tag, or a slot value."""

    kind: str = "all"  # all | pending | accepted | rejected | edited | tag | slot | TEAM_FILTERS
    name: str = ""  # tag name, or slot key
    value: str = ""  # slot value

    @property
    def label(self) -> str:
        if self.kind == "tag":
            return f"tag:{self.name}"
        if self.kind == "slot":
            return f"{self.name}={self.value}"
        return self.kind

    @classmethod
    def parse(cls, spec: str) -> "Filter":
        """``all``, ``pending``, ``accepted``, ``rejected``, ``edited``, ``tag:NAME`` or ``KEY=VALUE``."""
        spec = spec.strip()
        if spec in ("", "all"):
            return cls()
        if spec in ("pending", "accepted", "rejected", "edited") + TEAM_FILTERS:
            return cls(spec)
        if spec.startswith("tag:") and spec[4:].strip():
            return cls("tag", spec[4:].strip())
        if "=" in spec:
            key, _, value = spec.partition("=")
            if key.strip():
                return cls("slot", key.strip(), value.strip())
        raise ValueError(f"unknown filter {spec!r}: use all, pending, accepted, rejected, edited, mine, undecided, "
                         "needs-more, disagreements, tag:NAME or KEY=VALUE")

    def wants_state(self, code: int, state: ReviewState | None) -> bool:
        if self.kind == "all":
            return True
        if self.kind in STATUS_CODES:
            return (code & 3) == STATUS_CODES[self.kind]
        if self.kind == "edited":
            return bool(code & EDITED)
        if self.kind == "tag":
            return state is not None and self.name in state.tags
        raise AssertionError(self.kind)


def meta_value(meta: dict | None, key: str):
    """A slot value from meta: ``meta[key]`` or inside a dict such as ``meta.slots``."""
    if not isinstance(meta, dict):
        return None
    if key in meta:
        return meta[key]
    for sub in ("slots", "slot_values", "vars", "variables"):
        inner = meta.get(sub)
        if isinstance(inner, dict) and key in inner:
            return inner[key]
    return None


# ---------------------------------------------------------------- the queue


class ReviewQueue:
    """The records file, its review log, and what a person sees of them.

    Threads: ``opening`` may run in a worker thread while the screen
    reads what is indexed so far; everything else runs on the screen's loop.
    Filters, search and bulk actions want the whole index (``ready``).
    """

    def __init__(self, records: str | os.PathLike, decisions: str | os.PathLike, by: str | None = None, *,
                 overlap: int = 1, adjudicators: Iterable[str] = (), me: str | None = None,
                 team_dir: str | os.PathLike | None = None):
        self.index = LineIndex(records)
        self.log = DecisionLog(decisions, by=by)
        self._status = np.zeros(1024, dtype=np.uint8)
        self.filter = Filter()
        self.mask: np.ndarray | None = None  # None: every sample
        self._decided_keys = np.zeros(0, dtype=np.uint64)
        self._decided_codes = np.zeros(0, dtype=np.uint8)
        self._touched_during_index: set[str] = set()
        # The team: every other log in the folder of ours, followed as it grows. Per sample,
        # one status byte per other reviewer (columns in ``others`` order).
        self.overlap = overlap
        self.adjudicators = set(adjudicators)
        self.me = me if me is not None else self.log.path.stem
        self.team_dir = Path(team_dir) if team_dir is not None else None  # None: one log, no team
        self.others: dict[str, DecisionLog] = {}
        self._ostat = np.zeros((1024, 0), dtype=np.uint8)
        # Derived from _ostat once per change, so a key press costs a pass over bytes, not over columns:
        # how many other people decided each sample, and whether an adjudicator did.
        self._ocount = np.zeros(1024, dtype=np.uint8)
        self._oset = np.zeros(1024, dtype=bool)
        self._oarrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # each other log's decided keys and codes
        self._lock = threading.Lock()  # the opening thread and the screen's loop both code batches
        # The judge's sort (key s): positions in the order shown, and each position's place in it.
        self.order: np.ndarray | None = None
        self._rank: np.ndarray | None = None
        self.sort_label = "file order"
        self._team_counts = None  # (log offsets it was figured at, done, progress per reviewer)
        self.team_ready = team_dir is None  # the other logs are folded (opening folds them in a thread)
        self.team_error: Exception | None = None

    # -- opening

    def open_log(self, team: bool = True) -> None:
        """Repair and fold the review log, then read the team's (raises RecordError naming a bad line)."""
        self.log.open()
        self._rebuild_decided()
        if team:
            self._load_team()

    def _load_team(self) -> None:
        """Fold the other reviewers' logs (``opening`` runs this in a thread once the first sample shows)."""
        try:
            self._find_others(initial=True)
        except Exception as err:  # a teammate's bad line: said on the screen; my review goes on
            self.team_error = err
        finally:
            self.team_ready = True

    def _find_others(self, initial: bool = False) -> list[str]:
        """Fold the logs of reviewers who appeared in the folder since the last look; return their names."""
        found: dict[str, DecisionLog] = {}
        if self.team_dir is None or not (initial or self.team_ready):
            return []
        for name, path in reviewer_logs(self.team_dir).items():
            if path.resolve() == self.log.path.resolve() or name in self.others:
                continue
            log = DecisionLog(path)
            log.read_settled()  # another reviewer's cut last line is theirs to repair: skipped here
            found[name] = log
        if found:
            arrays = {name: decided_arrays(log) for name, log in found.items()}
            # Columns and the others' list change together, under the lock the indexing thread codes
            # batches with: every position is coded once for each reviewer, here or by _code.
            # The screen's thread reads these without the lock: everything is built aside and
            # swapped in with the list of names last, so it never sees a name without its column.
            with self._lock:
                others = {**self.others, **found}
                self._oarrays.update(arrays)
                cols = np.zeros((self._ostat.shape[0], len(others)), dtype=np.uint8)
                cols[:, : self._ostat.shape[1]] = self._ostat
                n = len(self)
                for name, (k, c) in arrays.items():
                    cols[:n, list(others).index(name)] = lookup(k, c, self.index.keys[:n])
                count, settled = self._derive(cols, list(others))
                self._ostat, self._ocount, self._oset = cols, count, settled
                self.others = others
                self._team_counts = None
        return list(found)

    def _rebuild_decided(self) -> None:
        self._decided_keys, self._decided_codes = decided_arrays(self.log)

    def opening(self) -> Iterator[int | None]:
        """Open the log and the index together; after each batch, yield where to resume (None: not known yet).

        The log is folded in a thread while this one indexes the records: the
        fold is Python and regex work, the index mostly numpy (which releases
        the GIL), so a long log and a big file take about the longer of the two
        rather than their sum. Errors from either surface here.
        """
        failed: list[BaseException] = []

        def fold() -> None:
            try:
                self.open_log(team=False)
            except BaseException as err:  # handed to the indexing thread below
                failed.append(err)
                return
            # The team's logs next, while the first sample is already up: the resume point counts
            # my own log at first, and records the team has done leave my queue once these are read.
            threading.Thread(target=self._load_team, name="tenny-review-team", daemon=True).start()

        log_thread = threading.Thread(target=fold, name="tenny-review-log", daemon=True)
        log_thread.start()
        coded = 0  # positions whose status reflects the log
        for _start, stop in self.index.batches():
            self._grow_status(stop)
            if log_thread.is_alive():
                yield None
                continue
            if failed:
                raise failed[0]
            self._code(coded, stop)
            coded = stop
            yield self.first_pending()
        log_thread.join()
        if failed:
            raise failed[0]
        n = len(self)
        self._code(coded, n)
        yield self.first_pending()

    def _code(self, start: int, stop: int) -> None:
        """Status bytes (ours and each other reviewer's) of positions [start, stop) from the folded logs."""
        keys = self.index.keys[start:stop]
        self._status[start:stop] = self._codes_for(keys)
        with self._lock:
            for j, name in enumerate(self.others):
                k, c = self._oarrays[name]
                self._ostat[start:stop, j] = lookup(k, c, keys)
            self._recount(start, stop)

    def _grow_status(self, stop: int) -> None:
        if stop > len(self._status):
            grown = np.zeros(max(2 * len(self._status), stop), dtype=np.uint8)
            grown[: len(self._status)] = self._status
            self._status = grown
        if stop > self._ostat.shape[0]:
            with self._lock:
                cap = max(2 * self._ostat.shape[0], stop)
                grown = np.zeros((cap, self._ostat.shape[1]), dtype=np.uint8)
                grown[: self._ostat.shape[0]] = self._ostat
                count, settled = np.zeros(cap, np.uint8), np.zeros(cap, bool)
                count[: len(self._ocount)], settled[: len(self._oset)] = self._ocount, self._oset
                self._ostat, self._ocount, self._oset = grown, count, settled

    def open(self) -> None:
        """Everything at once (tests, tools): log, then the whole index."""
        self.open_log()
        self.index.scan()
        self._grow_status(len(self))
        self._code(0, len(self))

    @property
    def ready(self) -> bool:
        return self.index.done

    def _codes_for(self, keys: np.ndarray) -> np.ndarray:
        dk = self._decided_keys
        if not len(dk) or not len(keys):
            return np.zeros(len(keys), dtype=np.uint8)
        at = np.minimum(np.searchsorted(dk, keys), len(dk) - 1)
        return np.where(dk[at] == keys, self._decided_codes[at], 0).astype(np.uint8)

    def close(self) -> None:
        self.index.close()

    def __len__(self) -> int:
        return self.index.n

    @property
    def keys(self) -> np.ndarray:
        return self.index.keys[: self.index.n]

    @property
    def status(self) -> np.ndarray:
        return self._status[: self.index.n]

    # -- reading

    def sample(self, pos: int) -> Sample:
        return self.index.sample(pos)

    def state(self, rid: str) -> ReviewState | None:
        return self.log.state(rid)

    def set_order(self, order: np.ndarray | None, label: str = "file order") -> None:
        """Show the samples in ``order`` (positions; None: file order). Wants the whole index."""
        self.order, self.sort_label = order, label
        if order is None:
            self._rank = None
        else:
            self._rank = np.empty(len(order), np.int64)
            self._rank[order] = np.arange(len(order))

    def _after(self, pos: int, step: int) -> np.ndarray:
        """Positions after (step 1) or before (step -1) ``pos`` in the shown order, nearest first."""
        r = int(self._rank[pos]) if pos >= 0 else -1
        return self.order[r + 1:] if step > 0 else self.order[:max(r, 0)][::-1]

    def _for_me_at(self, positions: np.ndarray) -> np.ndarray:
        mine = (self._status[positions] & 3) == PENDING
        count = self._ocount[positions].astype(np.int16)
        settled = self._oset[positions]
        if self.me not in self.adjudicators:
            count = count + ~mine
        return mine & (count < self.overlap) & ~settled

    def first_pending(self, after: int = -1) -> int | None:
        """The first sample after ``after`` still in my queue: not decided by me and not done."""
        if self.order is not None and len(self.order) == len(self):
            seq = self._after(after, 1)
            for i in range(0, len(seq), 1 << 14):
                block = seq[i:i + (1 << 14)]
                hit = np.flatnonzero(self._for_me_at(block))
                if len(hit):
                    return int(block[hit[0]])
            return None
        step, at, n = 1 << 14, after + 1, len(self)
        while at < n:  # in blocks: the next one is usually close, and 1M samples cost ~ms each
            hit = self._first(self.for_me(at, min(n, at + step)), at)
            if hit is not None:
                return hit
            at += step
            step = min(step * 4, 1 << 20)
        return None

    # -- the team

    @property
    def ostat(self) -> np.ndarray:
        return self._ostat[: len(self)]

    def _people_cols(self) -> list[int]:
        return [j for j, name in enumerate(self.others) if name not in self.adjudicators]

    def _derive(self, ostat: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(other people who decided, an adjudicator decided) per row of ``ostat`` (columns: ``names``)."""
        o = ostat & 3
        people = [j for j, name in enumerate(names) if name not in self.adjudicators]
        adj = [j for j in range(len(names)) if j not in people]
        count = (o[:, people] != 0).sum(axis=1).astype(np.uint8) if people else np.zeros(len(o), np.uint8)
        settled = (o[:, adj] != 0).any(axis=1) if adj else np.zeros(len(o), bool)
        return count, settled

    def _recount(self, at, stop: int | None = None) -> None:
        """Refresh the derived counts at positions [at, stop), or at the positions array ``at``."""
        where = slice(at, stop) if stop is not None else at
        self._ocount[where], self._oset[where] = self._derive(self._ostat[where], list(self.others))

    def deciders(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(how many people decided, whether an adjudicator did) per sample in [start, stop)."""
        stop = len(self) if stop is None else stop
        mine = (self._status[start:stop] & 3) != PENDING
        count = self._ocount[start:stop].astype(np.int16)
        settled = self._oset[start:stop]
        if self.me in self.adjudicators:
            settled = settled | mine
        else:
            count = count + mine
        return count, settled

    def done(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples that left everyone's queue: ``overlap`` people decided them, or an adjudicator did."""
        count, settled = self.deciders(start, stop)
        return (count >= self.overlap) | settled

    def for_me(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """My queue: samples I have not decided that are not done."""
        stop = len(self) if stop is None else stop
        return ((self._status[start:stop] & 3) == PENDING) & ~self.done(start, stop)

    def disagreements(self) -> np.ndarray:
        o = self.ostat & 3
        mine = self.status & 3
        people = self._people_cols()
        cols = [o[:, j] for j in people] + ([mine] if self.me not in self.adjudicators else [])
        if len(cols) < 2:
            return np.zeros(len(self), bool)
        m = np.stack(cols, axis=1)
        return (m == ACCEPTED).any(axis=1) & (m == REJECTED).any(axis=1)

    def team_decisions(self, rid: str) -> dict[str, ReviewState]:
        """Each reviewer's state for ``rid`` (me first), for the side-by-side view."""
        out = {}
        mine = self.log.state(rid)
        if mine is not None and mine.status != "pending":
            out[self.me] = mine
        for name, log in self.others.items():
            state = log.state(rid)
            if state is not None and state.status != "pending":
                out[name] = state
        return out

    def progress(self) -> dict[str, int]:
        """Decided samples per other reviewer (in this file), and how many are done."""
        out = {name: int(np.count_nonzero(self.ostat[:, j] & 3)) for j, name in enumerate(self.others)}
        return out

    def sync_team(self) -> list[str]:
        """Fold what other reviewers appended (and logs that appeared); return the names that changed."""
        if not self.team_ready:
            return []
        changed = self._find_others()
        for j, (name, log) in enumerate(self.others.items()):
            try:
                size = log.path.stat().st_size
            except FileNotFoundError:
                continue
            if size == log.offset:
                continue  # the cheap check most ticks end at: nothing appended
            touched = log.poll()
            if not touched:
                continue
            changed.append(name)
            if len(touched) > 256:
                k, c = self._oarrays[name] = decided_arrays(log)
                self._ostat[: len(self), j] = lookup(k, c, self.keys)
                self._recount(0, len(self))
            else:
                keys = self.keys
                for rid in set(touched):
                    at = np.flatnonzero(keys == np.uint64(id_key(rid)))
                    self._ostat[at, j] = state_code(log.state(rid))
                    self._recount(at)
        if changed and self.mask is not None and self.filter.kind != "slot":
            self.mask = self._state_mask(self.filter)
        return changed

    @staticmethod
    def _first(mask: np.ndarray, offset: int) -> int | None:
        if not len(mask):
            return None
        i = int(mask.argmax())
        return offset + i if mask[i] else None

    def counts(self) -> dict[str, int]:
        status = self.status
        st = status & 3
        accepted = int(np.count_nonzero(st == ACCEPTED))
        rejected = int(np.count_nonzero(st == REJECTED))
        out = {"total": len(self), "accepted": accepted, "rejected": rejected,
               "reviewed": accepted + rejected, "edited": int(np.count_nonzero(status & EDITED))}
        if self.others:
            # a pass over every sample per reviewer: figured once per change, not once per redraw
            key = (self.log.offset, tuple(log.offset for log in self.others.values()), len(self))
            if self._team_counts is None or self._team_counts[0] != key:
                self._team_counts = (key, int(np.count_nonzero(self.done())), self.progress())
            out["done"], out["team"] = self._team_counts[1], self._team_counts[2]
        return out

    # -- the filter

    def visible(self, pos: int) -> bool:
        return self.mask is None or bool(self.mask[pos])

    def set_filter(self, flt: Filter, mask: np.ndarray | None = None) -> None:
        """Apply a filter (wants the whole index); a slot filter passes ``slot_mask``'s result."""
        self.filter = flt
        if flt.kind == "all":
            self.mask = None
        elif flt.kind == "slot":
            assert mask is not None
            self.mask = mask
        else:
            self.mask = self._state_mask(flt)

    def _state_mask(self, flt: Filter) -> np.ndarray:
        if flt.kind == "pending":
            return self.for_me()
        if flt.kind == "mine":
            return (self.status & 3) != PENDING
        if flt.kind in ("undecided", "needs-more"):
            count, settled = self.deciders()
            if flt.kind == "undecided":
                return (count == 0) & ~settled
            return (count > 0) & (count < self.overlap) & ~settled
        if flt.kind == "disagreements":
            return self.disagreements()
        if flt.kind in STATUS_CODES:
            return (self.status & 3) == STATUS_CODES[flt.kind]
        if flt.kind == "edited":
            return (self.status & EDITED) != 0
        keys = [id_key(rid) for rid, tags in self.log.tags.items() if flt.name in tags]
        if not keys:
            return np.zeros(len(self), dtype=bool)
        return np.isin(self.keys, np.array(keys, dtype=np.uint64))

    def slot_mask(self, key: str, value: str, cancelled: Callable[[], bool] = lambda: False,
                  progress: Callable[[int, int], None] | None = None) -> np.ndarray | None:
        """Samples whose meta has ``key`` == ``value`` (compared as text); None if cancelled.

        The value's JSON form must appear in the raw line, so a byte search
        picks candidates and only those are parsed.
        """
        needles = [json.dumps(value, ensure_ascii=False).encode("utf-8")]
        if value and not value.isascii():
            needles.append(json.dumps(value).encode("ascii"))  # writers that \u-escape
        try:
            json.loads(value)
            needles.append(value.encode("utf-8"))  # a number or boolean is written bare
        except ValueError:
            pass
        mask = np.zeros(len(self), dtype=bool)
        for positions in self._candidates(needles, False, cancelled, progress):
            for p in positions:
                try:
                    obj = json.loads(self.index.raw(int(p)))
                except ValueError:
                    continue
                got = meta_value(obj.get("meta"), key)
                if got is not None and (got if isinstance(got, str) else json.dumps(got, ensure_ascii=False)) == value:
                    mask[p] = True
        if cancelled():
            return None
        return mask

    def _candidates(self, needles: list[bytes], fold_case: bool, cancelled, progress) -> Iterator[np.ndarray]:
        """Positions whose raw line holds one of ``needles``, batch by batch.

        Literal ``bytes.find`` (ASCII case folded by ``bytes.lower``) runs at
        memory speed; a regex engine over the same bytes is ten times slower.
        """
        idx = self.index
        starts = idx.starts[: len(self)]
        if fold_case:
            needles = [n.lower() for n in needles]
        pos = 0
        while pos < idx.size and not cancelled():
            data = os.pread(idx._fd, CHUNK, pos)
            if not data:
                break
            cut = data.rfind(b"\n") + 1 if pos + len(data) < idx.size else len(data)
            if cut == 0:
                cut = len(data)
            hay = data[:cut].lower() if fold_case else data
            ascii_only = hay.isascii()  # cheap (a fraction of one find), and true of most English chunks
            hits = []
            for needle in needles:
                if ascii_only and not needle.isascii():
                    continue  # cannot be there
                at = hay.find(needle, 0, cut)
                while at >= 0:
                    hits.append(at + pos)
                    # skip to the next line: one hit per line is enough (needles hold no raw newline)
                    nl = hay.find(b"\n", at)
                    if nl < 0:
                        break
                    at = hay.find(needle, nl + 1, cut)
            if hits:
                at = np.searchsorted(starts, np.array(hits, dtype=np.int64), side="right") - 1
                yield np.unique(at[at >= 0])
            pos += cut
            if progress:
                progress(min(pos, idx.size), idx.size)

    # -- moving

    def next_visible(self, pos: int, step: int = 1) -> int | None:
        """The next (step 1) or previous (step -1) sample the filter shows."""
        n = len(self)
        if self.order is not None and len(self.order) == n:
            seq = self._after(pos, step)
            if self.mask is not None:
                seq = seq[self.mask[seq]]
            return int(seq[0]) if len(seq) else None
        if step > 0:
            if pos + 1 >= n:
                return None
            if self.mask is None:
                return pos + 1
            return self._first(self.mask[pos + 1:], pos + 1)
        if pos <= 0:
            return None
        if self.mask is None:
            return pos - 1
        i = self._first(self.mask[:pos][::-1], 0)
        return None if i is None else pos - 1 - i

    def first_visible(self, prefer: int = 0) -> int | None:
        """The first shown sample at or after ``prefer`` (else the last before it)."""
        if not len(self):
            return None
        prefer = max(0, min(prefer, len(self) - 1))
        if self.visible(prefer):
            return prefer
        after = self.next_visible(prefer)
        return after if after is not None else self.next_visible(prefer, -1)

    def visible_count(self) -> int:
        return len(self) if self.mask is None else int(np.count_nonzero(self.mask))

    def visible_rank(self, pos: int) -> int:
        """1-based rank of ``pos`` among the shown samples."""
        if self.order is not None and len(self.order) == len(self):
            before = self.order[: int(self._rank[pos])]
            return len(before) + 1 if self.mask is None else int(np.count_nonzero(self.mask[before])) + 1
        return pos + 1 if self.mask is None else int(np.count_nonzero(self.mask[:pos])) + 1

    def visible_positions(self) -> np.ndarray:
        return np.arange(len(self)) if self.mask is None else np.flatnonzero(self.mask)

    def sort_by_scores(self, scores: np.ndarray, how: str) -> None:
        """Order by the judge's score per position (0: unscored, last): ``score`` (best first),
        ``uncertain`` (nearest the middle of 1-10 first), or ``file``."""
        if how == "file":
            self.set_order(None)
            return
        s = scores[: len(self)].astype(np.float64)
        key = -s if how == "score" else np.abs(s - 5.5)
        key[s == 0] = np.inf
        self.set_order(np.argsort(key, kind="stable"), "judge score" if how == "score" else "most uncertain first")

    # -- deciding

    def decide(self, sample: Sample, action: str, *, text: str | None = None, tags: list[str] | None = None) -> None:
        """Append one decision (durable on return) and update what the screen shows."""
        self.sync()
        self.log.append(sample.id, action, text=text, tags=tags)
        self._refresh_ids(self.log.last_touched)

    def undo_last(self) -> str | None:
        """Undo the latest decision in force in the log; return its id (None: nothing to undo)."""
        self.sync()
        rid = self.log.undo_last()
        self._refresh_ids(self.log.last_touched)
        return rid

    def sync(self) -> list[str]:
        """Fold decisions other processes appended since we last looked."""
        changed = self.log.poll()
        if changed:
            self._refresh_ids(changed)
        return changed

    def bulk(self, action: str, positions: np.ndarray) -> int:
        """Accept or reject every sample at ``positions`` (one line each in the log)."""
        self.sync()
        n = append_decisions(self.log.path, (self.index.id_of(int(p)) for p in positions), action, by=self.log.by)
        self.sync()
        return n

    def finish_index(self) -> None:
        """Call on the screen's loop once indexing ends: fold in decisions made meanwhile."""
        if self._touched_during_index:
            self._touched_during_index = set()
            self._refresh_ids(set(), full=True)

    def _refresh_ids(self, ids: Iterable[str], full: bool = False) -> None:
        ids = set(ids)
        if not self.index.done:
            # batches still being indexed were coded from the log as it was at open
            self._touched_during_index |= ids
        if full or len(ids) > 256:
            # many at once (a bulk action, another session's burst): one vectorized pass
            self._rebuild_decided()
            self._status[: len(self)] = self._codes_for(self.keys)
            if self.mask is not None and self.filter.kind != "slot":
                self.mask = self._state_mask(self.filter)
            return
        keys = self.keys
        kind = self.filter.kind
        for rid in ids:
            at = np.flatnonzero(keys == np.uint64(id_key(rid)))
            state = self.log.state(rid)
            code = state_code(state)
            self._status[at] = code
            if self.mask is None or kind == "slot":
                continue
            if kind == "pending":  # my queue: what I have not decided and is not done
                for p in at:
                    self.mask[p] = bool(self.for_me(int(p), int(p) + 1)[0])
            elif kind not in TEAM_FILTERS:
                self.mask[at] = self.filter.wants_state(code, state)
        if self.mask is not None and kind in TEAM_FILTERS and ids:
            self.mask = self._state_mask(self.filter)

    def position_of(self, rid: str) -> int | None:
        at = np.flatnonzero(self.keys == np.uint64(id_key(rid)))
        return int(at[0]) if len(at) else None

    # -- search

    def search(self, query: str, start: int, step: int = 1, cancelled: Callable[[], bool] = lambda: False,
               progress: Callable[[int, int], None] | None = None) -> int | None:
        """The next shown sample after ``start`` (wrapping) whose text matches ``query``.

        ``query`` is a case-insensitive substring, or a regex written ``/…/``
        (case-sensitive unless it says ``(?i)``). Raises ValueError for a bad regex.
        """
        matcher, prefilter = compile_query(query)
        if not len(self):
            return None
        edited = {id_key(rid) for rid, text in self.log.texts.items() if matcher(text)}
        if prefilter is not None:
            cands = list(self._candidates(prefilter, True, cancelled, progress))
            cand = np.unique(np.concatenate(cands)) if cands else np.zeros(0, dtype=np.int64)
            if edited:
                cand = np.union1d(cand, np.flatnonzero(np.isin(self.keys, np.array(list(edited), dtype=np.uint64))))
            if self.mask is not None:
                cand = cand[self.mask[cand]]
        else:
            cand = self.visible_positions()
        if step > 0:
            order = np.concatenate([cand[cand > start], cand[cand <= start]])
        else:
            order = np.concatenate([cand[cand < start][::-1], cand[cand >= start][::-1]])
        total = len(order)
        keys = self.keys
        for i, p in enumerate(order):
            if i % 4096 == 0:
                if cancelled():
                    return None
                if progress and prefilter is None:
                    progress(i, total)
            p = int(p)
            if edited and int(keys[p]) in edited:
                return p
            try:
                obj = json.loads(self.index.raw(p))
                strings = body_strings(obj)
            except (ValueError, KeyError, TypeError):
                continue
            if any(matcher(s) for s in strings):
                return p
        return None


def compile_query(query: str) -> tuple[Callable[[str], bool], list[bytes] | None]:
    """(matcher on text, byte needles one of which every matching raw JSON line holds, or None).

    A plain query matches when ``query.casefold()`` is in ``text.casefold()``.
    The prefilter looks at raw lines with ASCII-only case folding
    (``bytes.lower``), so it must also let through every line that could match
    only by a fuller fold: one holding a character whose casefold differs from
    it and shares a character with the query (``ß`` for ``strasse``, ``É`` for
    ``é``, ``K`` (Kelvin) for ``k``), or any ``\\u`` escape (a writer that
    escapes non-ASCII, or quotes a character another way). With none of those
    in a line, the matched text is the query itself, JSON-escaped as any writer
    does and lowered as ASCII, so one ``bytes.find`` finds it.
    """
    if len(query) >= 2 and query.startswith("/") and query.endswith("/"):
        rx = re.compile(query[1:-1])
        return (lambda s: rx.search(s) is not None), None
    needle = query.casefold()
    matcher = lambda s: needle in s.casefold()  # noqa: E731
    needles = [json.dumps(needle, ensure_ascii=False)[1:-1].encode("utf-8", "surrogatepass"), b"\\u"]
    if "/" in needle:
        needles.append(b"\\/")  # JSON lets a writer escape a slash
    sources = _fold_sources()
    others = {c for ch in set(needle) for c in sources.get(ch, ())}
    needles += [c.encode("utf-8") for c in sorted(others)]
    return matcher, needles


@functools.cache
def _fold_sources() -> dict[str, frozenset[str]]:
    """For each character, the non-ASCII characters whose casefold differs from them and holds it.

    Built once per process from Python's own casefold (about a third of a second).
    """
    out: dict[str, set[str]] = {}
    for cp in range(0x80, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        c = chr(cp)
        folded = c.casefold()
        if folded != c:
            for ch in set(folded):
                out.setdefault(ch, set()).add(c)
    return {ch: frozenset(cs) for ch, cs in out.items()}


# ---------------------------------------------------------------- near-twins


class DroppedIndex:
    """reports/dedupe_dropped.jsonl by ``matched_id``: the near-twins dropped in a sample's favour.

    The file can be as big as the records, so it is indexed like them: one
    pass over the bytes keeps, per row, the key of its ``matched_id``, its
    score and where the row lies, sorted by key and then best score first, so
    a sample with thousands of twins reads only the few it shows. Rows are
    parsed (``records.parse_line``) when shown. A bad row is an error naming
    the file and line, raised by ``scan`` or ``twins``: never a silent skip.
    """

    _MATCHED = re.compile(rb'"matched_id"\s*:\s*"((?:[^"\\]|\\.)*)"')
    _SCORE = re.compile(rb'"score"\s*:\s*(-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)')
    _FIX = "re-run `tenny dedupe` to rewrite the report"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.keys = np.zeros(0, dtype=np.uint64)
        self.starts = np.zeros(0, dtype=np.int64)
        self.ends = np.zeros(0, dtype=np.int64)
        self.lines = np.zeros(0, dtype=np.int64)
        self.done = False

    def scan(self, cancelled: Callable[[], bool] = lambda: False) -> None:
        """Index the file; raises UserError for an unreadable file, RecordError for a bad row."""
        keys, scores, starts, ends, lines = [], [], [], [], []
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise UserError(f"{self.path}: {err.strerror}; {self._FIX}") from None
        try:
            size, pos, lineno = os.fstat(fd).st_size, 0, 0
            while pos < size and not cancelled():
                data = os.pread(fd, CHUNK, pos)
                if not data:
                    break
                cut = data.rfind(b"\n") + 1 if pos + len(data) < size else len(data)
                if cut == 0:  # a row longer than a batch
                    data = os.pread(fd, size - pos, pos)
                    cut = data.find(b"\n") + 1 or len(data)
                at = 0
                while at < cut:
                    nl = data.find(b"\n", at, cut)
                    end = cut if nl < 0 else nl
                    lineno += 1
                    if data[at:end].strip():
                        keys.append(id_key(self._matched_id(data, at, end, lineno)))
                        score = self._SCORE.search(data, at, end)
                        scores.append(float(score.group(1)) if score else -np.inf)
                        starts.append(pos + at)
                        ends.append(pos + end)
                        lines.append(lineno)
                    at = end + 1
                pos += cut
        finally:
            os.close(fd)
        k = np.array(keys, dtype=np.uint64)
        order = np.lexsort((-np.array(scores, dtype=np.float64), k))  # by key, then best score first
        self.keys = k[order]
        self.starts, self.ends = np.array(starts, np.int64)[order], np.array(ends, np.int64)[order]
        self.lines = np.array(lines, np.int64)[order]
        self.done = True

    def _matched_id(self, data: bytes, at: int, end: int, lineno: int) -> str:
        m = self._MATCHED.search(data, at, end)
        if m is not None and b"\\" not in m.group(1):
            return m.group(1).decode("utf-8", "replace")
        # Escapes, an odd layout or a broken row: parse it, so a bad row is named as such.
        row = self._parse(data[at:end], lineno)
        rid = row.get("matched_id") if row is not None else None
        if not isinstance(rid, str):
            raise RecordError(self.path, lineno, "matched_id",
                              f"missing or not a string (each row names the kept sample it was dropped for); {self._FIX}")
        return rid

    def _parse(self, raw: bytes, lineno: int) -> dict | None:
        try:
            return parse_line(raw, self.path, lineno)
        except RecordError as err:
            raise RecordError(self.path, lineno, err.field, f"{err.problem}; {self._FIX}") from None

    def twins(self, rid: str, limit: int = 20) -> tuple[list[dict], int]:
        """The ``limit`` best-scored rows dropped in favour of ``rid``, and how many there are."""
        if not self.done or not len(self.keys):
            return [], 0
        k = np.uint64(id_key(rid))
        lo = int(np.searchsorted(self.keys, k, side="left"))
        hi = int(np.searchsorted(self.keys, k, side="right"))
        rows = []
        with open(self.path, "rb") as fh:
            for i in range(lo, hi):
                if len(rows) == limit:
                    break
                fh.seek(int(self.starts[i]))
                row = self._parse(fh.read(int(self.ends[i] - self.starts[i])), int(self.lines[i]))
                if row is not None and row.get("matched_id") == rid:  # not another id with the same key
                    rows.append(row)
        return rows, hi - lo


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate: ~4 bytes of UTF-8 per token for BPE vocabularies on English."""
    return (len(text.encode("utf-8", "surrogatepass")) + 3) // 4
