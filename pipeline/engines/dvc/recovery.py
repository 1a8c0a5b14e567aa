"""Recovery after a crash: what a kill -9 (of the app, of tenny, or of DVC) left in the repo.

The riskiest code in the app, so it stands alone. ``inspect_workspace`` only
reads and reports, each finding with the exact command that fixes it;
``repair_safe`` (run when the app starts) removes only DVC's own bookkeeping
of experiments that are provably dead, and never while a dvc command works
here (processes.py). Everything that could be someone's work is reported, not
touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.engines.dvc.cli import git
from pipeline.engines.dvc.processes import dvc_processes, pid_alive
from pipeline.engines.dvc.project import declared_outs, lock_outs, read_lock
from pipeline.engines.dvc.workspace import EXPS_TEMP, workspace_state

EXPS_RUN = ".dvc/tmp/exps/run"  # DVC's per-experiment pid and info files
_DVC_CHECKOUT = re.compile(r"^checkout: moving from (\S+) to ([0-9a-f]{40})$")
_CRASH_STAGED = ("params.yaml", "dvc.lock")  # what a workspace `dvc exp run` stages


@dataclass(frozen=True)
class Finding:
    """One thing a crash left in the repo: repaired, or the exact command that fixes it."""

    kind: str  # exec_refs | run_info | temp_copy | detached | staged | missing
    text: str
    fix: str = ""  # the command to run; "" when tenny repaired it
    repaired: bool = False
    targets: tuple[str, ...] = ()  # the refs or folders a repair removes: exactly those seen

    def line(self) -> str:
        if self.repaired:
            return f"repaired: {self.text}"
        return f"{self.text}: run `{self.fix}`" if self.fix else self.text


def _stale_run_files(root: Path) -> list[Path]:
    """DVC's folders for experiments whose process is gone without cleaning up.

    A running experiment's folder holds NAME.json with its pid, and DVC deletes that
    file whenever the run ends, even failed or cancelled; only a kill leaves it. A
    folder with just NAME.run is DVC's record of a finished run: not ours to touch.
    """
    run_dir = root / EXPS_RUN
    stale = []
    for folder in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        pidfile = folder / f"{folder.name}.json"
        try:
            pid = int(json.loads(pidfile.read_text()).get("pid"))
        except FileNotFoundError:
            continue
        except (OSError, ValueError, TypeError, AttributeError):
            pid = None  # half-written by a killed process
        if pid is None or not pid_alive(pid):
            stale.append(folder)
    return stale


def _detached_by_checkout(root: Path, head: str | None) -> str | None:
    """The branch HEAD left, when the latest reflog entry is a checkout from it to HEAD's commit."""
    if not head:
        return None
    done = git(root, "reflog", "-n", "1", "--format=%gs", "HEAD")
    found = _DVC_CHECKOUT.match(done.stdout.strip()) if done.returncode == 0 else None
    if not found or found.group(2) != head:
        return None
    branch = found.group(1)
    return branch if git(root, "rev-parse", "-q", "--verify", f"refs/heads/{branch}").returncode == 0 else None


def inspect_workspace(root: str | os.PathLike) -> list[Finding]:
    """What an earlier crash (a kill -9 of the app, of tenny, or of DVC itself) left behind.

    Read-only. Nothing is reported while a dvc command works in this repo: what it
    has in flight (refs, a detached HEAD, staged files) is its own business. A
    detached HEAD, staged params.yaml / dvc.lock and missing outputs are reported
    only with the marks a crashed experiment leaves (its EXEC refs or info files,
    or HEAD detached at its branch's own commit), so a person's own detached
    checkout or staged work does not raise an alarm.
    """
    root = Path(root)
    if git(root, "rev-parse", "--git-dir").returncode != 0:
        return []
    if dvc_processes(root):
        return []
    state = workspace_state(root)
    findings: list[Finding] = []
    stale = _stale_run_files(root)
    left_from = None if state.branch else _detached_by_checkout(root, state.head)
    at_tip = bool(left_from) and (git(root, "rev-parse", "-q", "--verify", f"refs/heads/{left_from}").stdout.strip()
                                  == state.head)
    crashed = bool(state.exec_refs or stale or state.temp_dirs or at_tip)
    if state.exec_refs:
        refs = sorted(state.exec_refs)
        findings.append(Finding("exec_refs", "stale experiment refs " + ", ".join(refs) + " (a crashed `dvc exp run` left them)",
                                "git update-ref -d " + " && git update-ref -d ".join(refs), targets=tuple(refs)))
    if stale:
        rel = tuple(str(p.relative_to(root)) for p in stale)
        findings.append(Finding("run_info", f"{len(stale)} stale experiment info folder(s) in {EXPS_RUN} "
                                "(their dvc process is gone)", "rm -r " + " ".join(rel), targets=rel))
    if state.temp_dirs:
        names = tuple(sorted(f"{EXPS_TEMP}/{name}" for name in state.temp_dirs))
        findings.append(Finding("temp_copy", "a killed experiment's copy " + ", ".join(names), "rm -rf " + " ".join(names),
                                targets=names))
    if left_from and crashed:
        findings.append(Finding("detached", f"HEAD is detached at {state.head[:7]} (it was on {left_from}; "
                                "a crashed `dvc exp run` leaves it so)", f"git checkout {left_from}"))
    if crashed:
        staged = [p for p in _CRASH_STAGED if p in state.staged]
        if staged:
            findings.append(Finding("staged", f"{', '.join(staged)} staged (a workspace `dvc exp run` stages them; "
                                    "restoring keeps their content)", "git restore --staged " + " ".join(staged)))
        findings += _missing_outputs(root)
    return findings


def _missing_outputs(root: Path) -> list[Finding]:
    """Outputs dvc.lock records that are gone from disk (DVC deletes them before their stage runs)."""
    outs = declared_outs(root)
    missing = [p for p in lock_outs(read_lock(root)) if p in outs and not (root / p).exists()]
    if not missing:
        return []
    tracked = set(git(root, "ls-files", "-z", "--", *missing).stdout.split("\0"))
    cached = [p for p in missing if outs[p][1]]
    in_git = [p for p in missing if not outs[p][1] and p in tracked]
    lost = [p for p in missing if not outs[p][1] and p not in tracked]
    findings = []
    if cached:
        findings.append(Finding("missing", "missing outputs " + ", ".join(cached), "dvc checkout " + " ".join(cached)))
    if in_git:
        findings.append(Finding("missing", "missing metrics " + ", ".join(in_git), "git checkout -- " + " ".join(in_git)))
    for p in lost:
        findings.append(Finding("missing", f"{p} is gone (not cached by DVC)", f"dvc repro {outs[p][0]}"))
    return findings


def repair_safe(root: str | os.PathLike) -> list[Finding]:
    """``inspect_workspace``, then repair what is DVC's bookkeeping and no one's work: stale
    EXEC refs, info folders of dead experiments and killed experiments' copies, all only
    while no dvc command works here. Everything else is returned with its command."""
    root = Path(root)
    findings = inspect_workspace(root)
    if not findings or dvc_processes(root):  # one started meanwhile: what it made is its own
        return findings
    out = []
    for f in findings:
        if f.kind == "exec_refs":
            if any(git(root, "update-ref", "-d", ref).returncode != 0 for ref in f.targets):
                out.append(f)
                continue
        elif f.kind in ("run_info", "temp_copy"):
            for rel in f.targets:
                shutil.rmtree(root / rel, ignore_errors=True)
        else:
            out.append(f)
            continue
        out.append(Finding(f.kind, f"removed {f.text}", repaired=True, targets=f.targets))
    return out
