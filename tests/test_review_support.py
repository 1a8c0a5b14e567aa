"""Shared helpers for the review tests (no tests here)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pipeline.core.records import dumps, make_record

HOSTILE = (
    "[bold red]styled?[/] [link=http://evil.example]click[/link] "
    "\x1b[31mred\x1b[0m \x1b]8;;http://evil.example\x07osc\x1b]8;;\x07 \x1b[2J\x1b[H "
    "\u202eevil-rtl\u202c \u200bzero\u200dwidth \x00nul \x07bell \r carriage"
)


def write_records(path: Path, n: int = 12, extra: list[dict] | None = None) -> list[dict]:
    topics = ["airports", "gyms", "fridges"]
    records = [
        make_record(text=f"Sample {i}: a cynical take on {topics[i % 3]}.",
                    meta={"source": "data/prompts/persona.yaml", "template": "take",
                          "slots": {"topic": topics[i % 3]}, "model": "gpt-4o-mini", "temperature": 1.0})
        for i in range(n)
    ]
    records += extra or []
    path.write_text("".join(dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


def pair_and_chat() -> list[dict]:
    return [
        make_record(prompt="Tell me about queues.", completion="They are where hope goes to wait."),
        make_record(messages=[{"role": "system", "content": "You are Tenny."},
                              {"role": "user", "content": "Thoughts on Mondays?"},
                              {"role": "assistant", "content": "A weekly reminder that time is a loop."}]),
    ]


async def wait_for(pilot, cond, timeout: float = 10.0, what: str = "condition") -> None:
    """Let the app run until ``cond()`` holds (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.01)
    await pilot.pause()


async def ready(pilot) -> None:
    screen = pilot.app.review
    await wait_for(pilot, lambda: screen.ready or screen.error is not None, what="the index")
    await wait_for(pilot, lambda: not screen.busy, what="background work")


def run(coro):
    return asyncio.run(coro)
