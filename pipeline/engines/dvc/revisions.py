"""Files, params and metrics at a revision: a git commit, branch, tag, experiment name, or the workspace.

``dvc.api`` reads both DVC-tracked outputs (from the cache) and plain git
files, and resolves experiment names, so the diff, the judge and the app ask
here rather than choosing between git and DVC themselves. When a read fails,
the error says which of the two lacks it and what to run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from pipeline.core.errors import UserError
from pipeline.engines.dvc.cli import git_show
from pipeline.engines.dvc.project import lock_outs, read_lock

WORKSPACE = "workspace"  # DVC's own name for the working tree in exp show / params diff


def is_workspace(rev: str | None) -> bool:
    return rev is None or rev in (WORKSPACE, ".", "")


def tracked_by_dvc(root: Path, path: str, rev: str | None) -> bool:
    """Whether ``path`` is a DVC output at ``rev``: a .dvc file names it, or dvc.lock
    lists it or a folder holding it (read through the one lock reader, project.py)."""
    if is_workspace(rev):
        if (root / f"{path}.dvc").exists():
            return True
        lock_rev = None
    else:
        if git_show(root, rev, f"{path}.dvc") is not None:
            return True
        lock_rev = rev
    try:
        outs = lock_outs(read_lock(root, lock_rev))
    except UserError:  # a broken dvc.lock there: it tracks nothing we can name
        return False
    return any(path == out or path.startswith(out.rstrip("/") + "/") for out in outs)


def _map_dvc_error(err: Exception, root: Path, path: str | None, rev: str | None) -> UserError:
    from dvc.exceptions import NotDvcRepoError, PathMissingError
    from dvc.scm import RevError, SCMError

    at = "the workspace" if is_workspace(rev) else f"revision {rev!r}"
    if isinstance(err, RevError):
        return UserError(f"revision {rev!r} not found in {root}: use a commit, branch, tag or experiment name "
                         "(see `git log --oneline` and `dvc exp list`)")
    if isinstance(err, PathMissingError) and path and tracked_by_dvc(root, path, rev):
        return UserError(f"{path!r} at {at} is tracked by DVC but its data is not in the local cache: "
                         "run `dvc pull` (or `dvc fetch --all-commits`) and try again")
    if isinstance(err, PathMissingError):
        return UserError(f"{path!r} is not in the repository at {at} (neither DVC-tracked nor in git): "
                         "pick a revision where it exists, or pass another PATH")
    if isinstance(err, NotDvcRepoError):
        return UserError(f"{root} is not a DVC repository: cd into your tenny project, or run `dvc init`")
    if isinstance(err, SCMError):
        return UserError(f"{root}: {err} (a revision needs a git repository: run `git init` and commit)")
    if isinstance(err, FileNotFoundError):
        return UserError(f"{path!r} at {at} is tracked by DVC but its data is not in the local cache: "
                         f"run `dvc pull` (or `dvc fetch --all-commits`) and try again")
    return UserError(f"{path!r} at {at}: {err}")


@contextmanager
def open_at(root: str | os.PathLike, path: str, rev: str | None) -> Iterator[IO[bytes]]:
    """A file as it was at ``rev`` (git revision, experiment name, or workspace)."""
    root = Path(root).resolve()
    if is_workspace(rev) and (root / path).is_file():
        with open(root / path, "rb") as fh:
            yield fh
        return
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        cm = dvc.api.open(path, repo=str(root), rev=None if is_workspace(rev) else rev, mode="rb")
        fh = cm.__enter__()
    except (DvcException, FileNotFoundError) as err:
        raise _map_dvc_error(err, root, path, rev) from None
    try:
        yield fh
    finally:
        cm.__exit__(None, None, None)


def exists_at(root: str | os.PathLike, path: str, rev: str | None) -> bool:
    try:
        with open_at(root, path, rev):
            return True
    except UserError as err:
        if "not in the repository" in str(err):
            return False
        raise


def check_rev(root: str | os.PathLike, rev: str) -> str:
    """The commit sha ``rev`` names (experiment names included); a UserError naming it otherwise."""
    if is_workspace(rev):
        return WORKSPACE
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import resolve_rev

    root = Path(root).resolve()
    try:
        with Repo(str(root)) as repo:
            return resolve_rev(repo.scm, rev)
    except DvcException as err:
        raise _map_dvc_error(err, root, None, rev) from None


def _repo_diff(kind: str, root: str | os.PathLike, a: str, b: str) -> dict[str, dict[str, dict]]:
    """{file: {key: {"old", "new", "diff"?}}} for params or metrics between two revisions."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    root = Path(root).resolve()
    try:
        with Repo(str(root)) as repo:
            api = repo.params if kind == "params" else repo.metrics
            result = api.diff(a_rev=a or WORKSPACE, b_rev=b or WORKSPACE, all=True)
    except DvcException as err:
        raise _map_dvc_error(err, root, None, a) from None
    diff = result.get("diff", result) if isinstance(result, dict) else {}
    return {f: v for f, v in (diff or {}).items() if isinstance(v, dict)}


def params_diff(root: str | os.PathLike, a: str, b: str) -> dict[str, dict[str, dict]]:
    return _repo_diff("params", root, a, b)


def metrics_diff(root: str | os.PathLike, a: str, b: str) -> dict[str, dict[str, dict]]:
    return _repo_diff("metrics", root, a, b)
