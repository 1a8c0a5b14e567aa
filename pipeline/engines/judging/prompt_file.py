"""data/prompts/judge.yaml: the judge's persona, rubric and reply formats, rendered into chat messages.

A template is filled in one pass (prompt_files.fill), so an answer that
happens to contain ``{answer_b}`` stays text and is never filled in again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.core.errors import UserError
from pipeline.engines.synthesis.openai_client.prompt_files import fill

# field → placeholders it must hold (and the only ones it may hold)
FIELDS: dict[str, tuple[str, ...]] = {
    "persona": (),
    "rubric": (),
    "system": ("persona", "rubric"),
    "pair": ("prompt", "answer_a", "answer_b"),
    "score": ("prompt", "answer"),
    "retry": (),
}
_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class JudgePrompt:
    path: str
    system: str
    pair: str
    score: str
    retry: str

    def pair_messages(self, prompt: str, answer_a: str, answer_b: str) -> list[dict]:
        user = fill(self.pair, {"prompt": prompt, "answer_a": answer_a, "answer_b": answer_b})
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def score_messages(self, prompt: str, answer: str) -> list[dict]:
        user = fill(self.score, {"prompt": prompt, "answer": answer})
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]

    def retry_messages(self, messages: list[dict], reply: str) -> list[dict]:
        """The first exchange plus a follow-up turn: a new request, so the cache does not hand back the same reply."""
        return [*messages, {"role": "assistant", "content": reply}, {"role": "user", "content": self.retry}]


def _lines(text: str) -> dict[str, int]:
    """Line of each top-level key, for errors that point at the field to fix."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}


def load(path: str | Path) -> JudgePrompt:
    path = Path(path)
    label = path.as_posix()
    if not path.is_file():
        raise UserError(f"{label}: judge prompt file not found (eval.judge.prompt); restore it from git or point eval.judge.prompt at one")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{label}:{mark.line + 1}" if mark else label
        raise UserError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{label}: expected a mapping with the fields {', '.join(FIELDS)}")
    lines = _lines(text)
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UserError(f"{label}:{lines.get(unknown[0], 1)}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    for name, needed in FIELDS.items():
        value = data.get(name)
        at = f"{label}:{lines[name]}" if name in lines else label
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"{at}: field {name!r} must be non-empty text")
        # JSON examples in a template hold braces too: only {word} slots count, and only those of FIELDS.
        found = set(_SLOT.findall(value)) & {s for slots in FIELDS.values() for s in slots}
        missing = [s for s in needed if s not in found]
        stray = sorted(found - set(needed))
        if missing:
            raise UserError(f"{at}: field {name!r} must contain {', '.join('{' + s + '}' for s in missing)}")
        if stray:
            raise UserError(f"{at}: field {name!r} cannot use {', '.join('{' + s + '}' for s in stray)} "
                            f"(it takes {', '.join('{' + s + '}' for s in needed) or 'no placeholder'})")
    system = fill(data["system"], {"persona": data["persona"].strip(), "rubric": data["rubric"].strip()})
    return JudgePrompt(label, system.strip(), data["pair"].strip(), data["score"].strip(), data["retry"].strip())
