"""Checkpoints a long run can trust: complete or absent, of this run or ignored.

The trainer writes ``.tenny/checkpoints/run-<id>/checkpoint-<step>/`` (adapter,
optimizer, scheduler, RNG states, trainer state: the data position). A
checkpoint counts only once ``tenny_checkpoint.json`` is in it: that marker is
written last, atomically, after every other file is on disk, so a kill or a
full disk mid-save leaves a folder that resume ignores and the next save
removes, and the previous checkpoint intact.

``<id>`` is the run identity (engines/run_identity.py: params, data, base,
code, init adapter, processes); ``identity.json`` beside the checkpoints keeps
its parts, so a run of another identity is ignored with a note that names what
differs, never mixed in. A finished run is never a resume point: once its
adapter is staged, ``run_finished.json`` marks it (no checkpoint of it counts
from then on) and the folder is removed after the adapter is swapped in.

Checkpoints are a run's scratch, not an output: they live under ``.tenny/``
(local, git-ignored, outside DVC), so a pulled pipeline is up to date without
them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.records import write_json

MARKER = "tenny_checkpoint.json"
PREFIX = "checkpoint-"
IDENTITY = "identity.json"
FINISHED = "run_finished.json"


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
    """Complete checkpoints of one run, oldest first; none once the run has finished."""
    if not run_dir.is_dir() or (run_dir / FINISHED).exists():
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


def prune(run_dir: Path, keep: int, protect: Path | None = None) -> list[Path]:
    """Remove incomplete checkpoints and all but the ``keep`` newest complete ones (and ``protect``:
    the best one so far, which early stopping restores at the end)."""
    keep_paths = {c.path for c in complete(run_dir)[-keep:]} | ({run_dir / Path(protect).name} if protect else set())
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


def begin_run(run_dir: Path, identity: dict) -> None:
    """Start (or continue) a run: its identity beside its checkpoints, to name what differs later.

    A folder a finished run left (killed between its last two steps) is cleared
    first: its marker would hide the new run's checkpoints from resume.
    """
    if (run_dir / FINISHED).exists():
        remove_run(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / IDENTITY, identity)


def read_identity(run_dir: Path) -> dict | None:
    """The identity parts a run folder recorded (None for a folder without them)."""
    try:
        return json.loads((run_dir / IDENTITY).read_text(encoding="utf-8")).get("parts")
    except (OSError, ValueError, AttributeError):
        return None


def mark_finished(run_dir: Path, info: dict) -> None:
    """From now on the run has no resume point: its adapter is written (or being swapped in)."""
    write_json(run_dir / FINISHED, info)


def remove_run(run_dir: Path) -> None:
    """A finished run's checkpoints are of no further use: free their disk."""
    shutil.rmtree(run_dir, ignore_errors=True)
