"""What changed inside one record between two revisions: word-level, turn by turn, meta key by key.

`tenny diff --show ID` and the app's record view (tui/screens/record_diff.py)
both draw from :func:`record_changes`; this module only computes, it never
renders for a terminal, so the sanitizing stays with whoever shows the text.

Parts come in the order a reviewer reads a change: the part a person or a
model rewrote first (a chat's assistant turns, a pair's completion), then
what it answered (user turns, the prompt), and the system prompt last: it is
long, shared by every record and rarely the point.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from typing import Any

from pipeline.core.records import body_kind

# Words, runs of whitespace and single punctuation marks: joining the tokens gives back
# the text exactly, so an "equal" run shows the original spacing and line breaks.
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]", re.UNICODE)

ROLE_ORDER = ("assistant", "user", "system")  # other roles (tool, function) after these


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    """``old`` → ``new`` as runs of ("equal" | "delete" | "insert", text).

    Concatenating the equal and delete runs gives ``old``; equal and insert give ``new``.
    A replaced run is its delete followed by its insert, as a reader expects.
    """
    a, b = tokens(old), tokens(new)
    # autojunk off: in a long sample the commonest words ("the", spaces) are exactly the
    # anchors that keep a one-word edit a one-word edit.
    matcher = SequenceMatcher(None, a, b, autojunk=False)
    # Groups: ("equal", text, text) or ("change", deleted, inserted).
    groups: list[tuple[str, str, str]] = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        old_part, new_part = "".join(a[i1:i2]), "".join(b[j1:j2])
        if tag != "equal" and groups and groups[-1][0] == "change":
            groups[-1] = ("change", groups[-1][1] + old_part, groups[-1][2] + new_part)
        elif (tag != "equal" and len(groups) >= 2 and groups[-2][0] == "change"
              and groups[-1][0] == "equal" and not groups[-1][1].strip()):
            # Only a space between two changes: one rewritten phrase reads better than
            # a stutter of one-word swaps, so the space joins both sides.
            space = groups.pop()[1]
            _, d, i = groups.pop()
            groups.append(("change", d + space + old_part, i + space + new_part))
        else:
            groups.append(("equal" if tag == "equal" else "change", old_part, new_part))
    out: list[tuple[str, str]] = []
    for tag, old_part, new_part in groups:
        runs = [("equal", old_part)] if tag == "equal" else [("delete", old_part), ("insert", new_part)]
        for op, text in runs:
            if text:
                if out and out[-1][0] == op:
                    out[-1] = (op, out[-1][1] + text)
                else:
                    out.append((op, text))
    return out


@dataclass
class Part:
    """One field of the body at both revisions (None: the field is not there at that revision)."""

    label: str  # "text", "completion", "prompt", "assistant", "user 2", "system", ...
    old: str | None
    new: str | None

    @property
    def changed(self) -> bool:
        return self.old != self.new

    def ops(self) -> list[tuple[str, str]]:
        return word_diff(self.old or "", self.new or "")


@dataclass
class MetaChange:
    key: str
    old: Any  # MISSING when the key is not there
    new: Any


MISSING = object()


@dataclass
class RecordChange:
    id: str
    kind_old: str | None  # text | pair | chat; None when the record is not at that revision
    kind_new: str | None
    parts: list[Part] = field(default_factory=list)
    meta: list[MetaChange] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.kind_old is None:
            return "added"
        if self.kind_new is None:
            return "removed"
        if any(p.changed for p in self.parts):
            return "edited"
        return "meta changed" if self.meta else "unchanged"


def _fields(record: dict | None) -> dict[str, str]:
    """label → text, in reading order (see the module docstring)."""
    if record is None:
        return {}
    kind = body_kind(record)
    if kind == "text":
        return {"text": record["text"]}
    if kind == "pair":
        return {"completion": record["completion"], "prompt": record["prompt"]}
    by_role: dict[str, list[str]] = {}
    for m in record["messages"]:
        by_role.setdefault(str(m.get("role")), []).append(str(m.get("content", "")))
    roles = [r for r in ROLE_ORDER if r in by_role] + sorted(r for r in by_role if r not in ROLE_ORDER)
    out: dict[str, str] = {}
    for role in roles:
        turns = by_role[role]
        for i, content in enumerate(turns):
            # The n-th turn of a role pairs with the n-th turn of that role at the other revision.
            out[role if i == 0 else f"{role} {i + 1}"] = content
    return out


def _rank(label: str) -> tuple[int, int]:
    role, _, n = label.partition(" ")
    order = {"completion": 0, "text": 0, "prompt": 1, **{r: i for i, r in enumerate(ROLE_ORDER)}}
    return order.get(role, len(ROLE_ORDER)), int(n) if n.isdigit() else 1


def record_changes(old: dict | None, new: dict | None) -> RecordChange:
    """Everything that differs between two versions of one record (either may be None)."""
    rid = str((new or old or {}).get("id", ""))
    change = RecordChange(rid, body_kind(old) if old else None, body_kind(new) if new else None)
    fa, fb = _fields(old), _fields(new)
    labels = list(fa) + [label for label in fb if label not in fa]
    labels.sort(key=_rank)  # stable: equal ranks keep their order
    change.parts = [Part(label, fa.get(label), fb.get(label)) for label in labels]
    ma = (old or {}).get("meta") or {}
    mb = (new or {}).get("meta") or {}
    if old is not None and new is not None:
        for key in list(ma) + [k for k in mb if k not in ma]:
            va, vb = ma.get(key, MISSING), mb.get(key, MISSING)
            if va != vb:
                change.meta.append(MetaChange(str(key), va, vb))
    return change


def value_text(value: Any, limit: int = 120) -> str:
    """A meta value on one line: strings as they are, the rest as compact JSON."""
    if value is MISSING:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def plain_lines(change: RecordChange) -> list[str]:
    """The change as text lines, git-word-diff style: ``[-deleted-]`` ``{+inserted+}``.

    Unsanitized: a caller that prints them passes each through ``pipeline.core.text.clean``.
    """
    lines = [f"{change.id}: {change.status}"]
    for part in change.parts:
        if not part.changed:
            lines.append(f"{part.label}: unchanged")
            continue
        body = "".join(text if op == "equal" else f"[-{text}-]" if op == "delete" else f"{{+{text}+}}"
                       for op, text in part.ops())
        head, *rest = body.split("\n")
        lines.append(f"{part.label}: {head}")
        lines += [f"  {line}" for line in rest]
    if change.meta:
        lines.append("meta changed: " + ", ".join(m.key for m in change.meta))
        lines += [f"  {m.key}: {value_text(m.old)} → {value_text(m.new)}" for m in change.meta]
    return lines
