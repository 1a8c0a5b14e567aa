"""Experiment overrides (``train.lr=1e-3``) checked against the params schema before DVC sees them.

DVC writes ``dvc exp run -S`` values into params.yaml and deletes the stage's
outputs before the stage command can reject them, so a typo would cost
outputs. Checking an override is params validation, so it lives here beside
the schema (``params``), not with the code that starts runs.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import yaml

from pipeline.core.errors import UserError
from pipeline.core.params import apply_override, flatten, parse_override, validate


def parse_overrides(text: str) -> list[str]:
    """'train.lr=1e-3 train.lora.r=16' (spaces or commas) → ['train.lr=1e-3', 'train.lora.r=16']."""
    items = [x for x in re.split(r"[\s,]+", text.strip()) if x]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected dotted.key=value, e.g. train.lora.r=16")
    return items


def read_yaml(path: Path) -> object:
    """A YAML file's content; None when it is missing; a UserError naming the file when it does not parse."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({getattr(err, 'problem', err)}); fix the file") from None


def check_overrides(root: str | os.PathLike, items: list[str]) -> list[str]:
    """``items`` checked by tenny's own params schema; nothing is written.

    An unknown key (with the closest allowed one), a wrong type or a value out
    of range is a UserError, and so is an override that changes nothing (it
    would only repeat the current run).
    """
    path = Path(root) / "params.yaml"
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections; fix the file first")
    current = validate(copy.deepcopy(data), source=str(path)).model_dump()
    changed = copy.deepcopy(data)
    keys = []
    for item in items:
        key, value = parse_override(item)
        apply_override(changed, key, value)
        keys.append(key)
    after = validate(changed, source="override").model_dump()
    old, new = flatten(current), flatten(after)
    same = [k for k in keys if k in old and old[k] == new.get(k)]
    if same and len(same) == len(keys):
        now = ", ".join(f"{k} is already {old[k]!r}" for k in same)
        raise UserError(f"{now} in params.yaml: nothing to try (change a value to run an experiment)")
    return items
