"""The progress bar on stderr, and the same figures in .tenny/client-status.json for the Pipeline screen.

What a user of a slow server needs to know is how fast it really answers:
answers per minute over the last minute, the concurrency in force (the
adaptive limit, out of its ceiling), the server's median latency, and the
time left at the observed rate. tqdm's own rate and ETA would count answers
served from the cache (instant) as the server's, so they are left out of the
bar's format.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from pipeline.core import paths

STATUS_FILE = "client-status.json"
STATUS_EVERY_S = 1.0
STALE_S = 600.0  # a status file not touched for this long belongs to a run that is gone (kill -9)


def status_path() -> Path:
    return paths.STATE_DIR / STATUS_FILE


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def live_text(state: dict) -> str:
    """'12.0/min · limit 2/16 · 3.6 s each · left 4:10': the line both the bar and the screen show."""
    parts = []
    rate = state.get("answers_per_min")
    parts.append(f"{rate:.1f}/min" if rate is not None else "–/min")
    if state.get("limit") is not None:
        parts.append(f"limit {state['limit']}/{state['ceiling']}")
    if state.get("latency_s") is not None:
        parts.append(f"{state['latency_s']:.1f} s each")
    if state.get("eta_s") is not None:
        parts.append(f"left {_clock(state['eta_s'])}")
    return " · ".join(parts)


class Progress:
    def __init__(self, total: int, stats, desc: str = "synthesize", status: Path | None = None):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.stats = stats
        self.desc = desc
        self.total = total
        self.client = None  # the Engine, once it runs: limit in force, latency, rate
        self.status = status_path() if status is None else status
        self.written = 0.0
        self.bar = tqdm(
            total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True,
            # a log file (nohup, CI) gets a line every 10 s instead of a redraw per tick
            mininterval=0.5 if tty else 10.0, ascii=not tty,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )

    def counts(self) -> str:
        s = self.stats
        return (f"ok {s.ok} cached {s.cached} failed {s.failed} retried {s.retries} | "
                f"{s.samples} samples | {s.prompt_tokens + s.completion_tokens} tok | ${s.cost_usd:.4f}")

    def state(self, done: int, running: bool = True) -> dict:
        state = {"stage": self.desc, "running": running, "done": done, "total": self.total,
                 "failed": self.stats.failed, "retries": self.stats.retries, "updated_at": time.time()}
        engine = self.client
        if engine is not None:
            rate = engine.watch.per_minute()
            state.update(answers_per_min=rate, limit=engine.limit.in_force, ceiling=engine.limit.ceiling,
                         latency_s=engine.limit.latency_s,
                         eta_s=(self.total - done) * 60.0 / rate if rate and running else None)
        return state

    def advance(self, n: int = 1) -> None:
        state = self.state(self.bar.n + n)
        self.bar.set_postfix_str(f"{live_text(state)} | {self.counts()}", refresh=False)
        self.bar.update(n)
        if time.monotonic() - self.written >= STATUS_EVERY_S:
            self._write(state)

    def _write(self, state: dict) -> None:
        self.written = time.monotonic()
        try:
            from pipeline.core.records import write_json

            self.status.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.status, state)
        except OSError:
            pass  # a watcher's convenience: never a reason for the run to fail

    def note(self, text: str) -> None:
        self.bar.set_description_str(text, refresh=True)

    def close(self) -> None:
        self.advance(0)
        self._write(self.state(self.bar.n, running=False))
        self.bar.close()


def status_line(root: Path, since: float = 0.0) -> str | None:
    """The running client's figures for a screen ('judge 12/32 · 12.0/min · limit 2/8 …'), or None.

    ``since``: a time.time() before which a status is another run's (a killed one leaves its last).
    """
    try:
        state = json.loads((root / paths.STATE_DIR / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or not state.get("running"):
        return None
    updated = state.get("updated_at")
    if not isinstance(updated, (int, float)) or updated < since or time.time() - updated > STALE_S:
        return None
    try:
        failed = f" · {state['failed']} failed" if state.get("failed") else ""
        return f"{state['stage']} {state['done']}/{state['total']} · {live_text(state)}{failed}"
    except (KeyError, TypeError, ValueError):
        return None
