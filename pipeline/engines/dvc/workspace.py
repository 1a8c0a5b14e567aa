"""Leaving the workspace as the user left it: a snapshot before a run, settling after it.

The tool never harms the repo it runs in. Before a run the app takes a
``WorkspaceState`` and backs up the outputs no cache could bring back; after a
run (finished, failed or cancelled) ``settle_workspace`` puts back what the run
changed that the user did not ask for, and names the command for anything it
could not safely repair. What an earlier crash left is recovery.py's job.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.engines.dvc.cli import git, last_error, run_dvc
from pipeline.engines.dvc.project import declared_outs

EXPS_TEMP = ".dvc/tmp/exps/standalone"  # where `dvc exp run --temp` builds its copies
BACKUP = ".dvc/tmp/tenny-backup"  # uncached outputs (metrics, dvclive) saved before a repro


@dataclass(frozen=True)
class WorkspaceState:
    """What a run must not change behind the user's back."""

    branch: str | None  # refs/heads/NAME; None when detached or not a git repository
    head: str | None
    staged: frozenset[str]
    exec_refs: frozenset[str]  # refs/exps/exec/EXEC_*: DVC's bookkeeping while an experiment runs
    outs: frozenset[str]  # declared outputs present on disk
    temp_dirs: frozenset[str]


def workspace_state(root: str | os.PathLike) -> WorkspaceState:
    root = Path(root)
    branch = head = None
    staged: frozenset[str] = frozenset()
    refs: frozenset[str] = frozenset()
    if git(root, "rev-parse", "--git-dir").returncode == 0:
        found = git(root, "symbolic-ref", "-q", "HEAD")
        branch = found.stdout.strip() or None if found.returncode == 0 else None
        head = git(root, "rev-parse", "-q", "--verify", "HEAD").stdout.strip() or None
        staged = frozenset(git(root, "diff", "--cached", "--name-only", "-z").stdout.split("\0")) - {""}
        refs = frozenset(git(root, "for-each-ref", "--format=%(refname)", "refs/exps/exec").stdout.split())
    temp = root / EXPS_TEMP
    temps = frozenset(p.name for p in temp.glob("tmp*")) if temp.is_dir() else frozenset()
    outs = frozenset(p for p in declared_outs(root) if (root / p).exists())
    return WorkspaceState(branch, head, staged, refs, outs, temps)


def backup_uncached(root: str | os.PathLike) -> Path:
    """Copy the uncached outputs (``cache: false`` metrics, dvclive plots) that exist:
    DVC deletes them before it runs their stage, and no cache could bring them back."""
    root = Path(root)
    dest = root / BACKUP
    shutil.rmtree(dest, ignore_errors=True)
    for path, (_, cached) in declared_outs(root).items():
        src = root / path
        if cached or not src.exists():
            continue
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / path, symlinks=True)
        else:
            shutil.copy2(src, dest / path)
    return dest


def _restore_uncached(root: Path, path: str) -> bool:
    saved = root / BACKUP / path
    if not saved.exists():
        return False
    target = root / path
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if saved.is_dir():
        shutil.copytree(saved, target, symlinks=True)
    else:
        shutil.copy2(saved, target)
    return True


def settle_workspace(root: str | os.PathLike, before: WorkspaceState, *, interrupted_stage: str | None = None,
                     restore: bool = False) -> list[str]:
    """After a run: put back what it changed that the user did not ask for.

    Returns one line per finding: what was repaired, or the exact command that
    fixes what could not be repaired safely. ``restore`` (a cancelled or failed
    run) also brings back the outputs that were on disk before, the interrupted
    stage's from the DVC cache and its uncached ones from the backup.
    """
    root = Path(root)
    notes: list[str] = []
    now = workspace_state(root)
    if before.branch and now.branch != before.branch:
        tip = git(root, "rev-parse", "-q", "--verify", before.branch).stdout.strip()
        name = before.branch.removeprefix("refs/heads/")
        if now.branch is None and tip and tip == now.head:
            # Detached at the branch's own commit: re-attaching changes no file.
            git(root, "symbolic-ref", "HEAD", before.branch)
            notes.append(f"repaired: HEAD was left detached; back on {name}")
        else:
            notes.append(f"HEAD is no longer on {name}: run `git checkout {name}`")
    for ref in sorted(now.exec_refs - before.exec_refs):
        git(root, "update-ref", "-d", ref)
        notes.append(f"repaired: removed the stray experiment ref {ref}")
    new_staged = sorted(now.staged - before.staged)
    if new_staged:
        done = git(root, "restore", "--staged", "--", *new_staged)
        if done.returncode == 0:
            notes.append("repaired: unstaged " + ", ".join(new_staged) + " (the files keep their content)")
        else:
            notes.append("staged by the run: " + ", ".join(new_staged) + ": run `git restore --staged -- "
                         + " ".join(new_staged) + "`")
    for name in sorted(now.temp_dirs - before.temp_dirs):
        shutil.rmtree(root / EXPS_TEMP / name, ignore_errors=True)
        notes.append(f"repaired: removed the killed experiment's copy {EXPS_TEMP}/{name}")
    if restore:
        notes += _restore_outputs(root, before, interrupted_stage)
    shutil.rmtree(root / BACKUP, ignore_errors=True)
    return notes


def _restore_outputs(root: Path, before: WorkspaceState, stage: str | None) -> list[str]:
    outs = declared_outs(root)
    wanted = {p for p, (s, _) in outs.items() if s == stage and p in before.outs}
    wanted |= {p for p in before.outs if p in outs and not (root / p).exists()}
    notes = []
    cached = sorted(p for p in wanted if outs[p][1])
    if cached:
        done = run_dvc(["checkout", "--force", *cached], root, timeout=600)
        if done.returncode == 0:
            notes.append("restored from the DVC cache: " + ", ".join(cached))
        else:
            notes.append(f"could not restore {', '.join(cached)} ({last_error(done.stderr or done.stdout)}): "
                         f"run `dvc checkout --force {' '.join(cached)}`")
    for path in sorted(p for p in wanted if not outs[p][1]):
        if _restore_uncached(root, path):
            notes.append(f"restored {path} as it was before the run")
        elif not (root / path).exists() and git(root, "checkout", "--", path).returncode == 0:
            # Uncached metrics live in git: the index holds the last version the user staged.
            notes.append(f"restored {path} from git")
        elif not (root / path).exists():
            notes.append(f"{path} is gone (not cached by DVC): run `dvc repro {outs[path][0]}` to rebuild it")
    return notes
