"""Benchmark: tenny synthesize vs a bare AsyncOpenAI loop against the loopback server.

Prints, per latency, the ratio of wall time to the ideal (requests × latency ÷
concurrency) for both, in the same run, plus tenny's wall over the bare
client's; then, with a share of answers failing (429 / 500), the samples lost
and the successful requests asked twice (both should be 0).

The server runs in its own process (so its CPU is not the client's), keeps
connections alive, and delays answers with asyncio. Each tenny run starts from
an empty folder: nothing cached.

    python bench/bench_synthesize.py                      # the full size: 2000 requests, concurrency 64
    python bench/bench_synthesize.py --requests 300 --repeats 1 --latencies 0.1   # quick, while developing
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
KEY = "sk-bench-not-a-real-key"
PER_RESPONSE = 5


@contextmanager
def server_process(latency: float, fail_rate: float = 0.0, slots: int | None = None):
    """The loopback test server in its own process (``slots``: how many requests it serves at once)."""
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests/openai_server.py"), "--latency", str(latency), "--fail-rate", str(fail_rate),
         *(["--slots", str(slots)] if slots is not None else [])],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().split()
        if not line or line[0] != "PORT":
            raise RuntimeError("the test server did not start")
        yield f"http://127.0.0.1:{line[1]}/v1"
    finally:
        proc.terminate()
        proc.wait(10)


def control(url: str, **body) -> dict:
    request = urllib.request.Request(url.replace("/v1", "/_control"), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def stats(url: str) -> dict:
    with urllib.request.urlopen(url.replace("/v1", "/_stats")) as response:
        return json.load(response)


def messages(i: int) -> list[dict]:
    """What tenny's prompt file below sends for cell i (so both clients do the same work)."""
    return [{"role": "system", "content": "You are Tenny."},
            {"role": "user", "content": f"Write {PER_RESPONSE} lines about topic {i}."}]


async def bare_loop(url: str, n: int, concurrency: int) -> float:
    import openai

    client = openai.AsyncOpenAI(api_key=KEY, base_url=url, max_retries=0, timeout=60)
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await client.chat.completions.create(model="test-model", messages=messages(i), temperature=1.0,
                                                 top_p=1.0, max_tokens=256, seed=0)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - start
    await client.close()
    return wall


def tenny_run(url: str, n: int, concurrency: int, **synth) -> tuple[float, dict]:
    from pipeline.core.params import validate
    from pipeline.stages import synthesize

    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="tenny-bench-") as tmp:
        os.chdir(tmp)
        try:
            Path("data/prompts").mkdir(parents=True)
            Path("data/prompts/persona.yaml").write_text(yaml.safe_dump({
                "mode": "lines", "system": "You are Tenny.", "per_response": PER_RESPONSE,
                "user": "Write {n} lines about {topic}.", "grid": {"topic": [f"topic {i}" for i in range(n)]},
            }))
            params = validate({"synthesize": {
                "provider": "openai", "base_url": url, "model": "test-model", "concurrency": concurrency,
                "max_tokens": 256, "filters": {"min_chars": 1}, **synth,
            }})
            start = time.perf_counter()
            with redirect_stdout(io.StringIO()):  # the stage's one-line summary would break the table
                synthesize.run(params)
            wall = time.perf_counter() - start
            return wall, json.loads(Path("reports/synthesize.json").read_text())
        finally:
            os.chdir(here)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latencies", default="1,0.1", help="seconds, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="runs per client; medians are printed")
    ap.add_argument("--fail-rate", type=float, default=0.1, help="share of first attempts answered 429/500; 0 skips")
    args = ap.parse_args()
    os.environ["OPENAI_API_KEY"] = KEY
    n, c = args.requests, args.concurrency
    print(f"{n} requests, concurrency {c}, {args.repeats} runs each, {os.cpu_count()} CPUs")
    print(f"{'latency':>8} {'ideal s':>8} {'bare s':>8} {'tenny s':>8} {'bare/ideal':>10} {'tenny/ideal':>11} {'tenny/bare':>10}")
    for latency in (float(x) for x in args.latencies.split(",")):
        ideal = n * latency / c
        bare, ours, bare_cpu, our_cpu = [], [], [], []
        with server_process(latency) as url:
            asyncio.run(bare_loop(url, min(n, 200), c))  # warm-up: imports and first connections count for neither
            for _ in range(args.repeats):  # interleaved, so a noisy neighbour hits both alike
                cpu = time.process_time()
                bare.append(asyncio.run(bare_loop(url, n, c)))
                bare_cpu.append(time.process_time() - cpu)
                cpu = time.process_time()
                ours.append(tenny_run(url, n, c)[0])
                our_cpu.append(time.process_time() - cpu)
        b, t = statistics.median(bare), statistics.median(ours)
        print(f"{latency:>8.3f} {ideal:>8.2f} {b:>8.2f} {t:>8.2f} {b / ideal:>10.3f} {t / ideal:>11.3f} {t / b:>10.3f}"
              f"   (runs: bare {', '.join(f'{x:.2f}' for x in bare)}; tenny {', '.join(f'{x:.2f}' for x in ours)}; "
              f"client CPU ms/request: bare {1000 * statistics.median(bare_cpu) / n:.2f}, "
              f"tenny {1000 * statistics.median(our_cpu) / n:.2f})")
    if args.fail_rate:
        latency = min(float(x) for x in args.latencies.split(","))
        with server_process(latency, args.fail_rate) as url:
            wall, report = tenny_run(url, n, c)
            served = stats(url)
        lost = n * PER_RESPONSE - report["samples"]
        print(f"with {args.fail_rate:.0%} of first attempts failing (429/500) at {latency} s latency: "
              f"samples lost {lost}, successful requests asked twice {served['ok_asked_twice']}, "
              f"retries {report['requests']['retries']} {report['retries_by_reason']}, failed {report['requests']['failed']}, "
              f"wall {wall:.2f} s")


if __name__ == "__main__":
    main()
