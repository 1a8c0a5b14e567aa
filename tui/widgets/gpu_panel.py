"""Per-GPU utilization, memory, temperature and power (read by pipeline.engines.train_progress.Nvml).

No NVIDIA driver, no GPU, or no pynvml: the panel says "no GPU" and why.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from pipeline.core.text import clean
from pipeline.engines.train_progress import GpuStat


def _bar(fraction: float | None, width: int = 12) -> str:
    if fraction is None:
        return " " * width
    n = max(0, min(width, round(fraction * width)))
    return "█" * n + "░" * (width - n)


def render_gpus(stats: list[GpuStat], message: str | None) -> Text:
    if not stats:
        return Text(clean(message or "no GPU", multiline=True), style="dim")
    out = Text()
    for s in stats:
        out.append(f"GPU {s.index} ", style="bold")
        out.append(f"{clean(s.name)}\n")  # the driver's name for the board: not ours to trust
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
