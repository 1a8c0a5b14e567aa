"""How many requests the server gets at once: found by measuring, not set once.

``concurrency`` is the ceiling. The limit in force starts there and moves the
way TCP Vegas and Netflix's concurrency-limits (``VegasLimit``) move theirs:

- **the server's queue, from latency.** Answers to requests sent with at
  most one other out (ceiling / 8 with a high ceiling) give the server's
  no-load latency: their median, and the first requests of a run go out one
  by one, so there are always some. With ``L`` requests out and a median
  latency ``m`` over one window (about ``L`` answers), ``L × (1 - no_load / m)``
  requests wait in the server's queue. Above ``beta`` the limit halves, but
  only if ``m`` is over twice no-load and the window's fastest quarter over
  1.5 times it: answers of different lengths spread latencies at any load,
  a queue delays even the fastest. Below ``alpha`` (or ``m`` under 1.5 ×
  no-load) it grows by one per window; between, it holds. A one-slot server
  answering in S seconds settles at two to four requests out (latency 2-4 S,
  with the default ceilings), a server with more slots than the ceiling stays
  at the ceiling.
- **losses.** A timeout, a 429 or a 5xx halves the limit at once, but only
  once per window: the answers of requests sent under the old limit say
  nothing about the new one (a counter of changes, ``epoch``, tells them apart).
- **no growth while idle.** With fewer than half the limit in use (a small
  plan, answers from the cache) latency says nothing about more load.

``Gate`` holds the slots. A request given up on (it timed out) keeps its slot
a while as a *ghost*: a server that does not cancel abandoned requests is
still working on it, and a retry sent at once would join the queue behind it.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque

HISTORY = 16           # no-load answers the no-load latency is the median of
LATENCY_WINDOW = 50    # answers the reported latency is the median of
RATE_WINDOW_S = 60.0   # seconds the answers-per-minute rate is counted over
NO_LOAD = 2            # answers sent with at most this many out (themselves included) measure no load,
                       # or ceiling / 8 if more (AdaptiveLimit.no_load_upto)
TOLERANCE = 2.0        # a median up to 2 x no-load is the spread of answer lengths, never a queue
FAST_TOLERANCE = 1.5   # ... and the window's fastest quarter over 1.5 x no-load
GROW_BELOW = 1.5       # a median this close to no-load: room for one more request


def _alpha(limit: float) -> float:
    return max(1.0, 2 * math.log10(max(limit, 2)))


def _beta(limit: float) -> float:
    return max(2.0, 4 * math.log10(max(limit, 2)))


class AdaptiveLimit:
    """The limit in force, between 1 and ``ceiling`` (see the module docstring)."""

    def __init__(self, ceiling: int, adaptive: bool = True):
        self.ceiling = ceiling
        self.adaptive = adaptive
        self.limit = float(ceiling)
        # Sent with this many out or fewer, an answer measures the server unloaded. More than
        # two with a high ceiling: one lucky short answer must not set the baseline of 64.
        self.no_load_upto = max(NO_LOAD, ceiling // 8)
        self.epoch = 0                     # bumped by every change: a sample from an older epoch is stale
        self.window: list[float] = []      # latencies of answers sent in this epoch
        self.window_load: list[int] = []   # requests out when each of them was sent
        self.history: deque[float] = deque(maxlen=HISTORY)
        self.recent: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.lowest = math.inf             # the least limit it came to: reported
        self.decreases = 0
        self.increases = 0

    @property
    def in_force(self) -> int:
        return max(1, int(self.limit))

    @property
    def no_load_s(self) -> float | None:
        """Median latency of the latest answers sent with at most ``no_load_upto`` requests out.

        The first requests of a run are sent one by one, so there are always some;
        a server that grew slower brings the limit down to where new ones come in.
        """
        return statistics.median(self.history) if self.history else None

    @property
    def latency_s(self) -> float | None:
        """Median latency of the latest answers (what the user sees as 'the server takes')."""
        return statistics.median(self.recent) if self.recent else None

    def answered(self, latency: float, load: int, epoch: int) -> None:
        """One answer came back ``latency`` s after it was sent with ``load`` requests out (itself included)."""
        if load <= self.no_load_upto:
            self.history.append(latency)
        self.recent.append(latency)
        if not self.adaptive or epoch != self.epoch:
            return
        self.window.append(latency)
        self.window_load.append(load)
        if len(self.window) < self.in_force or not self.history:
            return
        median = statistics.median(self.window)
        ratio = median / self.no_load_s if self.no_load_s else 1.0
        # A queue delays even the fastest answers; uneven lengths (or a lucky short
        # no-load sample) leave the fast quarter near no-load.
        fast = sorted(self.window)[len(self.window) // 4] / self.no_load_s if self.no_load_s else 1.0
        load_seen = statistics.mean(self.window_load)
        queued = load_seen * (1 - 1 / ratio) if ratio > 0 else 0.0
        if ratio > TOLERANCE and fast > FAST_TOLERANCE and queued > _beta(self.limit):
            self._set(self.limit / 2)
            self.decreases += 1
        elif (queued < _alpha(self.limit) or ratio < GROW_BELOW) and load_seen >= self.limit / 2 and self.limit < self.ceiling:
            self._set(self.limit + 1)
            self.increases += 1
        else:
            self.window.clear()
            self.window_load.clear()

    def lost(self, epoch: int) -> None:
        """A timeout, 429 or 5xx on a request sent in ``epoch``: halve, once per window."""
        if self.adaptive and epoch == self.epoch:
            self._set(self.limit / 2)
            self.decreases += 1

    def _set(self, limit: float) -> None:
        self.limit = min(float(self.ceiling), max(1.0, limit))
        self.lowest = min(self.lowest, self.limit)
        self.epoch += 1
        self.window.clear()
        self.window_load.clear()


class Gate:
    """Slots under the limit in force; ghosts hold a slot after their request was abandoned."""

    def __init__(self, limit: AdaptiveLimit):
        self.limit = limit
        self.out = 0          # requests on the wire
        self.ghosts = 0       # abandoned requests the server may still be working on
        self.changed = asyncio.Condition()

    @property
    def busy(self) -> int:
        return self.out + self.ghosts

    async def acquire(self) -> int:
        """Wait for a free slot; returns the load the request is sent under (itself included)."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.busy < self.limit.in_force)
            self.out += 1
            return self.busy

    async def release(self) -> None:
        async with self.changed:
            self.out -= 1
            self.changed.notify_all()

    async def abandon(self, hold_s: float) -> None:
        """The request is given up on: its slot stays taken for ``hold_s`` more seconds."""
        async with self.changed:
            self.out -= 1
            self.ghosts += 1
            self.changed.notify_all()  # the limit may have changed too
        asyncio.get_running_loop().call_later(hold_s, lambda: asyncio.ensure_future(self._unghost()))

    async def _unghost(self) -> None:
        async with self.changed:
            self.ghosts -= 1
            self.changed.notify_all()

    async def wake(self) -> None:
        """The limit grew: waiters re-check."""
        async with self.changed:
            self.changed.notify_all()


class ServerWatch:
    """What the server has done lately: the last sign of progress, answers and their rate."""

    def __init__(self):
        self.started = time.monotonic()
        self.last_progress = self.started
        self.answers = 0       # chat completions received
        self.replies = 0       # any HTTP reply, errors included
        self.answer_times: deque[float] = deque()
        self.last_error: str | None = None

    def replied(self) -> None:
        """Any reply (an error too): the server is working."""
        self.last_progress = time.monotonic()
        self.replies += 1

    def answered(self) -> None:
        self.answers += 1
        self.answer_times.append(time.monotonic())

    def per_minute(self) -> float | None:
        """Answers per minute over the last minute (or since the start, if shorter)."""
        now = time.monotonic()
        while self.answer_times and self.answer_times[0] < now - RATE_WINDOW_S:
            self.answer_times.popleft()
        span = min(RATE_WINDOW_S, now - self.started)
        if span < 1.0 or not self.answer_times:
            return None
        return len(self.answer_times) * 60.0 / span
