"""Client-side pacing: requests/min and tokens/min, backoff with jitter, and a
shared pause when the server says Retry-After.

Pacing is a schedule, not a bucket refilled by a timer: each request takes the
next free slot (60/rpm seconds apart, or tokens × 60/tpm), with one second of
burst allowed, so there is no background task and no busy loop.
"""

from __future__ import annotations

import asyncio
import random
import time


class Pacer:
    def __init__(self, per_minute: int | None, burst_s: float = 1.0):
        self.interval = 60.0 / per_minute if per_minute else 0.0
        self.burst_s = burst_s
        self.next_free = 0.0

    def delay_for(self, amount: float, now: float) -> float:
        """Reserve ``amount`` units and return how long to wait before using them."""
        if not self.interval:
            return 0.0
        start = max(self.next_free, now)
        self.next_free = start + amount * self.interval
        return max(0.0, start - self.burst_s - now)

    def credit(self, amount: float) -> None:
        """Give back units reserved but not used (a request used fewer tokens than reserved)."""
        self.next_free -= amount * self.interval


class Limiter:
    def __init__(self, rpm: int | None, tpm: int | None):
        self.requests = Pacer(rpm)
        self.tokens = Pacer(tpm)
        self.paused_until = 0.0

    async def acquire(self, tokens: int) -> None:
        now = time.monotonic()
        wait = max(self.requests.delay_for(1, now), self.tokens.delay_for(tokens, now), self.paused_until - now)
        if wait > 0:
            await asyncio.sleep(wait)
        # A Retry-After that arrived while this one slept pauses it too.
        while (left := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def settle(self, reserved: int, used: int) -> None:
        if used < reserved:
            self.tokens.credit(reserved - used)

    def pause(self, seconds: float) -> None:
        """The server said 'slow down': every request waits, not just the one told."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)


def backoff(attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Exponential with jitter (half fixed, half random); a server's Retry-After wins when longer."""
    delay = min(cap, base * (2 ** attempt))
    delay = delay / 2 + rng.uniform(0, delay / 2)
    if retry_after is not None:
        delay = max(delay, retry_after + rng.uniform(0, 0.1 * retry_after))
    return delay


def retry_after(headers) -> float | None:
    """Seconds from ``retry-after-ms`` (OpenAI) or ``Retry-After`` (seconds; fractions accepted)."""
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date: rare from these APIs, fall back to backoff
    return None


def estimate_tokens(messages: list[dict]) -> int:
    """Prompt tokens, estimated high (3 characters a token) so pacing and budget err safe."""
    return sum(len(m.get("content") or "") // 3 + 4 for m in messages) + 3
