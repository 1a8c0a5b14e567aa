"""data/reviews/prescore.jsonl read back: one judge's scores as arrays, and how the judge agrees with people.

The file is written by ``pipeline.engines.prescore`` (the paid run); this
module only reads it, so the build stage depends on the file and this reader,
not on the client. Rows carry the judge's fingerprint; a reader takes one
judge's rows and counts the others as stale, never mixing them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from pipeline.core import paths
from pipeline.core.decisions import PRESCORE_NAME
from pipeline.core.errors import UserError
from pipeline.core.team import id_key, id_keys

PRESCORE = paths.REVIEWS_DIR / f"{PRESCORE_NAME}.jsonl"


# A row as prescore writes it starts with fixed-width fields, so a million rows are read
# with numpy like the review index reads ids, never a json.loads (or a regex) per row:
#   {"id":"<16 hex>","judge":"<12 hex>","score":N,"reason":"…","model":"…"}
_HEAD_A, _HEAD_B, _HEAD_C = b'{"id":"', b'","judge":"', b'","score":'
_FP_LEN = 12
_BLOCK = 8 << 20
_AT_B = len(_HEAD_A) + 16
_AT_FP = _AT_B + len(_HEAD_B)
_AT_C = _AT_FP + _FP_LEN
_AT_SCORE = _AT_C + len(_HEAD_C)
_WIDTH = _AT_SCORE + 3
_NIBBLE = np.full(256, 255, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_NIBBLE[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)


def row_line(rid: str, judge: str, score: int, reason: str, model: str) -> str:
    """One prescore row in the fixed-head form the reader takes without parsing."""
    return json.dumps({"id": rid, "judge": judge, "score": score, "reason": reason, "model": model},
                      ensure_ascii=False, separators=(",", ":"))


class Scores:
    """One judge's scores from a prescore file, as sorted key/score arrays (a million rows in about a second)."""

    def __init__(self, keys: np.ndarray, scores: np.ndarray, offsets: np.ndarray, path: Path,
                 judge: str | None, model: str | None, stale: dict[str, int]):
        self.keys, self.scores, self.offsets = keys, scores, offsets  # sorted by key; offset: where the row starts
        self.path, self.judge, self.model, self.stale = path, judge, model, stale

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Score per key (0: not scored by this judge)."""
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), np.uint8)
        at = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return np.where(self.keys[at] == keys, self.scores[at], 0).astype(np.uint8)

    def row(self, rid: str) -> dict | None:
        """The row of ``rid`` (score and reason), read from the file when asked."""
        if not len(self.keys):
            return None
        k = np.uint64(id_key(rid))
        at = int(np.searchsorted(self.keys, k))
        if at >= len(self.keys) or self.keys[at] != k:
            return None
        with open(self.path, "rb") as fh:
            fh.seek(int(self.offsets[at]))
            try:
                return json.loads(fh.readline())
            except ValueError:
                return None


def read_scores(path: str | os.PathLike = PRESCORE, judge: str | None = None) -> Scores:
    """The rows of ``judge`` (a fingerprint; None: the judge of the file's last row).

    Rows of other judges are counted in ``stale`` by fingerprint, never used.
    A cut last line (a kill mid-write) is ignored; another bad line is an error naming it.
    """
    path = Path(path)
    fast = _read_plain(path, path.stat().st_size) if path.exists() else None
    if fast is not None:
        keys, scores, offsets, fps = fast
        if judge is None:
            judge = fps[-1].decode() if len(fps) else None
        mine = fps == (judge or "").encode()
        names, counts = np.unique(fps[~mine], return_counts=True)
        stale = {n.decode(): int(c) for n, c in zip(names, counts)}
        keys, scores, offsets = keys[mine], scores[mine], offsets[mine]
        order = np.argsort(keys, kind="stable")
        model = _model_at(path, int(offsets[0])) if len(offsets) else None
        return Scores(keys[order], scores[order], offsets[order], path, judge, model, stale)
    data = path.read_bytes() if path.exists() else b""
    lines = data.split(b"\n")
    ids: list[str] = []
    scores = np.zeros(len(lines), np.uint8)
    offsets = np.zeros(len(lines), np.int64)
    judges: list[str] = []
    models: dict[str, str] = {}
    at = 0
    for lineno, line in enumerate(lines, start=1):
        start, at = at, at + len(line) + 1
        if not line.strip():
            continue
        else:
            try:
                row = json.loads(line)
            except ValueError:
                if lineno == len(lines):  # a cut last line: the answer in flight when a run was killed
                    continue
                row = None
            if not (isinstance(row, dict) and isinstance(row.get("id"), str) and isinstance(row.get("score"), int)
                    and 1 <= row["score"] <= 10):
                raise UserError(f"{path}:{lineno}: not a prescore row (needs an id and a score 1-10); delete that "
                                "line and run `tenny review` again to score it anew")
            rid, score, fp = row["id"], row["score"], str(row.get("judge"))
        n = len(ids)
        ids.append(rid)
        scores[n], offsets[n] = score, start
        judges.append(fp)
        if fp not in models:
            models[fp] = start
    return _scores(path, data, ids, scores[: len(ids)], offsets[: len(ids)], judges, models, judge)


def _read_plain(path: Path, size: int):
    """Every row in the fixed-head form, read by numpy block by block (memory stays a few MB a block);
    None when some line is not (the careful path reads it)."""
    if not size:
        return None
    parts = []
    with open(path, "rb") as fh:
        base = 0
        while base < size:
            fh.seek(base)
            block = fh.read(_BLOCK)
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                return None  # a line longer than a block, or a cut last line
            part = _plain_block(block[:cut])
            if part is None:
                return None
            keys, score, starts, fps = part
            parts.append((keys, score, starts + base, fps))
            base += cut
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))


def _plain_block(data: bytes):
    a = np.frombuffer(data, np.uint8)
    nl = np.flatnonzero(a == 10)
    line_starts = np.concatenate([[0], nl[:-1] + 1]).astype(np.int64)
    starts = line_starts[nl - line_starts > _WIDTH]
    if len(starts) != np.count_nonzero(nl - line_starts > 0):
        return None  # a short or blank line among them
    head = a[starts[:, None] + np.arange(_WIDTH)]
    ok = (head[:, : len(_HEAD_A)] == np.frombuffer(_HEAD_A, np.uint8)).all(1)
    ok &= (head[:, _AT_B:_AT_FP] == np.frombuffer(_HEAD_B, np.uint8)).all(1)
    ok &= (head[:, _AT_C:_AT_SCORE] == np.frombuffer(_HEAD_C, np.uint8)).all(1)
    nib = _NIBBLE[head[:, len(_HEAD_A):_AT_B]]
    ok &= (nib < 16).all(1)
    d1, d2 = head[:, _AT_SCORE].astype(np.int16) - 48, head[:, _AT_SCORE + 1].astype(np.int16) - 48
    two = (d2 >= 0) & (d2 <= 9)
    ok &= (d1 >= 0) & (d1 <= 9) & (two | (head[:, _AT_SCORE + 1] == 44))
    score = np.where(two, d1 * 10 + d2, d1)
    ok &= (score >= 1) & (score <= 10)
    if not ok.all():
        return None
    packed = np.ascontiguousarray(nib[:, 0::2] << 4 | nib[:, 1::2])
    keys = packed.view(">u8")[:, 0].astype(np.uint64)
    fps = np.ascontiguousarray(head[:, _AT_FP:_AT_C]).view(f"S{_FP_LEN}")[:, 0]
    return keys, score.astype(np.uint8), starts, fps


def _model_at(path: Path, at: int) -> str | None:
    """The model named in the row at byte ``at``."""
    with open(path, "rb") as fh:
        fh.seek(at)
        try:
            return json.loads(fh.readline()).get("model")
        except ValueError:
            return None


def _scores(path, data, ids, scores, offsets, judges, models, judge) -> Scores:
    if judge is None and judges:
        judge = judges[-1]
    fps = np.array(judges, dtype=object)
    keep = np.flatnonzero(fps == judge) if judges else np.zeros(0, np.int64)
    stale = {fp: int(np.count_nonzero(fps == fp)) for fp in set(judges) - {judge}}
    keys = id_keys([ids[i] for i in keep]) if len(keep) else np.zeros(0, np.uint64)
    order = np.argsort(keys, kind="stable")
    model = _model_at(path, models[judge]) if judge in models else None
    return Scores(keys[order], scores[keep][order], offsets[keep][order], path, judge, model, stale)


# ---------------------------------------------------------------- the judge against the people


def judge_vs_people(scores: np.ndarray, accepted: np.ndarray) -> dict:
    """AUC of the score against the people's accept (1) / reject (0), and kappa at the best threshold.

    AUC is the Mann-Whitney statistic (ties count one half): the chance that a
    random accepted record outscores a random rejected one. The threshold T
    reads "accept when score >= T"; the best one maximises Cohen's kappa.
    """
    from pipeline.engines.agreement import cohen_kappa

    n_pos, n_neg = int(accepted.sum()), int((~accepted).sum())
    out = {"records": int(len(scores)), "auc": None, "best_threshold": None, "kappa_at_best": None}
    if not n_pos or not n_neg:
        return out
    pos = np.bincount(scores[accepted], minlength=11)
    neg = np.bincount(scores[~accepted], minlength=11)
    below = np.cumsum(neg) - neg  # rejected records scored lower than each score
    auc = (pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)
    out["auc"] = round(float(auc), 6)
    best = None
    for t in range(2, 11):
        k = cohen_kappa((scores >= t).astype(np.int8), accepted.astype(np.int8))
        if k is not None and (best is None or k > best[1]):
            best = (t, k)
    if best:
        out["best_threshold"], out["kappa_at_best"] = best[0], round(best[1], 6)
    return out
