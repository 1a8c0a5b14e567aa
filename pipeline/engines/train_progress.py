"""Reading a training run's dvclive folder while the run is writing it.

The train stage writes, under ``dvclive/``:

- ``run.json`` (atomically): status, step, total_steps, eta_s, device,
  base_model, quantization, last_checkpoint, resumed_from_step, started_at,
  updated_at (pipeline/core/run_status.py writes it);
- ``metrics.json``: the latest value of every metric;
- ``plots/metrics/<group>/<name>.tsv``: one line per logged step
  (columns ``[timestamp] step <name>``);
- ``samples.jsonl``: answers to a few held-out prompts every N steps
  (pipeline/engines/train_samples.py), one JSON object per line.

A watcher must never slow the run and never crash on a file caught mid-write,
so :class:`ProgressReader` only reads the bytes appended since the last poll,
keeps an unfinished last line for the next poll, keeps the previous value of a
JSON file that does not parse yet, and starts over when a file shrinks (a new
run replaced the folder). Nothing here takes a lock or writes a byte.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core import run_status as rs

STALE_AFTER_S = 120  # a "running" run that has not written for this long is shown as possibly stopped


@dataclass
class Progress:
    """What a watcher knows about a run right now; every field may be missing."""

    dir: str
    exists: bool = False
    status: str = "waiting"  # waiting (no files yet) | running | finished | failed | stale
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    eta_s: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    device: str | None = None
    quantization: str | None = None
    base_model: str | None = None
    last_checkpoint: str | None = None
    resumed_from_step: int | None = None  # the run continued from a checkpoint at this step
    kept_step: int | None = None  # early stopping: the step whose weights the run kept
    best_step: int | None = None  # early stopping: the best val loss so far, at this step
    stop_reason: str | None = None  # early stopping: why it stopped and what it kept
    error: str | None = None  # what the train stage recorded when it failed
    latest: dict[str, float] = field(default_factory=dict)  # "train/loss" → last value
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # "train/loss" → [(step, value)]
    problems: list[str] = field(default_factory=list)  # half-written or unreadable files, by name
    samples: list[dict] = field(default_factory=list)  # samples.jsonl rows: step, prompt, answer, eos, ...

    def sample_steps(self) -> list[int]:
        """The steps that have answers, in order."""
        return sorted({row["step"] for row in self.samples})

    def answers_at(self, step: int) -> list[dict]:
        return [row for row in self.samples if row["step"] == step]

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return max(0.0, min(1.0, self.step / self.total_steps))

    def value(self, name: str) -> float | None:
        # The series get every logged point; metrics.json is rewritten at most once a second.
        points = self.series.get(name)
        if points:
            return points[-1][1]
        return self.latest.get(name)


class _Tail:
    """Appended complete lines of one TSV file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.header: list[str] | None = None
        self.pending = b""
        self.ino: int | None = None

    def _new_lines(self, gone_restarts: bool) -> tuple[bool, list[bytes]]:
        """(restarted, complete lines appended since the last read); restarted when the file was replaced,
        shrank, or (``gone_restarts``) vanished."""
        try:
            st = self.path.stat()
        except OSError:
            if not gone_restarts:
                return False, []
            # Gone (a new run cleared the folder): start over when it comes back.
            restarted = self.offset > 0
            self.offset, self.pending, self.ino = 0, b"", None
            return restarted, []
        restarted = False
        if (self.ino is not None and st.st_ino != self.ino) or st.st_size < self.offset:
            self.offset, self.pending, restarted = 0, b"", True
        self.ino = st.st_ino
        if st.st_size == self.offset:
            return restarted, []
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(st.st_size - self.offset)
        except OSError:
            return restarted, []
        self.offset += len(data)
        data = self.pending + data
        # The writer may be between write() calls: keep the unterminated tail for next time.
        cut = data.rfind(b"\n")
        if cut < 0:
            self.pending = data
            return restarted, []
        self.pending = data[cut + 1:]
        return restarted, data[:cut].split(b"\n")

    def read_new(self) -> tuple[bool, list[list[str]]]:
        """(restarted, rows): restarted when the file was replaced or shrank."""
        restarted, lines = self._new_lines(gone_restarts=False)
        if restarted:
            self.header = None
        rows = []
        for raw in lines:
            cells = raw.decode("utf-8", errors="replace").rstrip("\r").split("\t")
            if self.header is None:
                self.header = cells
                continue
            if len(cells) == len(self.header):
                rows.append(cells)
        return restarted, rows


class _Lines(_Tail):
    """Appended complete JSON lines of one file since the last read; a line that does not parse is skipped."""

    def read_new(self) -> tuple[bool, list]:  # type: ignore[override]
        restarted, lines = self._new_lines(gone_restarts=True)
        rows = []
        for raw in lines:
            try:
                rows.append(json.loads(raw))
            except ValueError:
                continue
        return restarted, rows


def _read_json(path: Path) -> tuple[bool, Any]:
    """(ok, value). ok=False for a file that is missing or does not parse yet."""
    try:
        return True, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flat_numbers(v, f"{prefix}/{k}" if prefix else str(k)))
    else:
        n = _num(obj)
        if n is not None and prefix:
            out[prefix] = n
    return out


class ProgressReader:
    """Poll a dvclive folder; each :meth:`poll` returns an up-to-date :class:`Progress`.

    Keep one reader per watched folder: it remembers file offsets, so each poll
    costs a few stat() calls and the bytes written since the last one.
    """

    def __init__(self, directory: str | os.PathLike = "dvclive", *, max_points: int = 20_000):
        self.dir = Path(directory)
        self.max_points = max_points
        self._tails: dict[str, _Tail] = {}
        self._series: dict[str, list[tuple[int, float]]] = {}
        self._run: dict = {}
        self._metrics: dict = {}
        self._samples: list[dict] = []
        self._samples_tail: _Lines | None = None

    def poll(self, now: float | None = None) -> Progress:
        now = time.time() if now is None else now
        p = Progress(dir=str(self.dir))
        if not self.dir.is_dir():
            return p
        p.exists = True

        run_path = self.dir / rs.RUN_JSON
        if run_path.exists():
            ok, run = _read_json(run_path)
            if ok and isinstance(run, dict):
                self._run = run
            elif not ok:
                p.problems.append("run.json is not complete JSON yet (kept the last good copy)")
        else:
            self._run = {}  # a new run cleared the folder
        ok, metrics = _read_json(self.dir / "metrics.json")
        if ok and isinstance(metrics, dict):
            self._metrics = metrics
        elif (self.dir / "metrics.json").exists():
            p.problems.append("metrics.json is not complete JSON yet (kept the last good copy)")
        else:
            self._metrics = {}

        self._read_plots()
        p.samples = self._read_samples()

        run = self._run
        p.status = str(run.get("status") or ("running" if self._series or self._metrics else "waiting"))
        p.total_steps = _int(run.get("total_steps"))
        p.eta_s = _num(run.get("eta_s"))
        p.started_at = _num(run.get("started_at"))
        p.resumed_from_step = _int(run.get("resumed_from_step"))
        p.kept_step = _int(run.get("kept_step"))
        p.best_step = _int(run.get("best_step"))
        p.stop_reason = None if run.get("stop_reason") is None else str(run["stop_reason"])
        p.updated_at = _num(run.get("updated_at"))
        for key in ("device", "quantization", "base_model", "last_checkpoint", "error"):
            value = run.get(key)
            setattr(p, key, None if value is None else str(value))
        p.latest = {k: v for k, v in _flat_numbers(self._metrics).items() if k != "step"}
        p.series = self._series
        step = _int(run.get("step"))
        if step is None:
            step = _int(self._metrics.get("step"))
        if step is None:
            # A TSV can exist before its first row lands (dvclive writes the header first).
            step = max((points[-1][0] for points in self._series.values() if points), default=None)
        p.step = step
        p.epoch = p.value(rs.EPOCH)
        if p.updated_at is None:
            p.updated_at = self._newest_mtime()
        if p.status == "running" and p.updated_at and now - p.updated_at > STALE_AFTER_S:
            p.status = "stale"
        return p

    def _read_plots(self) -> None:
        base = self.dir / "plots" / "metrics"
        if not base.is_dir():
            return
        for name in [n for n, t in self._tails.items() if not t.path.exists()]:
            # The folder was cleared for a new run: forget the old series.
            del self._tails[name]
            self._series.pop(name, None)
        for path in base.rglob("*.tsv"):
            name = path.relative_to(base).with_suffix("").as_posix()
            tail = self._tails.get(name)
            if tail is None:
                tail = self._tails[name] = _Tail(path)
            restarted, rows = tail.read_new()
            points = self._series.setdefault(name, [])
            if restarted:
                points.clear()
            header = tail.header or []
            if not rows or "step" not in header:
                continue
            si = header.index("step")
            vi = len(header) - 1
            for cells in rows:
                s, v = _int(cells[si]), _num(cells[vi])
                if s is not None and v is not None:
                    points.append((s, v))
            if len(points) > self.max_points:
                # Thin the old half evenly so a long run's chart keeps its shape in bounded memory.
                half = len(points) // 2
                points[:half] = points[:half:2]

    def _read_samples(self) -> list[dict]:
        """samples.jsonl's complete lines (a cut last line waits for the next poll)."""
        tail = self._samples_tail
        if tail is None or tail.path != self.dir / rs.SAMPLES:
            tail = self._samples_tail = _Lines(self.dir / rs.SAMPLES)
        restarted, rows = tail.read_new()
        if restarted:
            self._samples = []
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("step"), int) and isinstance(row.get("answer"), str):
                self._samples.append(row)
        return list(self._samples)

    def _newest_mtime(self) -> float | None:
        newest = None
        for path in (self.dir / "metrics.json", self.dir / rs.RUN_JSON):
            try:
                m = path.stat().st_mtime
            except OSError:
                continue
            newest = m if newest is None else max(newest, m)
        return newest


# ---------------------------------------------------------------- GPUs through NVML
# NVML is read-only and costs microseconds per query, so polling it once a
# second does not slow a training run.


@dataclass
class GpuStat:
    index: int
    name: str
    util_pct: float | None
    mem_used_mb: float | None
    mem_total_mb: float | None
    temp_c: float | None
    power_w: float | None
    power_limit_w: float | None


class Nvml:
    """NVML opened once, lazily; ``read()`` → (stats, message)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._nvml = None
        self._error: str | None = None
        self._tried = False

    def _init(self) -> None:
        self._tried = True
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as err:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            self._error = f"no GPU (NVML unavailable: {err or type(err).__name__})"

    def read(self) -> tuple[list[GpuStat], str | None]:
        with self._lock:
            if not self._tried:
                self._init()
            nv = self._nvml
            if nv is None:
                return [], self._error or "no GPU"
            try:
                count = nv.nvmlDeviceGetCount()
            except Exception as err:
                return [], f"no GPU (NVML: {err})"
            if count == 0:
                return [], "no GPU (NVML sees no devices)"
            stats = []
            for i in range(count):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = _try(lambda: nv.nvmlDeviceGetName(h)) or f"GPU {i}"
                if isinstance(name, bytes):
                    name = name.decode(errors="replace")
                util = _try(lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
                mem = _try(lambda: nv.nvmlDeviceGetMemoryInfo(h))
                temp = _try(lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
                power = _try(lambda: nv.nvmlDeviceGetPowerUsage(h))
                limit = _try(lambda: nv.nvmlDeviceGetEnforcedPowerLimit(h))
                stats.append(GpuStat(
                    i, str(name), util,
                    None if mem is None else mem.used / 2**20, None if mem is None else mem.total / 2**20,
                    temp, None if power is None else power / 1000, None if limit is None else limit / 1000,
                ))
            return stats, None


def _try(fn):
    # One unsupported query (power on some boards, MIG slices) must not hide the rest.
    try:
        return fn()
    except Exception:
        return None


def gpu_line(stats: list[GpuStat], message: str | None) -> str:
    """One line per GPU for a terminal: util, memory, temperature, power."""
    if not stats:
        return message or "no GPU"
    lines = []
    for s in stats:
        parts = [f"GPU{s.index} {s.name}"]
        if s.util_pct is not None:
            parts.append(f"util {s.util_pct:.0f}%")
        if s.mem_used_mb is not None and s.mem_total_mb:
            parts.append(f"mem {s.mem_used_mb / 1024:.1f}/{s.mem_total_mb / 1024:.1f} GiB")
        if s.temp_c is not None:
            parts.append(f"{s.temp_c:.0f}°C")
        if s.power_w is not None:
            parts.append(f"{s.power_w:.0f} W")
        lines.append(" · ".join(parts))
    return "\n".join(lines)


def _int(value: Any) -> int | None:
    n = _num(value)
    return None if n is None else int(n)


def format_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "—"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def sample_lines(rows: list[dict]) -> list[str]:
    """Answers for a terminal, grouped by step: a ``step N`` line, then ``prompt → answer`` with its flags.

    Model text: the caller makes it safe (pipeline.core.text.clean) before printing.
    """
    out: list[str] = []
    step = None
    for row in rows:
        if row["step"] != step:
            step = row["step"]
            out.append(f"step {step}")
        flags = [] if row.get("eos", True) else ["no EOS: cut at the limit"]
        if row.get("repeated_4grams"):
            flags.append(f"{row['repeated_4grams']} repeated 4-grams")
        answer = " ".join(str(row.get("answer", "")).split())
        out.append(f"  {row.get('prompt', '')} → {answer or '(empty)'}" + (f"  [{'; '.join(flags)}]" if flags else ""))
    return out


def summary_line(p: Progress, now: float | None = None) -> str:
    """One line for a terminal (tenny train-watch --once, logs over SSH)."""
    now = time.time() if now is None else now
    if not p.exists:
        return f"{p.dir}: no training output yet (start one with `dvc repro train` or `tenny train`)"
    parts = [p.status]
    if p.step is not None:
        parts.append(f"step {p.step}" + (f"/{p.total_steps}" if p.total_steps else ""))
    if p.epoch is not None:
        parts.append(f"epoch {p.epoch:.2f}")
    for label, key in (("loss", rs.TRAIN_LOSS), ("eval_loss", rs.EVAL_LOSS), ("lr", rs.LEARNING_RATE), ("tok/s", rs.TOKENS_PER_S)):
        v = p.value(key)
        if v is not None:
            parts.append(f"{label} {v:.4g}")
    if p.eta_s is not None and p.status == "running":
        parts.append(f"eta {format_duration(p.eta_s)}")
    if p.error:
        parts.append(f"error {p.error}")
    if p.device:
        parts.append(p.device)
    if p.resumed_from_step is not None:
        parts.append(f"resumed from step {p.resumed_from_step}")
    if p.kept_step is not None:
        parts.append(f"kept step {p.kept_step} (best val loss)")
    if p.last_checkpoint:
        parts.append(f"checkpoint {p.last_checkpoint}")
    if p.updated_at:
        parts.append(f"updated {format_duration(now - p.updated_at)} ago")
    return " · ".join(parts)
