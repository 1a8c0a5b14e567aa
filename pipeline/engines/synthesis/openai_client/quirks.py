"""Model answers → records. Quirks are data, not crashes: each is fixed or
dropped, and counted by kind in the report.

``counts`` is keyed ``("cleaned" | "dropped", kind)``, as in
pipeline.engines.synthesis.providers.transcripts.clean_line, whose line cleaning (bullets,
numbering, quotes, chatter) is reused here so a pasted transcript and an API
answer are cleaned the same way.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import datetime, timezone

from pipeline.core.records import body_kind, make_record
from pipeline.engines.synthesis.openai_client.plan import Planned
from pipeline.engines.synthesis.providers.transcripts import clean_line

_FENCE = re.compile(r"^\s*```")
_IDK_KEYS = ("idk", "unanswerable", "not_in_text")


class Counts(Counter):
    """Counter keyed (what, kind); clean_line adds to it directly."""


def meta_for(req: Planned, response: dict) -> dict:
    pf = req.pf
    meta = {
        "provider": "openai",
        "prompt_file": pf.path,
        "mode": pf.mode,
        "slots": req.slots,
        "model": req.body["model"],
        "temperature": req.body["temperature"],
        "request_hash": req.key,
        "finish_reason": response.get("finish_reason"),
        "created": _iso(response.get("created")),
    }
    if "topic" in req.slots:
        meta["topic"] = req.slots["topic"]  # build's chat format asks about meta.topic
    meta.update(req.meta)
    return meta


def _iso(created) -> str | None:
    if not isinstance(created, (int, float)):
        return None
    return datetime.fromtimestamp(created, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def records_from(req: Planned, response: dict, counts: Counts) -> list[dict]:
    content = response.get("content") or ""
    truncated = response.get("finish_reason") == "length"
    if not content.strip():
        counts["dropped", "empty_response"] += 1
        return []
    meta = meta_for(req, response)
    mode = req.pf.mode
    if mode == "lines":
        return [make_record(text=t, meta=meta) for t in lines(content, truncated, counts)]
    if mode == "pairs":
        return [make_record(prompt=p, completion=c, meta={**meta, "idk": idk}) for p, c, idk in pairs(content, truncated, counts)]
    if mode == "conversations":
        turns = conversation(content, truncated, req.pf.labels.user, req.pf.labels.assistant, counts)
        if not turns:
            return []
        system = [{"role": "system", "content": req.pf.train_system}] if req.pf.train_system else []
        return [make_record(messages=system + turns, meta=meta)]
    text = single(content, truncated, counts)
    if text is None:
        return []
    if mode == "single":
        return [make_record(prompt=slot_prompt(req.slots), completion=text, meta=meta)]
    return [rewritten(req.source, text, meta)]


def lines(content: str, truncated: bool, counts: Counts) -> list[str]:
    raw = content.splitlines()
    if truncated:
        raw = _drop_last_nonblank(raw, counts)
    out = []
    for line in raw:
        if not line.strip():
            if line:
                counts["cleaned", "empty_line"] += 1
            continue
        text = clean_line(line, counts)
        if text is not None:
            out.append(text)
    return out


def _drop_last_nonblank(raw: list[str], counts: Counts) -> list[str]:
    for i in range(len(raw) - 1, -1, -1):
        if raw[i].strip():
            counts["dropped", "truncated"] += 1
            return raw[:i]
    return raw


def single(content: str, truncated: bool, counts: Counts) -> str | None:
    """One completion: leading chatter and enclosing quotes go; a cut-off answer is dropped whole."""
    if truncated:
        counts["dropped", "truncated"] += 1
        return None
    raw = content.strip().splitlines()
    while raw and (not raw[0].strip() or clean_line(raw[0], Counter()) is None):
        if raw[0].strip():
            counts["cleaned", "chatter"] += 1
        raw.pop(0)
    text = "\n".join(raw).strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
        counts["cleaned", "quotes"] += 1
        text = text[1:-1].strip()
    if not text:
        counts["dropped", "empty_after_cleaning"] += 1
        return None
    return text


def pairs(content: str, truncated: bool, counts: Counts) -> list[tuple[str, str, bool]]:
    """JSON lines of {"prompt", "completion"}; fences and chatter skipped, bad JSON counted."""
    raw = content.splitlines()
    if truncated:
        raw = _drop_last_nonblank(raw, counts)
    out = []
    for line in raw:
        text = line.strip().rstrip(",")
        if not text:
            continue
        if _FENCE.match(text):
            counts["cleaned", "code_fence"] += 1
            continue
        if not text.startswith("{"):
            counts["dropped", "chatter"] += 1
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            counts["dropped", "invalid_json"] += 1
            continue
        prompt = obj.get("prompt", obj.get("question")) if isinstance(obj, dict) else None
        completion = obj.get("completion", obj.get("answer")) if isinstance(obj, dict) else None
        if not isinstance(prompt, str) or not isinstance(completion, str) or not prompt.strip() or not completion.strip():
            counts["dropped", "invalid_pair"] += 1
            continue
        if "prompt" not in obj:
            counts["cleaned", "pair_keys"] += 1
        idk = any(bool(obj.get(k)) for k in _IDK_KEYS)
        out.append((prompt.strip(), completion.strip(), idk))
    return out


def conversation(content: str, truncated: bool, user_label: str, assistant_label: str, counts: Counts) -> list[dict]:
    """``User: …`` / ``Assistant: …`` lines → alternating turns, starting with the user, ending with the persona."""
    label = re.compile(
        rf"^\s*(?:[*_]{{0,2}})({re.escape(user_label)}|{re.escape(assistant_label)})(?:[*_]{{0,2}})\s*:\s*(?:[*_]{{0,2}}\s*)?(.*)$",
        re.IGNORECASE,
    )
    turns: list[dict] = []
    for line in content.splitlines():
        m = label.match(line)
        if m:
            role = "user" if m.group(1).lower() == user_label.lower() else "assistant"
            if turns and turns[-1]["role"] == role:
                counts["cleaned", "merged_turn"] += 1
                turns[-1]["content"] += "\n" + m.group(2).strip()
            else:
                turns.append({"role": role, "content": m.group(2).strip()})
        elif line.strip():
            if turns:
                turns[-1]["content"] += "\n" + line.strip()
            else:
                counts["dropped", "chatter"] += 1
    if truncated and turns:
        turns.pop()
        counts["dropped", "truncated"] += 1
    if turns and turns[0]["role"] == "assistant":
        counts["cleaned", "leading_assistant_turn"] += 1
        turns.pop(0)
    if turns and turns[-1]["role"] == "user":
        counts["cleaned", "trailing_user_turn"] += 1
        turns.pop()
    turns = [t for t in turns if t["content"].strip()]
    if len(turns) < 2 or any(t["role"] == u["role"] for t, u in zip(turns, turns[1:])):
        counts["dropped", "malformed_conversation"] += 1
        return []
    for t in turns:
        t["content"] = t["content"].strip()
    return turns


def slot_prompt(slots: dict) -> str:
    """The compact prompt of a single-mode record: one ``Name: value`` line per slot."""
    return "\n".join(f"{name.replace('_', ' ').capitalize()}: {value}" for name, value in slots.items())


def rewritten(source: dict, text: str, meta: dict) -> dict:
    """The rewrite keeps the source's shape: text stays text, a pair keeps its prompt, a chat its earlier turns."""
    kind = body_kind(source)
    if kind == "text":
        return make_record(text=text, meta=meta)
    if kind == "pair":
        return make_record(prompt=source["prompt"], completion=text, meta=meta)
    messages = [dict(m) for m in source["messages"]]
    for m in reversed(messages):
        if m["role"] == "assistant":
            m["content"] = text
            break
    else:
        messages.append({"role": "assistant", "content": text})
    return make_record(messages=messages, meta=meta)
