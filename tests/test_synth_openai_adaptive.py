"""Issue 25: the client adapts to a slow server instead of storming it.

The loopback server here has one slot (tests/openai_server.py ``slots=1``):
it works on one request at a time, queues the rest, and serves a request its
client gave up on anyway, as servers that do not cancel do. The stage's
default concurrency (16) times the service time is longer than the 2 s
timeout, so a client that times out by the clock abandons the back of the
queue and its retries join the queue behind the abandoned requests.
"""

from __future__ import annotations

import json
import random
import re
import sys
import threading
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import FakeOpenAI, Rule, request_key  # noqa: E402

from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import validate  # noqa: E402
from pipeline.engines.synthesis.openai_client.adaptive import AdaptiveLimit  # noqa: E402
from pipeline.engines.synthesis.openai_client.progress import status_line  # noqa: E402
from pipeline.stages import synthesize  # noqa: E402

pytestmark = pytest.mark.timeout(60)
KEY = "sk-test-adaptive-0000"


def project(n: int, url: str, **synth):
    Path("data/prompts").mkdir(parents=True, exist_ok=True)
    Path("data/prompts/persona.yaml").write_text(yaml.safe_dump({
        "mode": "lines", "system": "You are Tenny.", "user": "Write {n} lines about {topic}.", "per_response": 5,
        "grid": {"topic": [f"topic {i}" for i in range(n)]},
    }), encoding="utf-8")
    return validate({"synthesize": {"provider": "openai", "base_url": url, "model": "test-model",
                                    "filters": {"min_chars": 1}, **synth}})


def test_one_slot_server_with_2s_timeouts_no_failures_and_no_wasted_work(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    service, n = 0.15, 20  # 16 queued x 0.15 s = 2.4 s: the back of the first wave waits past the timeout
    server = FakeOpenAI(latency=service, slots=1).start_in_thread()
    try:
        params = project(n, server.url, timeout_s=2.0, retry_base_s=0.05)
        assert params.synthesize.concurrency * service > params.synthesize.timeout_s  # the storm's setting
        run = threading.Thread(target=synthesize.run, args=(params,))
        run.start()
        assert server.wait_until(lambda s: s.chat_ok >= n // 2)
        live = status_line(Path.cwd())  # what the Pipeline screen shows while the stage runs
        run.join(30)
    finally:
        server.stop_thread()
    assert live is not None and re.search(r"synthesize \d+/20 · [\d.]+/min · limit \d+/16 · [\d.]+ s each", live), live
    assert status_line(Path.cwd()) is None  # the run is over
    report = json.loads(Path("reports/synthesize.json").read_text())
    assert report["requests"]["failed"] == 0
    assert report["requests"]["ok"] == n
    assert server.stats.wasted_s <= 0.05 * server.stats.busy_s
    assert server.stats.chat_requests == n  # nothing asked twice
    client = report["client"]
    assert client["concurrency_ceiling"] == 16
    assert client["latency_s_median"] >= service


def test_a_server_that_stops_answering_ends_the_run_with_one_line_and_keeps_the_answers(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    server = FakeOpenAI(rules=[Rule("topic 5", ["timeout"] * 10)], hang_s=1.5).start_in_thread()
    try:
        params = project(8, server.url, timeout_s=0.3, max_retries=1, retry_base_s=0.01, retry_max_s=0.02,
                         concurrency=4)
        with pytest.raises(UserError) as err:
            synthesize.run(params)
        message = str(err.value)
        assert "\n" not in message
        assert server.url in message and "'test-model'" in message
        assert "stopped answering: 7 answers" in message and "last error: timeout" in message
        asked = dict(server.stats.by_key)
        server.rules = []  # the server is back: only the missing request is asked
        synthesize.run(params)
    finally:
        server.stop_thread()
    again = {k: n - asked.get(k, 0) for k, n in server.stats.by_key.items() if n - asked.get(k, 0)}
    assert len(again) == 1
    assert json.loads(Path("reports/synthesize.json").read_text())["requests"]["cached"] == 7


# ---------------------------------------------------------------- the limit alone, against simulated servers


def simulate(limit: AdaptiveLimit, slots: int, service, requests: int) -> float:
    """Discrete-event run of ``requests`` against a FIFO server with ``slots``; returns the wall time."""
    import heapq

    rng = random.Random(0)
    now, sent, free_at = 0.0, 0, [0.0] * slots
    out: list[tuple[float, float, int, int]] = []  # (done at, sent at, load, epoch)
    while sent < requests or out:
        while sent < requests and len(out) < limit.in_force:
            start = max(now, heapq.heappop(free_at))
            done = start + service(rng)
            heapq.heappush(free_at, done)
            heapq.heappush(out, (done, now, len(out) + 1, limit.epoch))
            sent += 1
        done, at, load, epoch = heapq.heappop(out)
        now = done
        limit.answered(done - at, load, epoch)
    return now


def test_limit_settles_low_on_a_one_slot_server():
    limit = AdaptiveLimit(16)
    wall = simulate(limit, slots=1, service=lambda r: 0.5, requests=200)
    assert limit.in_force <= 4 and limit.latency_s <= 4 * 0.5
    assert wall == pytest.approx(100, rel=0.01)  # the server never idles


def test_limit_stays_at_the_ceiling_when_the_server_has_room_even_with_uneven_answers():
    limit = AdaptiveLimit(64)
    simulate(limit, slots=256, service=lambda r: r.lognormvariate(0, 0.5), requests=3000)
    assert limit.decreases == 0 and limit.in_force == 64


def test_limit_halves_once_per_window_on_losses():
    limit = AdaptiveLimit(16)
    epoch = limit.epoch
    for _ in range(10):  # ten timeouts of requests sent under one limit: one decrease
        limit.lost(epoch)
    assert limit.in_force == 8


# ---------------------------------------------------------------- the Pipeline screen


@pytest.mark.timeout(180)  # git, dvc and the app start here
async def test_the_pipeline_screen_shows_the_clients_pace_while_a_stage_runs(tmp_path):
    from test_app import SIZE, plain, wait_for
    from test_diff_repo import dvc, git

    from pipeline.core.params import load_params
    from tui.app import TennyApp

    repo = tmp_path / "r"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    # A stand-in for synthesize: it writes .tenny/client-status.json as the client's Progress does.
    (repo / "stage.py").write_text(
        "import json, os, sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from pipeline.engines.synthesis.openai_client.progress import status_path\n"
        "os.makedirs('.tenny', exist_ok=True)\n"
        "for i in range(600):\n"
        "    state = {'stage': 'judge', 'running': True, 'done': 7, 'total': 32, 'failed': 0, 'retries': 0,\n"
        "             'updated_at': time.time(), 'answers_per_min': 12.0, 'limit': 2, 'ceiling': 8,\n"
        "             'latency_s': 3.6, 'eta_s': 125.0}\n"
        "    open(status_path(), 'w').write(json.dumps(state))\n"
        "    time.sleep(0.1)\n")
    (repo / "dvc.yaml").write_text("stages:\n  judge:\n    cmd: python stage.py\n    outs: [never.txt]\n")
    app = TennyApp(repo, load_params(repo / "none.yaml"))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 1, what="stage states")
        await pilot.press("r")
        status = screen.query_one("#run-status")
        await wait_for(pilot, lambda: "12.0/min" in plain(status), what="the client's pace")
        assert "judge 7/32 · 12.0/min · limit 2/8 · 3.6 s each · left 2:05" in plain(status)
        await pilot.press("x")
        await wait_for(pilot, lambda: screen.current is None, what="cancel")
