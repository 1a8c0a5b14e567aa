"""Checkpoints a long run can trust: complete or absent, of this run or ignored.

The trainer writes ``models/checkpoints/run-<id>/checkpoint-<step>/`` (adapter,
optimizer, scheduler, RNG states, trainer state: the data position). A
checkpoint counts only once ``tenny_checkpoint.json`` is in it: that marker is
written last, atomically, after every other file is on disk, so a kill or a
full disk mid-save leaves a folder that resume ignores and the next save
removes, and the previous checkpoint intact.

``<id>`` is a hash of what decides the adapter's weights (train params but the
bookkeeping ones, the data files, the base): a checkpoint of another run
lives in another folder and is never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.records import write_json

MARKER = "tenny_checkpoint.json"
PREFIX = "checkpoint-"
# Knobs that change when and how a run saves or reports, never the weights it reaches.
BOOKKEEPING = {"resume", "save_every", "keep_checkpoints", "eval_every", "threads"}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_id(train_params: dict, data_files: list[Path], base_info: dict) -> str:
    """The run's identity: same id ⇔ same params (bookkeeping aside), data and base."""
    knobs = {k: v for k, v in train_params.items() if k not in BOOKKEEPING}
    blob = json.dumps({"train": knobs, "data": [file_digest(f) for f in data_files], "base": base_info},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    step: int
    info: dict


def step_of(folder: Path) -> int | None:
    name = folder.name
    if not name.startswith(PREFIX) or not name[len(PREFIX):].isdigit():
        return None
    return int(name[len(PREFIX):])


def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder`` if it is complete, else None."""
    step = step_of(folder)
    marker = folder / MARKER
    if step is None or not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return Checkpoint(folder, step, info)


def complete(run_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints of one run, oldest first."""
    if not run_dir.is_dir():
        return []
    found = [c for c in (read_checkpoint(f) for f in run_dir.iterdir() if f.is_dir()) if c is not None]
    return sorted(found, key=lambda c: c.step)


def mark_complete(folder: Path, info: dict) -> None:
    """Seal a checkpoint the trainer has finished writing: its files first, then the marker."""
    for f in folder.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    write_json(folder / MARKER, info)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)  # the marker's directory entry, too
    finally:
        os.close(fd)


def prune(run_dir: Path, keep: int) -> list[Path]:
    """Remove incomplete checkpoints and all but the ``keep`` newest complete ones."""
    keep_paths = {c.path for c in complete(run_dir)[-keep:]}
    removed = []
    for f in sorted(run_dir.iterdir()):
        if f.is_dir() and step_of(f) is not None and f not in keep_paths:
            shutil.rmtree(f, ignore_errors=True)
            removed.append(f)
    return removed


def other_runs(root: Path, current: Path) -> list[Path]:
    """Run folders beside ``current`` that hold a complete checkpoint (reported, never used)."""
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.is_dir() and d != current and complete(d)]


def check_compatible(ckpt: Checkpoint, base_model: str, lora: dict) -> None:
    """Refuse, by name, a checkpoint made for another base or another LoRA shape."""
    theirs_base = ckpt.info.get("base_model")
    theirs_lora = ckpt.info.get("lora", {})
    shape = ("r", "target_modules")
    if theirs_base != base_model or any(theirs_lora.get(k) != lora.get(k) for k in shape):
        raise UserError(
            f"{ckpt.path}: made for base {theirs_base!r} with LoRA "
            f"{ {k: theirs_lora.get(k) for k in shape} }, this run trains {base_model!r} with "
            f"{ {k: lora.get(k) for k in shape} }; refused. Set train.resume: auto (or never) to start from this run's own checkpoints")
