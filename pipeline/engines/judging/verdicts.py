"""Reading a judge's reply leniently, and never guessing.

Models wrap JSON in code fences, add a sentence before it, or say "Answer A".
The first JSON object in the reply that holds the expected key is read; a
reply without one is unparseable (asked once more, then counted as invalid).
"""

from __future__ import annotations

import json
import math
import re

_DECODER = json.JSONDecoder()
_WINNER = re.compile(r"^(?:answer\s+)?(a|b|tie)$", re.IGNORECASE)


CUT_REASON = "(the reply ended inside its reason: cut at max_tokens)"


def json_object(text: str, key: str) -> dict | None:
    """The first JSON object in ``text`` that has ``key``; None if there is none.

    A reply cut off inside its JSON (a small model whose reason runs on until
    ``max_tokens``) still counts when ``key`` opens the object and its value is
    complete, followed by a comma: that value is what the judge wrote, exactly
    as in a whole reply (the schema puts the verdict before the reason).
    Anything less complete is unreadable.
    """
    at = text.find("{")
    while at != -1:
        try:
            obj, _ = _DECODER.raw_decode(text, at)
        except ValueError:
            obj = _cut_object(text, at, key)
        if isinstance(obj, dict) and key in obj:
            return obj
        at = text.find("{", at + 1)
    return None


def _cut_object(text: str, at: int, key: str) -> dict | None:
    m = re.match(r'\{\s*"' + re.escape(key) + r'"\s*:\s*', text[at:])
    if m is None:
        return None
    try:
        value, end = _DECODER.raw_decode(text, at + m.end())
    except ValueError:
        return None
    rest = text[end:].lstrip()
    if not rest.startswith(",") or "}" in rest or isinstance(value, (dict, list)):
        return None  # not cut right after a complete first value
    return {key: value, "reason": CUT_REASON}


def _reason(obj: dict) -> str:
    reason = obj.get("reason", "")
    return reason if isinstance(reason, str) else json.dumps(reason, ensure_ascii=False)


def parse_verdict(text: str) -> tuple[str | None, str]:
    """("A" | "B" | "tie", reason), or (None, why it could not be read)."""
    obj = json_object(text, "winner")
    if obj is None:
        return None, "no JSON object with a winner"
    winner = obj["winner"]
    m = _WINNER.match(winner.strip().strip("\"'")) if isinstance(winner, str) else None
    if m is None:
        return None, f"winner {json.dumps(winner, ensure_ascii=False)[:40]} is not A, B or tie"
    value = m.group(1)
    return ("tie" if value.lower() == "tie" else value.upper()), _reason(obj)


def parse_score(text: str, low: int = 1, high: int = 10) -> tuple[int | None, str]:
    """(score in [low, high], reason), or (None, why it could not be read)."""
    obj = json_object(text, "score")
    if obj is None:
        return None, "no JSON object with a score"
    raw = obj["score"]
    if isinstance(raw, str) and re.fullmatch(r"\s*\d+(\.0+)?\s*", raw):
        raw = float(raw)
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw) or raw != int(raw):
        return None, f"score {json.dumps(raw, ensure_ascii=False)[:40]} is not a whole number"
    if not low <= int(raw) <= high:
        return None, f"score {int(raw)} is outside {low}-{high}"
    return int(raw), _reason(obj)
