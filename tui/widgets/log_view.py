"""A log pane for subprocess output that any thread may write to.

Worker threads append lines to a queue and return at once (a chatty training
run never waits on the screen); a timer on the UI thread drains the queue into
a plain-text ``Log``. ``Log`` renders strings as text, never as markup, and
each line goes through ``text.log_line`` first: dvc and stage output is
untrusted, so control and invisible characters show as visible escapes.
"""

from __future__ import annotations

import collections
import threading

from textual.widgets import Log

from pipeline.core.text import log_line


class RunLog(Log):
    """Plain-text log with a thread-safe ``post`` and a bounded history."""

    DEFAULT_CSS = """
    RunLog { height: 1fr; border: round $panel; }
    """

    def __init__(self, *, max_lines: int = 10_000, flush_interval: float = 0.1, **kwargs):
        super().__init__(max_lines=max_lines, highlight=False, **kwargs)
        self._pending: collections.deque[str] = collections.deque()
        self._pending_lock = threading.Lock()
        self._flush_interval = flush_interval

    def on_mount(self) -> None:
        self.set_interval(self._flush_interval, self.flush)

    def post(self, line: str) -> None:
        """Queue one line from any thread."""
        with self._pending_lock:
            self._pending.append(log_line(line))

    def flush(self) -> None:
        with self._pending_lock:
            if not self._pending:
                return
            lines = list(self._pending)
            self._pending.clear()
        self.write_lines(lines)

    @property
    def text(self) -> str:
        """Everything shown plus what is queued (tests and copy-out)."""
        with self._pending_lock:
            queued = list(self._pending)
        return "\n".join([*self.lines, *queued])
