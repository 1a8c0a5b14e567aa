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
import hashlib
import json
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.decisions import DecisionLog, ReviewState, append_decisions
from pipeline.core.errors import UserError
from pipeline.core.records import RecordError, body_kind, check_record, parse_line, reject_bom

CHUNK = 8 << 20  # bytes scanned per batch: large enough for numpy, small for memory
_PREFIX = np.frombuffer(b'{"id":"', dtype=np.uint8)
_HEX_ID = re.compile(r"[0-9a-f]{16}")
_ALL_HEX = re.compile(r"[0-9a-f]*")
_HEAD = np.arange(24, dtype=np.int64)
_NIBBLE = np.full(256, 255, dtype=np.uint8)  # hex digit → value; anything else → 255
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)

# status codes in the per-sample status array
PENDING, ACCEPTED, REJECTED = 0, 1, 2
EDITED = 4
TAGGED = 8
STATUS_CODES = {"pending": PENDING, "accepted": ACCEPTED, "rejected": REJECTED}


def id_key(rid: str) -> int:
    """The 64-bit key of an id: the id itself when it is tenny's 16-hex form, else a hash."""
    if len(rid) == 16 and _HEX_ID.fullmatch(rid):
        return int(rid, 16)
    return int.from_bytes(hashlib.blake2b(rid.encode("utf-8"), digest_size=8).digest(), "big")


def id_keys(ids: list[str]) -> np.ndarray:
    """``id_key`` of many ids at once: tenny's 16-hex ids are decoded in one C call."""
    joined = "".join(ids)
    # every id 16 long (the total alone lets a 12 and a 20 pass), all of them hex
    if ids and min(map(len, ids)) == 16 and len(joined) == 16 * len(ids) and _ALL_HEX.fullmatch(joined):
        return np.frombuffer(bytes.fromhex(joined), dtype=">u8").astype(np.uint64)
    return np.fromiter((id_key(r) for r in ids), dtype=np.uint64, count=len(ids))


def state_code(state: ReviewState | None) -> int:
    if state is None:
        return PENDING
    code = STATUS_CODES.get(state.status, PENDING)
    if state.text is not None:
        code |= EDITED
    if state.tags:
        code |= TAGGED
    return code


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
            if not _HEX_ID.fullmatch(obj["id"]):
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


@dataclass(frozen=True)
class Filter:
    """Which samples the queue shows: all, a status, edited, a tag, or a slot value."""

    kind: str = "all"  # all | pending | accepted | rejected | edited | tag | slot
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
        if spec in ("pending", "accepted", "rejected", "edited"):
            return cls(spec)
        if spec.startswith("tag:") and spec[4:].strip():
            return cls("tag", spec[4:].strip())
        if "=" in spec:
            key, _, value = spec.partition("=")
            if key.strip():
                return cls("slot", key.strip(), value.strip())
        raise ValueError(f"unknown filter {spec!r}: use all, pending, accepted, rejected, edited, tag:NAME or KEY=VALUE")

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

    def __init__(self, records: str | os.PathLike, decisions: str | os.PathLike, by: str | None = None):
        self.index = LineIndex(records)
        self.log = DecisionLog(decisions, by=by)
        self._status = np.zeros(1024, dtype=np.uint8)
        self.filter = Filter()
        self.mask: np.ndarray | None = None  # None: every sample
        self._decided_keys = np.zeros(0, dtype=np.uint64)
        self._decided_codes = np.zeros(0, dtype=np.uint8)
        self._touched_during_index: set[str] = set()

    # -- opening

    def open_log(self) -> None:
        """Repair and fold the review log (raises RecordError naming a bad line)."""
        self.log.open()
        self._rebuild_decided()

    def _rebuild_decided(self) -> None:
        ids, codes_list = [], []
        for rid, value in self.log.hist.items():
            # most ids hold one plain accept ("a") or reject ("r"): no replay needed
            if value == "a":
                code = ACCEPTED
            elif value == "r":
                code = REJECTED
            else:
                code = state_code(self.log.state(rid))
                if not code:
                    continue
            ids.append(rid)
            codes_list.append(code)
        keys = id_keys(ids)
        codes = np.array(codes_list, dtype=np.uint8)
        order = np.argsort(keys)
        self._decided_keys, self._decided_codes = keys[order], codes[order]

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
                self.open_log()
            except BaseException as err:  # handed to the indexing thread below
                failed.append(err)

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
            self._status[coded:stop] = self._codes_for(self.index.keys[coded:stop])
            coded = stop
            yield self.first_pending()
        log_thread.join()
        if failed:
            raise failed[0]
        n = len(self)
        self._status[coded:n] = self._codes_for(self.index.keys[coded:n])
        yield self.first_pending()

    def _grow_status(self, stop: int) -> None:
        if stop > len(self._status):
            grown = np.zeros(max(2 * len(self._status), stop), dtype=np.uint8)
            grown[: len(self._status)] = self._status
            self._status = grown

    def open(self) -> None:
        """Everything at once (tests, tools): log, then the whole index."""
        self.open_log()
        self.index.scan()
        self._grow_status(len(self))
        self._status[: len(self)] = self._codes_for(self.keys)

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

    def first_pending(self, after: int = -1) -> int | None:
        return self._first((self.status[after + 1:] & 3) == PENDING, after + 1)

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
        return {"total": len(self), "accepted": accepted, "rejected": rejected,
                "reviewed": accepted + rejected, "edited": int(np.count_nonzero(status & EDITED))}

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
        return pos + 1 if self.mask is None else int(np.count_nonzero(self.mask[:pos])) + 1

    def visible_positions(self) -> np.ndarray:
        return np.arange(len(self)) if self.mask is None else np.flatnonzero(self.mask)

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
        for rid in ids:
            at = np.flatnonzero(keys == np.uint64(id_key(rid)))
            state = self.log.state(rid)
            code = state_code(state)
            self._status[at] = code
            if self.mask is not None and self.filter.kind != "slot":
                self.mask[at] = self.filter.wants_state(code, state)

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
