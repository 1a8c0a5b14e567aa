"""The progress bar on stderr: requests done / failed / retried, samples, tokens, dollars, ETA."""

from __future__ import annotations

import sys


class Progress:
    def __init__(self, total: int, stats, desc: str = "synthesize"):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.stats = stats
        self.bar = tqdm(
            total=total, desc=desc, unit="req", file=sys.stderr, dynamic_ncols=True, smoothing=0.05,
            # a log file (nohup, CI) gets a line every 10 s instead of a redraw per tick
            mininterval=0.5 if tty else 10.0, ascii=not tty,
        )

    def advance(self, n: int = 1) -> None:
        s = self.stats
        self.bar.set_postfix_str(
            f"ok {s.ok} cached {s.cached} failed {s.failed} retried {s.retries} | "
            f"{s.samples} samples | {s.prompt_tokens + s.completion_tokens} tok | ${s.cost_usd:.4f}",
            refresh=False,
        )
        self.bar.update(n)

    def note(self, text: str) -> None:
        self.bar.set_description_str(text, refresh=True)

    def close(self) -> None:
        self.advance(0)
        self.bar.close()
