"""Prompt files (data/prompts/<name>.yaml): what to ask the model, in one of five modes.

A prompt file holds a system persona, optional example turns, a user template
with ``{slots}``, and a grid of slot values expanded as a cartesian product (or
a seeded sample of it). Only ``{identifier}`` is a slot, so JSON braces in a
template need no escaping. Mistakes are one-line errors naming the file and
field (docs/synthesize.md lists every field).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.errors import UserError

SLOT = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MODES = ("lines", "single", "pairs", "conversations", "rewrite")

# Slots each mode fills itself, on top of the grid's.
BUILTIN_SLOTS: dict[str, tuple[str, ...]] = {
    "lines": ("n",),
    "single": (),
    "pairs": ("chunk", "n", "n_idk", "source"),
    "conversations": ("turns",),
    "rewrite": ("text",),
}
# A template that does not use these would send the same thing for every item.
REQUIRED_SLOTS: dict[str, str] = {"pairs": "chunk", "rewrite": "text"}


class Example(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str
    assistant: str


class Labels(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = "User"
    assistant: str = "Assistant"


class PromptFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["lines", "single", "pairs", "conversations", "rewrite"] = "lines"
    system: str = ""
    examples: list[Example] = Field(default_factory=list)
    user: str
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    sample: int | None = Field(None, ge=1, description="a seeded sample of this many grid cells")
    seed: int = 0
    nonce: bool = False
    repeat: int = Field(1, ge=1, description="ask each grid cell this many times (needs nonce: true)")
    per_response: int = Field(10, ge=1, description="lines: samples per response; pairs: pairs per chunk")
    # pairs
    docs: str | None = Field(None, description="glob of source documents, e.g. data/docs/*.md")
    chunk_chars: int = Field(1500, ge=200)
    idk_share: float = Field(0.2, ge=0, le=1, description="share of 'I don't know' pairs per chunk")
    # conversations
    turns: int = Field(3, ge=1, description="user turns per conversation")
    labels: Labels = Field(default_factory=Labels)
    train_system: str | None = Field(None, description="system message written into each conversation record")
    # rewrite
    input: str | None = Field(None, description="records file whose samples are rewritten")

    # set after loading
    path: str = ""

    def slots_used(self) -> list[str]:
        return list(dict.fromkeys(SLOT.findall(self.user)))


def load(path: str | Path) -> PromptFile:
    """Read and check one prompt file; every problem is a UserError naming file and field."""
    path = Path(path)
    where = path.as_posix()
    if not path.is_file():
        raise UserError(f"{where}: prompt file not found; create it (see data/prompts/persona.yaml) or fix synthesize.prompts")
    try:
        # the C loader when PyYAML has it: a grid of thousands of values loads in milliseconds
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise UserError(f"{where}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not valid UTF-8; re-save it as UTF-8") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: must be a mapping with at least 'user' (the template) and 'grid'")
    try:
        pf = PromptFile.model_validate({k: v for k, v in data.items() if k != "path"})
    except ValidationError as err:
        raise UserError(f"{where}: {_first_error(err)}") from None
    pf.path = where
    check(pf)
    return pf


def _first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"])
    if e["type"] == "extra_forbidden":
        allowed = [f for f in PromptFile.model_fields if f != "path"]
        hint = difflib.get_close_matches(str(e["loc"][-1]), allowed, n=1)
        return f"unknown field '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "") + f"; allowed: {', '.join(allowed)}"
    if e["type"] == "missing":
        return f"{key}: missing; add it (see docs/synthesize.md)"
    return f"{key}: {e['msg']}"


def check(pf: PromptFile) -> None:
    where = pf.path
    builtins = BUILTIN_SLOTS[pf.mode]
    for name, values in pf.grid.items():
        if not SLOT.fullmatch("{" + str(name) + "}"):
            raise UserError(f"{where}: grid.{name}: slot names are identifiers (letters, digits, _)")
        if not values:
            raise UserError(f"{where}: grid.{name}: empty list; give at least one value or remove the slot")
        if name in builtins:
            raise UserError(f"{where}: grid.{name}: '{name}' is filled by mode {pf.mode}; rename the slot")
    if not pf.grid and pf.mode in ("lines", "single", "conversations"):
        raise UserError(f"{where}: grid is empty; mode {pf.mode} needs at least one slot, e.g. grid: {{topic: [airports, gyms]}}")
    used = pf.slots_used()
    known = list(pf.grid) + list(builtins)
    for name in used:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            raise UserError(
                f"{where}: user: unknown slot {{{name}}}"
                + (f" (did you mean {{{hint[0]}}}?)" if hint else "")
                + f"; known slots: {', '.join(known) or 'none'}; add it to grid or fix the template"
            )
    if not used:
        raise UserError(f"{where}: user: the template references no slot, so every request would be the same; use slots such as {{{(known or ['topic'])[0]}}}")
    required = REQUIRED_SLOTS.get(pf.mode)
    if required and required not in used:
        raise UserError(f"{where}: user: mode {pf.mode} needs the slot {{{required}}} in the template")
    grid_used = [name for name in used if name in pf.grid]
    if pf.grid and not grid_used:
        raise UserError(f"{where}: user: no grid slot is used ({', '.join(pf.grid)}); use them or remove grid")
    if pf.repeat > 1 and not pf.nonce:
        raise UserError(f"{where}: repeat: {pf.repeat} needs nonce: true, or the repeats are the same request (and the cache answers them once)")
    if pf.mode == "pairs" and not pf.docs:
        raise UserError(f"{where}: docs: mode pairs needs a glob of source documents, e.g. docs: data/docs/*.md")
    if pf.mode == "rewrite" and not pf.input:
        raise UserError(f"{where}: input: mode rewrite needs a records file to rewrite, e.g. input: data/docs/persona_samples.jsonl")


def fill(template: str, slots: dict[str, Any]) -> str:
    return SLOT.sub(lambda m: str(slots[m.group(1)]) if m.group(1) in slots else m.group(0), template)
