"""The project as DVC defines it: dvc.yaml's stages, their state, their outputs, and dvc.lock.

This is the one reader of dvc.lock's structure (``lock_outs``, ``locked_stages``):
the Pipeline screen's states, the crash check's missing outputs, the diff's
changed outputs and the revisions door's "tracked by DVC?" all go through it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.errors import UserError
from pipeline.core.overrides import read_yaml
from pipeline.core.params import flatten
from pipeline.engines.dvc.cli import dvc_json, git_show

LOCK = "dvc.lock"


@dataclass
class StageState:
    name: str
    state: str  # "up to date" | "changed" | "never run" | "unknown"
    detail: str = ""  # what changed, in DVC's words
    cmd: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # last values, from the stage's metrics files


def stage_definitions(root: str | os.PathLike) -> dict[str, dict]:
    """Stages of dvc.yaml in file order (the order people wrote them: the flow)."""
    root = Path(root)
    data = read_yaml(root / "dvc.yaml")
    if data is None:
        if not (root / ".dvc").is_dir():
            raise UserError(f"{root} is not a DVC repository: cd into your tenny project, or run `dvc init`")
        raise UserError(f"{root / 'dvc.yaml'} is missing: this project has no pipeline yet")
    stages = (data or {}).get("stages") or {}
    return {name: (spec or {}) for name, spec in stages.items()}


# ---------------------------------------------------------------- dvc.lock


def read_lock(root: str | os.PathLike, rev: str | None = None) -> Any:
    """dvc.lock parsed: the workspace's (``rev`` None), or the one git holds at ``rev``.
    None where there is none; a UserError naming the file when it is not YAML."""
    root = Path(root)
    if rev is None:
        return read_yaml(root / LOCK)
    text = git_show(root, rev, LOCK)
    try:
        return yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError as err:
        raise UserError(f"{LOCK} at {rev}: not valid YAML ({getattr(err, 'problem', err)})") from None


def _lock_stages(lock: Any) -> dict:
    stages = lock.get("stages") if isinstance(lock, dict) else None
    return stages if isinstance(stages, dict) else {}


def lock_outs(lock: Any) -> dict[str, tuple[str, str | None]]:
    """A parsed dvc.lock → {out path: (stage, hash)} (DVC 3 writes md5; etag for cloud outs)."""
    out: dict[str, tuple[str, str | None]] = {}
    for stage, entry in _lock_stages(lock).items():
        for o in (entry or {}).get("outs") or []:
            if isinstance(o, dict) and "path" in o:
                out[str(o["path"])] = (str(stage), o.get("md5") or o.get("hash") or o.get("etag"))
    return out


def locked_stages(lock: Any) -> set[str]:
    """The stages a parsed dvc.lock records (foreach stages as NAME@KEY)."""
    return {str(name) for name in _lock_stages(lock)}


# ---------------------------------------------------------------- stage state


def _describe_changes(entries: list) -> str:
    """`dvc status` entries for one stage, in words: "deps count.py modified, params.yaml train.lr modified".

    DVC reports a params file as {param: change}; each param is named, never shown as a dict.
    """
    parts = []
    for entry in entries:
        if isinstance(entry, str):
            parts.append(entry.removeprefix("changed "))
        elif isinstance(entry, dict):
            for kind, files in entry.items():
                kind = str(kind).removeprefix("changed ")
                if not isinstance(files, dict):
                    parts.append(kind)
                    continue
                words = []
                for path, change in files.items():
                    if isinstance(change, dict):
                        words += [f"{path} {key} {how}" for key, how in change.items()]
                    else:
                        words.append(f"{path} {change}")
                parts.append(f"{kind} " + ", ".join(words))
    return "; ".join(parts)


def metric_files(spec: dict) -> list[str]:
    """The metrics files one stage of dvc.yaml declares."""
    files = []
    for entry in spec.get("metrics") or []:
        files.extend([entry] if isinstance(entry, str) else list(entry))
    return files


def read_metrics_file(path: Path) -> dict[str, Any]:
    """A metrics file's scalar values, flattened; {} for a missing or half-written file."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return {k: v for k, v in flatten(data).items() if isinstance(v, (int, float, str, bool)) or v is None}


def stage_states(root: str | os.PathLike, *, timeout: float = 120) -> list[StageState]:
    """Every stage with its state from DVC: not in dvc.lock → never run; listed
    by `dvc status` → changed; else up to date."""
    root = Path(root)
    defs = stage_definitions(root)
    locked = locked_stages(read_lock(root))
    status = dvc_json(["status"], root, timeout=timeout)
    if not isinstance(status, dict):
        status = {}
    out = []
    for name, spec in defs.items():
        entries = status.get(name) or status.get(f"dvc.yaml:{name}")
        if name not in locked and not any(k.startswith(f"{name}@") for k in locked):
            state, detail = "never run", _describe_changes(entries or [])
        elif entries:
            state, detail = "changed", _describe_changes(entries)
        else:
            state, detail = "up to date", ""
        metrics: dict[str, Any] = {}
        for mfile in metric_files(spec):
            metrics.update(read_metrics_file(root / mfile))
        cmd = spec.get("cmd", "")
        out.append(StageState(name, state, detail, " && ".join(cmd) if isinstance(cmd, list) else str(cmd), metrics))
    return out


def declared_outs(root: str | os.PathLike) -> dict[str, tuple[str, bool]]:
    """The outputs dvc.yaml declares (outs, metrics, plots) that DVC deletes before
    their stage runs: path → (stage, cached). ``persist`` ones are left alone by DVC."""
    out: dict[str, tuple[str, bool]] = {}
    try:
        defs = stage_definitions(root)
    except UserError:
        return out
    for stage, spec in defs.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in spec.get(kind) or []:
                items = {entry: {}} if isinstance(entry, str) else entry if isinstance(entry, dict) else {}
                for path, opts in items.items():
                    opts = opts if isinstance(opts, dict) else {}
                    if not opts.get("persist"):
                        out[str(path)] = (stage, bool(opts.get("cache", True)))
    return out
