"""Structured verdicts: the judge's reply shape as a JSON schema (``response_format``).

Servers that enforce a schema (OpenAI, llama.cpp's ``llama-server``, vLLM,
Ollama) make even a small local judge write ``{"winner": "A", "reason": …}``
instead of "The answer that fits best is answer A". Servers that do not know
the field answer 400; a few accept it and ignore it (``transformers serve``
logs a warning and generates free text: docs/judge.md).

Whether a server takes the field is asked once per server and model, with a
one-line probe, and remembered in .tenny/judge-formats.json; a server that
rejects it is judged as before (lenient parsing, the follow-up turn), and
the run says so once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.core import paths
from pipeline.core.records import write_json

FILE = "judge-formats.json"
REJECTED_STATUSES = ("http_400", "http_422")  # what a server says to a field it does not take


def _answer_with(schema: str, key: str, field: dict) -> dict:
    """A strict JSON-schema response_format named ``schema``: ``{key: ..., "reason": ...}``, both required."""
    return {"type": "json_schema", "json_schema": {"name": schema, "strict": True, "schema": {
        "type": "object", "properties": {key: field, "reason": {"type": "string"}},
        "required": [key, "reason"], "additionalProperties": False}}}


VERDICT = _answer_with("verdict", "winner", {"type": "string", "enum": ["A", "B", "tie"]})
# an enum, not minimum/maximum: every schema-enforcing server takes enums
SCORE = _answer_with("score", "score", {"type": "integer", "enum": list(range(1, 11))})

PROBE = [{"role": "user", "content": 'Reply with the JSON object {"winner": "tie", "reason": "probe"}.'}]


def server_key(base_url: str, model: str) -> str:
    return f"{base_url} {model}"


class Memory:
    """.tenny/judge-formats.json: {"<base_url> <model>": true | false} (no key, no answer)."""

    def __init__(self, path: Path | None = None):
        self.path = path or paths.STATE_DIR / FILE

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a missing or broken file: asked again, nothing lost
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> bool | None:
        value = self._load().get(key)
        return value if isinstance(value, bool) else None

    def put(self, key: str, accepted: bool) -> None:
        data = self._load()
        data[key] = accepted
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_json(self.path, data)


def say_rejected(base_url: str, model: str) -> None:
    print(f"judge: the server at {base_url} (model {model!r}) rejects response_format (structured output); "
          f"verdicts are read from free text instead (remembered in {paths.STATE_DIR / FILE}; delete it to ask again)",
          file=sys.stderr)
