"""Everything tenny asks of DVC, in one place.

The app never re-implements DVC: stage state comes from ``dvc status --json``
and dvc.lock, runs are ``dvc repro`` / ``dvc exp run`` subprocesses (so a run
from the app is the same run as from a shell), files at a revision come from
``dvc.api.open``. DVC itself is imported lazily: the ``tenny`` command imports
this module at startup and must stay fast.

Every failure a user can fix becomes a :class:`UserError` naming what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from pipeline.errors import UserError

WORKSPACE = "workspace"  # DVC's own name for the working tree in exp show / params diff
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


class DvcError(UserError):
    """DVC refused or failed; the message is DVC's own last error line plus what to do."""


# ---------------------------------------------------------------- finding DVC and the repo


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


def clean_line(line: str) -> str:
    """Terminal escapes and control characters out: log lines are untrusted text."""
    return _ANSI.sub("", line.rstrip("\r\n").split("\r")[-1])


def clean_text(text: str) -> str:
    """Like clean_line for multi-line text: escapes and control characters out, newlines kept."""
    return _ANSI.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _last_error(output: str) -> str:
    lines = [clean_line(x).strip() for x in output.splitlines() if x.strip()]
    for line in reversed(lines):
        if line.startswith("ERROR"):
            return line.removeprefix("ERROR:").strip()
    return lines[-1] if lines else "no output"


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
    done = run_dvc(args + ["--json"], root, timeout=timeout)
    if done.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed: {_explain(_last_error(done.stderr or done.stdout))}")
    text = done.stdout.strip()
    try:
        return json.loads(text) if text else {}
    except json.JSONDecodeError:
        raise DvcError(f"`dvc {' '.join(args)} --json` printed something that is not JSON: {text[:200]!r}") from None


def _explain(message: str) -> str:
    """DVC's error plus the next step where we know it."""
    low = message.lower()
    if "unable to acquire lock" in low or "lock" in low and "acquire" in low:
        return f"{message} (another dvc command is running here; wait for it or cancel it)"
    if "not a dvc repository" in low or "you are not inside of a dvc repository" in low:
        return f"{message} (cd into your tenny project, or run `dvc init`)"
    if "no remote specified" in low or "no default remote" in low:
        return f"{message} (set remote.url in params.yaml, or `dvc remote add -d storage PATH`)"
    return message


# ---------------------------------------------------------------- stages and their state


@dataclass
class StageState:
    name: str
    state: str  # "up to date" | "changed" | "never run" | "unknown"
    detail: str = ""  # what changed, in DVC's words
    cmd: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)  # last values, from the stage's metrics files


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({getattr(err, 'problem', err)}); fix the file") from None


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


def _describe_changes(entries: list) -> str:
    parts = []
    for entry in entries:
        if isinstance(entry, str):
            parts.append(entry)
        elif isinstance(entry, dict):
            for kind, files in entry.items():
                if isinstance(files, dict):
                    parts.append(f"{kind}: " + ", ".join(f"{p} ({s})" for p, s in files.items()))
                else:
                    parts.append(str(kind))
    return "; ".join(parts)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay values."""
    if not isinstance(obj, dict):
        return {prefix: obj} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def _metric_files(spec: dict) -> list[str]:
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
    lock = read_yaml(root / "dvc.lock") or {}
    locked = set((lock.get("stages") or {}) if isinstance(lock, dict) else {})
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
        for mfile in _metric_files(spec):
            metrics.update(read_metrics_file(root / mfile))
        cmd = spec.get("cmd", "")
        out.append(StageState(name, state, detail, " && ".join(cmd) if isinstance(cmd, list) else str(cmd), metrics))
    return out


# ---------------------------------------------------------------- streaming runs


def repro_args(stage: str | None = None, *, force: bool = False) -> list[str]:
    """`dvc repro` (all) or `dvc repro STAGE` (that stage and what it needs)."""
    args = ["repro"]
    if force:
        args.append("--force")
    if stage:
        args.append(stage)
    return args


def parse_overrides(text: str) -> list[str]:
    """'train.lr=1e-3 train.lora.r=16' (spaces or commas) → ['train.lr=1e-3', 'train.lora.r=16']."""
    items = [x for x in re.split(r"[\s,]+", text.strip()) if x]
    for item in items:
        key, sep, _ = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected dotted.key=value, e.g. train.lora.r=16")
    return items


def exp_run_args(overrides: list[str], *, name: str | None = None) -> list[str]:
    args = ["exp", "run"]
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
        self._lock = threading.Lock()

    def start(self) -> "Run":
        self.proc = subprocess.Popen(
            dvc_command() + self.args, cwd=self.root, env=subprocess_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def lines(self) -> Iterator[str]:
        """Output lines, cleaned of terminal escapes, until the process ends."""
        assert self.proc and self.proc.stdout
        for raw in iter(self.proc.stdout.readline, b""):
            yield clean_line(raw.decode("utf-8", errors="replace"))
        self.proc.wait()

    def wait(self) -> int:
        assert self.proc
        return self.proc.wait()

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def cancel(self, grace_s: float = 5.0) -> None:
        """SIGTERM the whole group, SIGKILL whatever is left after ``grace_s``."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return
            self.cancelled = True
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                return
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def stream(args: list[str], root: str | os.PathLike, on_line: Callable[[str], None]) -> int:
    """Run dvc with ``args``, hand each output line to ``on_line``, return the exit code."""
    run = Run(args, root).start()
    for line in run.lines():
        on_line(line)
    return run.wait()


# ---------------------------------------------------------------- remotes


def configure_remote(root: str | os.PathLike, name: str, url: str) -> None:
    """Point remote ``name`` at ``url`` and make it the default, in .dvc/config.local.

    config.local is per machine and not in git: the laptop and the GPU box can
    each keep their own path or credentials for the same remote name.
    """
    done = run_dvc(["remote", "add", "--local", "--force", "--default", name, url], root, timeout=60)
    if done.returncode != 0:
        raise DvcError(f"could not set DVC remote {name!r} to {url!r}: {_last_error(done.stderr or done.stdout)}")


def remotes(root: str | os.PathLike) -> dict[str, str]:
    done = run_dvc(["remote", "list"], root, timeout=60)
    out = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = parts[1]
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


# ---------------------------------------------------------------- experiments


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


# ---------------------------------------------------------------- files and diffs at revisions


def _is_workspace(rev: str | None) -> bool:
    return rev is None or rev in (WORKSPACE, ".", "")


def _map_dvc_error(err: Exception, root: Path, path: str | None, rev: str | None) -> UserError:
    from dvc.exceptions import NotDvcRepoError, PathMissingError
    from dvc.scm import RevError, SCMError

    at = "the workspace" if _is_workspace(rev) else f"revision {rev!r}"
    if isinstance(err, RevError):
        return UserError(f"revision {rev!r} not found in {root}: use a commit, branch, tag or experiment name "
                         "(see `git log --oneline` and `dvc exp list`)")
    if isinstance(err, PathMissingError) and path and _dvc_tracked_at(root, path, rev):
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


def _git_show(root: Path, rev: str, path: str) -> str | None:
    done = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def _dvc_tracked_at(root: Path, path: str, rev: str | None) -> bool:
    """Whether ``path`` is a DVC output at ``rev`` (a .dvc file or a dvc.lock entry names it)."""
    if _is_workspace(rev):
        lock = (root / "dvc.lock").read_text() if (root / "dvc.lock").exists() else ""
        return (root / f"{path}.dvc").exists() or f"path: {path}" in lock
    if _git_show(root, rev, f"{path}.dvc") is not None:
        return True
    lock = _git_show(root, rev, "dvc.lock") or ""
    return f"path: {path}" in lock


@contextmanager
def open_at(root: str | os.PathLike, path: str, rev: str | None) -> Iterator[IO[bytes]]:
    """A file as it was at ``rev`` (git revision, experiment name, or workspace).

    dvc.api reads both DVC-tracked outputs (from the cache) and plain git files.
    """
    root = Path(root).resolve()
    if _is_workspace(rev) and (root / path).is_file():
        with open(root / path, "rb") as fh:
            yield fh
        return
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        cm = dvc.api.open(path, repo=str(root), rev=None if _is_workspace(rev) else rev, mode="rb")
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
    if _is_workspace(rev):
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
