"""What the review screen draws: the sample, the side panel, the status line.

Pure functions from data to ``rich.text.Text``; every string that came from a
file goes through ``pipeline.core.text`` (``as_text``, ``as_line``): never markup,
and control or invisible characters shown as visible escapes.
"""

from __future__ import annotations

import json

from rich.text import Text

from pipeline.core.decisions import ReviewState
from pipeline.core.records import body_kind, editable_turn
from pipeline.core.text import as_line, as_text

STATUS_STYLE = {"pending": "bold", "accepted": "bold green", "rejected": "bold red"}
ROLE_STYLE = {"system": "bold magenta", "user": "bold cyan", "assistant": "bold green", "tool": "bold yellow"}
# meta keys shown first, in this order (provenance a reviewer asks about)
META_FIRST = ("source", "prompt_file", "template", "slots", "model", "temperature", "provider", "created")


def sample_text(record: dict, state: ReviewState | None, limit: int) -> Text:
    """The sample, large: text; prompt + completion; or the conversation turn by turn."""
    kind = body_kind(record)
    edited = state.text if state is not None else None
    out = Text()
    if kind == "text":
        if edited is not None:
            out.append("EDITED\n", style="bold yellow")
            out.append_text(as_text(edited, multiline=True, limit=limit))
            out.append("\n\nORIGINAL\n", style="dim bold")
            out.append_text(as_text(record["text"], multiline=True, limit=limit, style="dim"))
        else:
            out.append_text(as_text(record["text"], multiline=True, limit=limit))
        return out
    if kind == "pair":
        out.append("PROMPT\n", style="bold cyan")
        out.append_text(as_text(record["prompt"], multiline=True, limit=limit))
        out.append("\n\nCOMPLETION" + (" (edited)" if edited is not None else "") + "\n", style="bold green")
        out.append_text(as_text(edited if edited is not None else record["completion"], multiline=True, limit=limit))
        if edited is not None:
            out.append("\n\nORIGINAL COMPLETION\n", style="dim bold")
            out.append_text(as_text(record["completion"], multiline=True, limit=limit, style="dim"))
        return out
    messages = record["messages"]
    last_assistant = editable_turn(messages)
    for i, m in enumerate(messages):
        if i:
            out.append("\n\n")
        label = m["role"].upper() + (" (edited)" if edited is not None and i == last_assistant else "")
        out.append(label + "\n", style=ROLE_STYLE.get(m["role"], "bold"))
        content = edited if edited is not None and i == last_assistant else m["content"]
        out.append_text(as_text(content, multiline=True, limit=limit))
    return out


def side_text(*, record: dict, line: int, state: ReviewState | None, chars: int, tokens: int | None,
              tokens_exact: bool, twins: list[dict] | None, twin_count: int, twins_note: str) -> Text:
    """Status, length, provenance and near-twins of the shown sample."""
    status = state.status if state is not None else "pending"
    out = Text()
    out.append(status.upper(), style=STATUS_STYLE.get(status, "bold"))
    if state is not None and state.text is not None:
        out.append(" · edited", style="yellow")
    out.append("\n")
    if state is not None and state.tags:
        out.append("tags ", style="dim")
        out.append_text(as_line(", ".join(state.tags), 300))
        out.append("\n")
    out.append("\nlength ", style="dim")
    out.append(f"{chars:,} chars")
    if tokens is not None:
        out.append(f" · {'' if tokens_exact else '≈'}{tokens:,} tokens")
    out.append("\nid ", style="dim")
    out.append_text(as_line(record.get("id", ""), 40))
    out.append(f"\nline {line:,}", style="dim")
    out.append(f" · {body_kind(record)}\n", style="dim")

    meta = record.get("meta")
    if isinstance(meta, dict) and meta:
        out.append("\nPROVENANCE\n", style="bold")
        keys = [k for k in META_FIRST if k in meta] + [k for k in meta if k not in META_FIRST]
        for key in keys[:30]:
            value = meta[key]
            if isinstance(value, dict):
                out.append_text(as_line(str(key), 24))
                out.append("\n")
                for sk, sv in list(value.items())[:20]:
                    out.append("  ")
                    out.append_text(as_line(str(sk), 20))
                    out.append(" = ", style="dim")
                    out.append_text(as_line(sv if isinstance(sv, str) else json.dumps(sv, ensure_ascii=False), 40))
                    out.append("\n")
                continue
            out.append_text(as_line(str(key), 24))
            out.append(" ", style="dim")
            out.append_text(as_line(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False), 48))
            out.append("\n")

    out.append("\nNEAR-TWINS DROPPED FOR IT\n", style="bold")
    if twins is None:
        out.append(twins_note or "—", style="dim")
        return out
    if not twins:
        out.append("none", style="dim")
        return out
    for row in twins:
        score = row.get("score")
        out.append(f"{score:.1f} " if isinstance(score, (int, float)) else "? ", style="bold yellow")
        out.append_text(as_line(row.get("text", ""), 160))
        out.append("\n")
    if twin_count > len(twins):
        out.append(f"… and {twin_count - len(twins):,} more", style="dim")
    return out


def status_text(*, counts: dict, rate: float | None, rank: int | None, shown: int, filter_label: str,
                note: str = "") -> Text:
    """reviewed / total · accept rate · samples per minute · where we are in the filter."""
    total, reviewed = counts["total"], counts["reviewed"]
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(f"{reviewed:,}/{total:,} reviewed", style="bold")
    if reviewed:
        out.append(f" · {100 * counts['accepted'] / reviewed:.0f}% accepted")
    out.append(f" · {rate:.1f}/min" if rate is not None else " · –/min")
    out.append(" · ")
    out.append(f"{filter_label} ", style="bold")
    out.append(f"{rank:,}/{shown:,}" if rank is not None else f"–/{shown:,}")
    if "done" in counts:  # team review: records done by the team, and each other reviewer's progress live
        out.append(f" · team done {counts['done']:,}")
        for name, n in counts["team"].items():
            out.append(" · ")
            out.append_text(as_line(name, 20))
            out.append(f" {n:,}")
    if note:
        out.append(" · ")
        out.append_text(as_line(note, 80))
    return out


def team_text(decisions: dict, original: str) -> Text:
    """Each reviewer's decision on the sample, side by side in reading order: status, tags, edit."""
    out = Text()
    out.append("\nREVIEWERS\n", style="bold")
    for name, state in decisions.items():
        out.append_text(as_line(name, 40))
        style = "green" if state.status == "accepted" else "red"
        out.append(f"  {'edited' if state.edited else state.status}", style=f"bold {style}")
        if state.tags:
            out.append("  tags ")
            out.append_text(as_line(", ".join(state.tags), 80))
        out.append("\n")
        if state.edited and state.text != original:
            out.append_text(as_text(state.text, multiline=True))
            out.append("\n")
    return out
