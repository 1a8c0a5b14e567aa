"""Calling the ``dvc`` and ``git`` command lines, and finding the repository they run in.

Every other door in this package reaches DVC and git through here, so the
environment a run gets (the venv's ``tenny`` on PATH, no prompts, no progress
bars) and the way an error becomes a next step are decided once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.text import log_line


class DvcError(UserError):
    """DVC refused or failed; the message is DVC's own last error line plus what to do."""


def find_root(start: str | os.PathLike | None = None) -> Path:
    """The DVC repository holding ``start`` (default: the current folder)."""
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise UserError(f"{here} is not inside a DVC repository: cd into your tenny project, or run `git init && dvc init` here")


def dvc_command() -> list[str]:
    """How to call dvc: the one installed beside this Python first, so the app
    and `tenny` use the same DVC even when the venv is not activated."""
    beside = Path(sys.executable).parent / "dvc"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dvc")
    if found:
        return [found]
    raise UserError("dvc is not installed: `pip install dvc` (tenny needs DVC 3.x)")


def subprocess_env() -> dict[str, str]:
    """The environment for dvc runs: stage commands call `tenny`, which lives beside this Python."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    # DVC must not wait for a human on a prompt nobody sees, nor draw progress bars into the log.
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["TERM"] = "dumb"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def last_error(output: str) -> str:
    """DVC's last ERROR line (else its last line), made safe: it is shown in messages and may quote file contents."""
    lines = [log_line(x).strip() for x in output.splitlines() if x.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR"):
            return line.removeprefix("ERROR:").strip()
    return lines[-1] if lines else "no output"


def explain(message: str) -> str:
    """DVC's error plus the next step where we know it."""
    low = message.lower()
    if "unable to acquire lock" in low or "lock" in low and "acquire" in low:
        return f"{message} (another dvc command is running here; wait for it or cancel it)"
    if "not a dvc repository" in low or "you are not inside of a dvc repository" in low:
        return f"{message} (cd into your tenny project, or run `dvc init`)"
    if "no remote specified" in low or "no default remote" in low:
        return f"{message} (set remote.url in params.yaml, or `dvc remote add -d storage PATH`)"
    return message


def run_dvc(args: list[str], root: str | os.PathLike, *, timeout: float | None = 300) -> subprocess.CompletedProcess:
    """Run dvc to completion and capture its output (for short commands: status, show)."""
    try:
        return subprocess.run(
            dvc_command() + args, cwd=root, env=subprocess_env(), stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        raise DvcError(f"`dvc {' '.join(args)}` took longer than {timeout:.0f} s; run it in a shell to see why") from None


def dvc_json(args: list[str], root: str | os.PathLike, *, timeout: float | None = 300) -> Any:
    """``dvc ARGS --json``, parsed; a DvcError with DVC's own words and the next step when it fails."""
    done = run_dvc(args + ["--json"], root, timeout=timeout)
    if done.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed: {explain(last_error(done.stderr or done.stdout))}")
    text = done.stdout.strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise DvcError(f"`dvc {' '.join(args)} --json` printed something that is not JSON: {text[:200]!r}") from None


def git(root: str | os.PathLike, *args: str) -> subprocess.CompletedProcess:
    """``git ARGS`` in ``root``, output captured as text, never waiting on stdin."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def git_show(root: str | os.PathLike, rev: str, path: str) -> str | None:
    """A git-tracked file's text at ``rev``; None when git has no such file there."""
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None
