"""DVC remotes: the one params.yaml names, and the arguments for push, pull and cloud status.

A remote's url lives in .dvc/config.local (per machine, not in git), so the
laptop and the GPU box can each keep their own path or credentials for the
same remote name; params.yaml only says which remote and where, once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipeline.engines.dvc.cli import DvcError, dvc_json, last_error, run_dvc


def configure_remote(root: str | os.PathLike, name: str, url: str) -> None:
    """Point remote ``name`` at ``url`` and make it the default, in .dvc/config.local."""
    done = run_dvc(["remote", "add", "--local", "--force", "--default", name, url], root, timeout=60)
    if done.returncode != 0:
        raise DvcError(f"could not set DVC remote {name!r} to {url!r}: {last_error(done.stderr or done.stdout)}")


def remotes(root: str | os.PathLike) -> dict[str, str]:
    """{name: url} of every remote DVC's merged config knows.

    Read from `dvc config --list` (one ``remote.NAME.url=URL`` per line), not from
    `dvc remote list`, whose table wraps a long url at the terminal's width.
    """
    done = run_dvc(["config", "--list"], root, timeout=60)
    if done.returncode != 0:  # a failed listing is not "no remotes"
        raise DvcError(f"could not list DVC remotes: {last_error(done.stderr or done.stdout)}")
    out = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith("remote.") and key.endswith(".url"):
            out[key[len("remote."):-len(".url")]] = value
    return out


def ensure_remote(root: str | os.PathLike, remote_params: Any) -> str | None:
    """Apply params' remote (if it names a url); return the remote name to use, or None for DVC's default."""
    if getattr(remote_params, "url", None):
        url = remote_params.url
        # A relative folder is relative to the project, as a user reading params.yaml expects.
        if "://" not in url and not os.path.isabs(url):
            url = str((Path(root) / url).resolve())
        configure_remote(root, remote_params.name, url)
        return remote_params.name
    return None


def push_args(remote: str | None = None) -> list[str]:
    return ["push"] + (["-r", remote] if remote else [])


def pull_args(remote: str | None = None) -> list[str]:
    return ["pull"] + (["-r", remote] if remote else [])


def cloud_status_args(remote: str | None = None) -> list[str]:
    return ["status", "-c"] + (["-r", remote] if remote else [])


def cloud_status(root: str | os.PathLike, remote: str | None = None) -> dict[str, Any]:
    """`dvc status -c --json`: {path: "new" | "deleted" | "missing" | ...}; {} when in sync."""
    data = dvc_json(cloud_status_args(remote), root)
    return data if isinstance(data, dict) else {}
