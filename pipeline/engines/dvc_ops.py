"""Everything tenny asks of DVC, in one place.

The app never re-implements DVC: stage state comes from ``dvc status --json``
and dvc.lock, runs are ``dvc repro`` / ``dvc exp run`` subprocesses (so a run
from the app is the same run as from a shell), files at a revision come from
``dvc.api.open``. DVC itself is imported lazily: the ``tenny`` command imports
this module at startup and must stay fast.

Every failure a user can fix becomes a :class:`UserError` naming what to do.
"""

from __future__ import annotations

import copy
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

from pipeline.core.errors import UserError
from pipeline.core.text import log_line

WORKSPACE = "workspace"  # DVC's own name for the working tree in exp show / params diff


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


def _last_error(output: str) -> str:
    # DVC's output is shown in messages and may quote file contents: made safe here.
    lines = [log_line(x).strip() for x in output.splitlines() if x.strip()]
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


def check_overrides(root: str | os.PathLike, items: list[str]) -> list[str]:
    """``items`` checked by tenny's own params schema before DVC sees them.

    DVC writes ``-S`` values into params.yaml and deletes the stage's outputs
    before the stage command can reject them, so a typo would cost outputs:
    an unknown key (with the closest allowed one), a wrong type or a value out
    of range is a UserError here, and so is an override that changes nothing
    (it would only repeat the current run). Nothing is written.
    """
    from pipeline.core.params import apply_override, parse_override, validate

    path = Path(root) / "params.yaml"
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections; fix the file first")
    current = validate(copy.deepcopy(data), source=str(path)).model_dump()
    changed = copy.deepcopy(data)
    keys = []
    for item in items:
        key, value = parse_override(item)
        apply_override(changed, key, value)
        keys.append(key)
    after = validate(changed, source="override").model_dump()
    old, new = flatten(current), flatten(after)
    same = [k for k in keys if k in old and old[k] == new.get(k)]
    if same and len(same) == len(keys):
        now = ", ".join(f"{k} is already {old[k]!r}" for k in same)
        raise UserError(f"{now} in params.yaml: nothing to try (change a value to run an experiment)")
    return items


def exp_run_args(overrides: list[str], *, name: str | None = None) -> list[str]:
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


_RUNNING_STAGE = re.compile(r"^Running stage '([^']+)'")


def stream(args: list[str], root: str | os.PathLike, on_line: Callable[[str], None]) -> int:
    """Run dvc with ``args``, hand each output line to ``on_line``, return the exit code."""
    run = Run(args, root).start()
    for line in run.lines():
        on_line(line)
    return run.wait()


# ---------------------------------------------------------------- leaving the workspace as the user left it

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


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, stdin=subprocess.DEVNULL)


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


def workspace_state(root: str | os.PathLike) -> WorkspaceState:
    root = Path(root)
    branch = head = None
    staged: frozenset[str] = frozenset()
    refs: frozenset[str] = frozenset()
    if _git(root, "rev-parse", "--git-dir").returncode == 0:
        found = _git(root, "symbolic-ref", "-q", "HEAD")
        branch = found.stdout.strip() or None if found.returncode == 0 else None
        head = _git(root, "rev-parse", "-q", "--verify", "HEAD").stdout.strip() or None
        staged = frozenset(_git(root, "diff", "--cached", "--name-only", "-z").stdout.split("\0")) - {""}
        refs = frozenset(_git(root, "for-each-ref", "--format=%(refname)", "refs/exps/exec").stdout.split())
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
        tip = _git(root, "rev-parse", "-q", "--verify", before.branch).stdout.strip()
        name = before.branch.removeprefix("refs/heads/")
        if now.branch is None and tip and tip == now.head:
            # Detached at the branch's own commit: re-attaching changes no file.
            _git(root, "symbolic-ref", "HEAD", before.branch)
            notes.append(f"repaired: HEAD was left detached; back on {name}")
        else:
            notes.append(f"HEAD is no longer on {name}: run `git checkout {name}`")
    for ref in sorted(now.exec_refs - before.exec_refs):
        _git(root, "update-ref", "-d", ref)
        notes.append(f"repaired: removed the stray experiment ref {ref}")
    new_staged = sorted(now.staged - before.staged)
    if new_staged:
        done = _git(root, "restore", "--staged", "--", *new_staged)
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
            notes.append(f"could not restore {', '.join(cached)} ({_last_error(done.stderr or done.stdout)}): "
                         f"run `dvc checkout --force {' '.join(cached)}`")
    for path in sorted(p for p in wanted if not outs[p][1]):
        if _restore_uncached(root, path):
            notes.append(f"restored {path} as it was before the run")
        elif not (root / path).exists() and _git(root, "checkout", "--", path).returncode == 0:
            # Uncached metrics live in git: the index holds the last version the user staged.
            notes.append(f"restored {path} from git")
        elif not (root / path).exists():
            notes.append(f"{path} is gone (not cached by DVC): run `dvc repro {outs[path][0]}` to rebuild it")
    return notes


# ---------------------------------------------------------------- damage an earlier crash left

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        if pid is None or not _pid_alive(pid):
            stale.append(folder)
    return stale


def _detached_by_checkout(root: Path, head: str | None) -> str | None:
    """The branch HEAD left, when the latest reflog entry is a checkout from it to HEAD's commit."""
    if not head:
        return None
    done = _git(root, "reflog", "-n", "1", "--format=%gs", "HEAD")
    found = _DVC_CHECKOUT.match(done.stdout.strip()) if done.returncode == 0 else None
    if not found or found.group(2) != head:
        return None
    branch = found.group(1)
    return branch if _git(root, "rev-parse", "-q", "--verify", f"refs/heads/{branch}").returncode == 0 else None


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
    if _git(root, "rev-parse", "--git-dir").returncode != 0:
        return []
    if dvc_processes(root):
        return []
    state = workspace_state(root)
    findings: list[Finding] = []
    stale = _stale_run_files(root)
    left_from = None if state.branch else _detached_by_checkout(root, state.head)
    at_tip = bool(left_from) and (_git(root, "rev-parse", "-q", "--verify", f"refs/heads/{left_from}").stdout.strip()
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


def lock_outs(lock: Any) -> dict[str, tuple[str, str | None]]:
    """A parsed dvc.lock → {out path: (stage, hash)} (DVC 3 writes md5; etag for cloud outs)."""
    out: dict[str, tuple[str, str | None]] = {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    for stage, entry in (stages if isinstance(stages, dict) else {}).items():
        for o in (entry or {}).get("outs") or []:
            if isinstance(o, dict) and "path" in o:
                out[str(o["path"])] = (str(stage), o.get("md5") or o.get("hash") or o.get("etag"))
    return out


def _missing_outputs(root: Path) -> list[Finding]:
    """Outputs dvc.lock records that are gone from disk (DVC deletes them before their stage runs)."""
    outs = declared_outs(root)
    missing = [p for p in lock_outs(read_yaml(root / "dvc.lock")) if p in outs and not (root / p).exists()]
    if not missing:
        return []
    tracked = set(_git(root, "ls-files", "-z", "--", *missing).stdout.split("\0"))
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
            if any(_git(root, "update-ref", "-d", ref).returncode != 0 for ref in f.targets):
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
