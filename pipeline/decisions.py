"""The review log data/reviews/decisions.jsonl: append-only, latest decision wins.

One decision per line: ``{"id", "action", "text"?, "tags"?, "at", "by"}`` with
action accept | reject | edit | tag | undo. Nothing is rewritten in place:
``undo`` appends a line that cancels the latest not-yet-undone decision for
that id. ``fold`` turns the log into the current state of each id.
"""

from __future__ import annotations

import getpass
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.records import RecordError, append_jsonl, iter_jsonl

ACTIONS = ("accept", "reject", "edit", "tag", "undo")


@dataclass
class ReviewState:
    """Where one sample stands after every decision on it."""

    status: str = "pending"  # pending | accepted | rejected
    text: str | None = None  # the edited text, if edited
    tags: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # decisions in force, oldest first

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
    state = ReviewState(history=history)
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


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (some containers)
        return "unknown"
