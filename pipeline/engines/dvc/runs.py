"""Runs: ``dvc repro`` and ``dvc exp run`` as one streamed, cancellable process group.

A run from the app is the same ``dvc`` command a person types, so it is the
same run; the app only reads its output line by line and can stop it as
Ctrl-C in a shell would. Keeping the user's repo as it was around a run is
the workspace door's job (workspace.py).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.engines.dvc.cli import dvc_command, subprocess_env

_RUNNING_STAGE = re.compile(r"^Running stage '([^']+)'")


def repro_args(stage: str | None = None, *, force: bool = False) -> list[str]:
    """`dvc repro` (all) or `dvc repro STAGE` (that stage and what it needs)."""
    args = ["repro"]
    if force:
        args.append("--force")
    if stage:
        args.append(stage)
    return args


def exp_run_args(overrides: list[str], *, name: str | None = None) -> list[str]:
    """`dvc exp run --temp -S KEY=VALUE ...`; check the overrides first (pipeline/core/overrides.py)."""
    # --temp: the experiment runs in a copy under .dvc/tmp/exps, so the user's branch,
    # index and outputs are never touched, whether it finishes, is cancelled or is killed.
    args = ["exp", "run", "--temp"]
    if name:
        args += ["--name", name]
    for item in overrides:
        args += ["-S", item]
    return args


class Run:
    """One dvc subprocess whose merged output is read line by line.

    The process gets its own process group so cancel() stops dvc *and* the
    stage command it started (a training run is a grandchild of dvc).
    """

    def __init__(self, args: list[str], root: str | os.PathLike):
        self.args = args
        self.root = Path(root)
        self.command = "dvc " + " ".join(args)
        self.proc: subprocess.Popen | None = None
        self.cancelled = False
        self.stage: str | None = None  # the stage dvc said it is running, for restoring its outputs
        self._lock = threading.Lock()

    def start(self) -> "Run":
        self.proc = subprocess.Popen(
            dvc_command() + self.args, cwd=self.root, env=subprocess_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def lines(self) -> Iterator[str]:
        """Output lines as printed (untrusted: a screen shows them through ``text.log_line``), until the process ends."""
        assert self.proc and self.proc.stdout
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            found = _RUNNING_STAGE.match(line)
            if found:
                self.stage = found.group(1)
            yield line
        self.proc.wait()

    def wait(self) -> int:
        assert self.proc
        return self.proc.wait()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def workspace_stage(self) -> str | None:
        """The stage it was running in the user's workspace (a `--temp` experiment runs in a copy)."""
        return None if "--temp" in self.args else self.stage

    def cancel(self, grace_s: float = 10.0) -> None:
        """Stop the whole group as Ctrl-C in a shell would (SIGINT), so DVC and the
        stage clean up; SIGTERM after ``grace_s``, SIGKILL after as long again."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            self.cancelled = True
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(grace_s if sig != signal.SIGKILL else None)
                return
            except subprocess.TimeoutExpired:
                continue


def stream(args: list[str], root: str | os.PathLike, on_line: Callable[[str], None]) -> int:
    """Run dvc with ``args``, hand each output line to ``on_line``, return the exit code."""
    run = Run(args, root).start()
    for line in run.lines():
        on_line(line)
    return run.wait()
