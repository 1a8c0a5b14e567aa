"""Which dvc commands are working in a repository right now.

The crash check must never "repair" what a live run has in flight (its refs,
a detached HEAD, staged files), so it first asks here. On Linux the answer
comes from /proc (each process's command line and folder); elsewhere from
``ps``, which only makes the caller more careful.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

# dvc commands that only read: one running (the Pipeline screen's own `dvc status`) cannot
# be what left refs or a detached HEAD, so it does not hold the startup repair back.
_READ_ONLY = {"status", "diff", "version", "doctor", "dag", "list", "ls", "params", "metrics", "root",
              "remote list", "exp show", "exp list", "exp diff", "queue status", "queue logs"}


def _argv_is_dvc(argv: list[str]) -> bool:
    """A dvc command that may write (`dvc ...`, `python /venv/bin/dvc ...`, `python -m dvc ...`)."""
    head = [os.path.basename(a) for a in argv[:2]]
    if argv[1:3] == ["-m", "dvc"]:
        rest = argv[3:]
    elif "dvc" in head:
        rest = argv[head.index("dvc") + 1:]
    else:
        return False
    words = [w for w in rest if w and not w.startswith("-")][:2]
    if words == ["config"] and ("--list" in rest or "-l" in rest):
        return False  # `dvc config --list` (how remotes are read) only reads
    return not (words and (words[0] in _READ_ONLY or " ".join(words) in _READ_ONLY))


def dvc_processes(root: str | os.PathLike) -> list[int]:
    """Pids of dvc commands that may write, working in ``root`` (or in one of its experiment copies).

    On Linux: every process whose command is dvc and whose folder is inside ``root``.
    Elsewhere (no /proc): every dvc process, which only makes the caller more careful.
    """
    root = Path(root).resolve()
    me = os.getpid()
    found = []
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) == me:
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
                if not _argv_is_dvc(argv):
                    continue
                cwd = Path(os.readlink(entry / "cwd"))
            except OSError:  # gone, or another user's
                continue
            if cwd == root or root in cwd.parents:
                found.append(int(entry.name))
        return found
    done = subprocess.run(["ps", "-axo", "pid=,command="], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        pid, _, command = line.strip().partition(" ")
        if pid.isdigit() and int(pid) != me and _argv_is_dvc(command.split()):
            found.append(int(pid))
    return found


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
