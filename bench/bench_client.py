"""Benchmark: tenny's adaptive client vs a bare AsyncOpenAI loop, against slow servers.

Two loopback servers (tests/openai_server.py ``--slots``, each in its own
process, so its CPU is not the client's):

- **one slot**: works on one request at a time for S seconds, queues the
  rest, and serves a request whose client gave up anyway (as servers that do
  not cancel do). A laptop's llama.cpp or ``transformers serve``.
- **many slots**: 64 at once, 1 s each: a server with room to spare.

For each, tenny (the synthesize stage, default settings but the ones named)
and a bare loop (``AsyncOpenAI`` with its own retries, a semaphore at the same
fixed concurrency, the same timeout) run the same requests in the same run.
Printed: wall time, the server's busy time (all the work it did) and the
share of it wasted on requests nobody waited for any more, requests that
failed, requests the server received, and the limit tenny converged to.

    python bench/bench_client.py            # the issue's sizes: 60 x 0.5 s one slot, 640 x 1 s many slots
    python bench/bench_client.py --quick    # a quarter of the requests
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.bench_synthesize import KEY, control, messages, server_process, stats, tenny_run  # noqa: E402


def slot_server(slots: int, service_s: float):
    return server_process(service_s, slots=slots)


def drained(url: str, limit_s: float = 300) -> dict:
    """The server's figures once it has worked off its queue (abandoned requests are still served)."""
    deadline = time.monotonic() + limit_s
    while (s := stats(url))["active"] and time.monotonic() < deadline:
        time.sleep(0.2)
    return s


async def bare_loop(url: str, n: int, concurrency: int, timeout_s: float) -> int:
    """What a script would do: a semaphore and the client's own retries (2) and timeout. Returns failures."""
    import openai

    client = openai.AsyncOpenAI(api_key=KEY, base_url=url, timeout=timeout_s)
    sem = asyncio.Semaphore(concurrency)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with sem:
            try:
                await client.chat.completions.create(model="test-model", messages=messages(i), max_tokens=256)
            except openai.OpenAIError:
                failed += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    await client.close()
    return failed


def measure(url: str, run) -> tuple[float, dict, object]:
    control(url, reset=True)
    start = time.perf_counter()
    result = run()
    wall = time.perf_counter() - start
    return wall, drained(url), result


def row(name: str, wall: float, served: dict, failed: int, limit: str, ideal: float | None = None) -> str:
    busy, wasted = served["busy_s"], served["wasted_s"]
    share = wasted / busy if busy else 0.0
    vs = f"{wall / ideal:>9.3f}" if ideal else f"{wall / busy:>9.3f}" if busy else f"{'-':>9}"
    return (f"  {name:<6} {wall:>8.2f} {busy:>8.2f} {share:>8.1%} {vs} {failed:>7} "
            f"{served['chat_requests']:>9} {limit:>12}")


def scenario(title: str, slots: int, service_s: float, n: int, concurrency: int, timeout_s: float,
             ideal: float | None) -> None:
    print(f"\n{title}: {n} requests, {slots} slot(s) x {service_s} s, concurrency {concurrency}, "
          f"timeout_s {timeout_s}" + (f", ideal {ideal:.2f} s" if ideal else ""))
    print(f"  {'client':<6} {'wall s':>8} {'busy s':>8} {'wasted':>8} "
          f"{'wall/ideal' if ideal else 'wall/busy':>9} {'failed':>7} {'received':>9} {'limit':>12}")
    with slot_server(slots, service_s) as url:
        wall, served, failed = measure(url, lambda: asyncio.run(bare_loop(url, n, concurrency, timeout_s)))
        print(row("bare", wall, served, failed, f"{concurrency} fixed", ideal))
        wall, served, (_, report) = measure(url, lambda: tenny_run(url, n, concurrency, timeout_s=timeout_s))
        c = report["client"]
        print(row("tenny", wall, served, report["requests"]["failed"],
                  f"{c['concurrency_final']} (low {c['concurrency_lowest']})", ideal))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a quarter of the requests")
    args = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    scale = 4 if args.quick else 1
    print(f"{os.cpu_count()} CPUs; wasted = share of the server's busy time spent on requests nobody waited for")
    scenario("one slot", 1, 0.5, 60 // scale, 16, 6.0, None)
    n = 640 // scale
    scenario("many slots", 64, 1.0, n, 64, 60.0, n * 1.0 / 64)


if __name__ == "__main__":
    main()
