"""``dvc exp show`` as rows: the workspace, baseline commits and their experiments.

DVC's JSON nests experiments under their baseline and params / metrics under
their files; the experiments screen wants one flat row per run with dotted
keys, and a revision it can hand to the diff (revisions.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline.core.params import flatten
from pipeline.engines.dvc.cli import dvc_json
from pipeline.engines.dvc.revisions import WORKSPACE


@dataclass
class ExpRow:
    name: str  # experiment or branch name; "workspace"
    rev: str  # full sha, or "workspace"
    parent: str | None  # baseline commit for an experiment
    timestamp: str | None
    params: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None

    @property
    def ref(self) -> str:
        """What to pass as a revision to diff this row (dvc.api resolves experiment names)."""
        if self.rev == WORKSPACE:
            return WORKSPACE
        return self.name if self.name and self.parent else self.rev


def _values(section: dict | None) -> dict[str, Any]:
    """{file: {"data": {...}}} → flat {key: value}; the file name only where keys collide."""
    out: dict[str, Any] = {}
    owners: dict[str, str] = {}
    for fname, payload in (section or {}).items():
        data = (payload or {}).get("data") or {}
        for key, value in flatten(data).items():
            if key in out and owners[key] != fname:
                out[f"{fname}:{key}"] = value
            else:
                out[key] = value
                owners[key] = fname
    return out


def parse_exp_show(data: list) -> list[ExpRow]:
    rows: list[ExpRow] = []

    def row(entry: dict, parent: str | None) -> ExpRow:
        d = entry.get("data") or {}
        err = entry.get("error")
        return ExpRow(
            name=entry.get("name") or (WORKSPACE if entry.get("rev") == WORKSPACE else str(entry.get("rev", ""))[:7]),
            rev=entry.get("rev", ""), parent=parent, timestamp=d.get("timestamp"),
            params=_values(d.get("params")), metrics=_values(d.get("metrics")),
            error=(err.get("msg") if isinstance(err, dict) else err) or None,
        )

    for top in data or []:
        rows.append(row(top, None))
        for exp in top.get("experiments") or []:
            for rev in exp.get("revs") or []:
                r = row(rev, top.get("rev"))
                r.name = rev.get("name") or exp.get("name") or r.name
                rows.append(r)
    return rows


def exp_show(root: str | os.PathLike) -> list[ExpRow]:
    """The workspace, the baseline commit(s) and their experiments, as `dvc exp show` sees them."""
    return parse_exp_show(dvc_json(["exp", "show"], root))
