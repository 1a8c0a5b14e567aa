"""Review as a team: every reviewer's log in data/reviews/, read together.

Each reviewer appends to their own log (``data/reviews/<name>.jsonl``, one
writer per file); within one log the latest decision for an id wins (the one
fold, ``decisions.Fold``). Across logs nothing is folded into one history:
each reviewer keeps their own state, and what a record *is* comes from a
policy over those states (``settle``), the same one for build, the queue and
the agreement figures.

Per reviewer the decided ids become two sorted numpy arrays (a 64-bit key per
id, a status code), so a million-sample queue or three 300k-decision logs are
compared with vector operations, never a Python loop per sample.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.core.decisions import DecisionLog, Fold, ReviewState, reviewer_logs
from pipeline.core.errors import UserError

# status codes (one byte per sample or decided id)
PENDING, ACCEPTED, REJECTED = 0, 1, 2
EDITED = 4
TAGGED = 8
STATUS_CODES = {"pending": PENDING, "accepted": ACCEPTED, "rejected": REJECTED}

_HEX_ID = re.compile(r"[0-9a-f]{16}")
_ALL_HEX = re.compile(r"[0-9a-f]*")

# build.include: how the reviewers' states become one decision per record (docs/review.md)
POLICIES = ("not_rejected", "accepted", "majority", "unanimous", "adjudicated")


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


def decided_arrays(fold: Fold) -> tuple[np.ndarray, np.ndarray]:
    """(keys sorted, status codes) of every id the fold holds a decision in force for."""
    ids, codes = [], []
    for rid, value in fold.hist.items():
        # most ids hold one plain accept ("a") or reject ("r"): no replay needed
        if value == "a":
            code = ACCEPTED
        elif value == "r":
            code = REJECTED
        else:
            code = state_code(fold.state(rid))
            if not code:
                continue
        ids.append(rid)
        codes.append(code)
    keys = id_keys(ids)
    order = np.argsort(keys, kind="stable")
    return keys[order], np.array(codes, dtype=np.uint8)[order]


def lookup(keys: np.ndarray, codes: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The code of each key in ``want`` (0 where it has none), from sorted ``keys``."""
    if not len(keys) or not len(want):
        return np.zeros(len(want), dtype=np.uint8)
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    return np.where(keys[at] == want, codes[at], 0).astype(np.uint8)


@dataclass
class Matrix:
    """Every id any reviewer decided, and each reviewer's status code for it (0: not decided)."""

    names: list[str]
    keys: np.ndarray  # uint64, sorted, unique
    codes: np.ndarray  # uint8, (len(keys), len(names))

    @property
    def status(self) -> np.ndarray:
        """Accepted (1) / rejected (2) / not decided (0), edits and tags masked off."""
        return self.codes & 3


@dataclass
class Team:
    """The reviewers' logs of one folder, each folded on its own."""

    folder: Path
    logs: dict[str, DecisionLog] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # a cut last line skipped, per log

    @classmethod
    def load(cls, folder: str | os.PathLike, extra: Iterable[Path] = ()) -> "Team":
        """Read every log in ``folder`` strictly, except a cut last line (skipped, with a note)."""
        team = cls(Path(folder))
        paths = dict(reviewer_logs(folder))
        for path in extra:
            paths.setdefault(Path(path).stem, Path(path))
        for name, path in sorted(paths.items()):
            log = DecisionLog(path)
            if path.is_dir():
                raise UserError(f"{path}: is a folder; a reviewer's log is a .jsonl file")
            note = log.read_settled()
            if note:
                team.notes.append(note)
            team.logs[name] = log
        return team

    @property
    def names(self) -> list[str]:
        return list(self.logs)

    def check_adjudicators(self, adjudicators: Iterable[str]) -> None:
        """Unknown names in review.adjudicators are an error naming them (a typo would settle nothing)."""
        unknown = [a for a in adjudicators if a not in self.logs]
        if unknown:
            known = ", ".join(self.names) or "none yet"
            raise UserError(
                f"params.yaml: review.adjudicators: no review log for {', '.join(map(repr, unknown))} in "
                f"{self.folder}/ (reviewers: {known}). Fix the names, or let each adjudicator review once "
                f"(`tenny review --as NAME`) so their log exists")

    def matrix(self, names: list[str] | None = None) -> Matrix:
        names = self.names if names is None else names
        arrays = [decided_arrays(self.logs[n]) for n in names]
        keys = np.unique(np.concatenate([k for k, _ in arrays])) if arrays else np.zeros(0, np.uint64)
        codes = np.zeros((len(keys), len(names)), dtype=np.uint8)
        for j, (k, c) in enumerate(arrays):
            codes[:, j] = lookup(k, c, keys)
        return Matrix(names, keys, codes)


class Settled:
    """One decision per record from the team's states under a ``build.include`` policy.

    - ``not_rejected``: kept unless a reviewer rejected it (undecided records kept).
    - ``accepted``: kept if a reviewer accepted it and none rejected it.
    - ``majority``: kept if more reviewers accepted than rejected it (a tie is out).
    - ``unanimous``: kept if at least ``overlap`` reviewers decided and all accepted.
    - ``adjudicated``: an adjudicator's decision settles the record; without one,
      a record is kept when at least ``overlap`` reviewers decided and all accepted,
      so a disagreement stays out until an adjudicator settles it.

    Adjudicators' logs count only under ``adjudicated`` (elsewhere their votes
    would count twice as a reviewer's). An edit in force is the text: the
    adjudicator's, else the first reviewer's (by name) who edited; tags are the
    union of everyone's.
    """

    def __init__(self, team: Team, policy: str, overlap: int = 1, adjudicators: Iterable[str] = ()):
        if policy not in POLICIES:
            raise UserError(f"params.yaml: build.include: {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.overlap = overlap
        self.adjudicators = [a for a in adjudicators if a in team.logs]
        self.people = [log for name, log in team.logs.items() if name not in self.adjudicators]
        self.adj = [team.logs[a] for a in self.adjudicators]

    def decide(self, rid: str) -> tuple[str, ReviewState | None]:
        """(rule that decided, the record's state or None): state.status is what build acts on."""
        adj_state = None
        if self.policy == "adjudicated":
            for log in self.adj:
                s = log.state(rid) if rid in log.hist else None
                if s is not None and s.status != "pending":
                    adj_state = s
                    break
        states = []
        for log in self.people:
            value = log.hist.get(rid)
            if value is None:
                continue
            if value == "a":
                states.append(ReviewState("accepted"))
            elif value == "r":
                states.append(ReviewState("rejected"))
            else:
                states.append(log.state(rid))
        if adj_state is None and not states:
            return "undecided", None
        acc = sum(s.status == "accepted" for s in states)
        rej = sum(s.status == "rejected" for s in states)
        text = adj_state.text if adj_state is not None and adj_state.text is not None else \
            next((s.text for s in states if s.text is not None and s.status == "accepted"), None)
        tags = list(dict.fromkeys(t for s in states + ([adj_state] if adj_state else []) for t in s.tags))
        if adj_state is not None:
            status, rule = adj_state.status, "adjudicated"
        elif acc + rej == 0:
            return "undecided", ReviewState("pending", None, tags) if tags else None
        elif self.policy == "not_rejected":
            status, rule = ("rejected" if rej else "accepted"), "not_rejected"
        elif self.policy == "accepted":
            status, rule = ("accepted" if acc and not rej else "rejected"), "accepted"
        elif self.policy == "majority":
            status, rule = ("accepted" if acc > rej else "rejected"), "majority"
        else:  # unanimous, or adjudicated without an adjudicator's decision
            if acc + rej < self.overlap:
                status, rule = "pending", "too_few_reviewers"
            else:
                status, rule = ("accepted" if not rej else "rejected"), ("unanimous" if not (acc and rej) else "disagreement")
        if status != "accepted":
            text = None
        return rule, ReviewState(status, text, tags)


def count_rules(rules: Counter) -> dict:
    return dict(sorted(rules.items()))
