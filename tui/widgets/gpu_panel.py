"""Per-GPU utilization, memory, temperature and power through NVML.

NVML is read-only and costs microseconds per query, so polling it once a
second does not slow a training run. No NVIDIA driver, no GPU, or no pynvml:
the panel says "no GPU" and why, and never raises.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from rich.text import Text
from textual.widgets import Static


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


def _bar(fraction: float | None, width: int = 12) -> str:
    if fraction is None:
        return " " * width
    n = max(0, min(width, round(fraction * width)))
    return "█" * n + "░" * (width - n)


def render_gpus(stats: list[GpuStat], message: str | None) -> Text:
    if not stats:
        return Text(message or "no GPU", style="dim")
    out = Text()
    for s in stats:
        out.append(f"GPU {s.index} ", style="bold")
        out.append(f"{s.name}\n")
        util = "—" if s.util_pct is None else f"{s.util_pct:.0f}%"
        out.append(f"  util  {_bar(None if s.util_pct is None else s.util_pct / 100)} {util}\n")
        if s.mem_used_mb is not None and s.mem_total_mb:
            out.append(f"  mem   {_bar(s.mem_used_mb / s.mem_total_mb)} "
                       f"{s.mem_used_mb / 1024:.1f}/{s.mem_total_mb / 1024:.1f} GiB\n")
        temp = "—" if s.temp_c is None else f"{s.temp_c:.0f}°C"
        power = "—" if s.power_w is None else f"{s.power_w:.0f} W" + (f" / {s.power_limit_w:.0f} W" if s.power_limit_w else "")
        out.append(f"  temp  {temp}   power {power}\n")
    return out


class GpuPanel(Static):
    """Shows the latest NVML reading; the screen's poller calls ``show``."""

    DEFAULT_CSS = """
    GpuPanel { height: auto; border: round $panel; padding: 0 1; }
    """

    def on_mount(self) -> None:
        self.border_title = "GPU"

    def show(self, stats: list[GpuStat], message: str | None) -> None:
        self.update(render_gpus(stats, message))
