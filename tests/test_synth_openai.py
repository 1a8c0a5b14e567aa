"""Provider openai, end to end: the real openai client against the loopback server.

Every test runs the stage (pipeline.stages.synthesize.run) in an empty project folder
with its own prompt file, and asserts on what the server was asked and what
landed in data/raw/samples.jsonl and reports/synthesize.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import FakeOpenAI, Rule, request_key  # noqa: E402

from pipeline.stages import synthesize  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import validate  # noqa: E402
from pipeline.core.records import read_records  # noqa: E402

pytestmark = pytest.mark.timeout(60)

KEY = "sk-test-DO-NOT-LEAK-4f1c9e27b8a0"
PERSONA = {
    "mode": "lines",
    "system": "You are Tenny.",
    "user": "Write {n} lines about {topic}.",
    "grid": {"topic": ["airports", "gyms", "fridges", "weddings"]},
    "per_response": 5,
}


@pytest.fixture
def server():
    s = FakeOpenAI().start_in_thread()
    yield s
    s.stop_thread()


@pytest.fixture
def project(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (in_tmp / "data/prompts").mkdir(parents=True)
    return in_tmp


def write_prompt(name: str = "persona.yaml", **fields) -> str:
    body = {**PERSONA, **fields}
    path = Path("data/prompts") / name
    path.write_text(yaml.safe_dump(body, sort_keys=False), encoding="utf-8")
    return path.as_posix()


def params_for(server: FakeOpenAI, **synth) -> object:
    data = {
        "provider": "openai", "base_url": server.url, "model": "test-model",
        "prompts": ["data/prompts/persona.yaml"], "concurrency": 4,
        "timeout_s": 2.0, "retry_base_s": 0.01, "retry_max_s": 0.05,
        "prices": {"test-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
        "filters": {"min_chars": 1},
    }
    data.update(synth)
    return validate({"synthesize": data})


def run_stage(params) -> tuple[list[dict], dict]:
    synthesize.run(params)
    records = list(read_records("data/raw/samples.jsonl"))
    report = json.loads(Path("reports/synthesize.json").read_text())
    return records, report


# ---------------------------------------------------------------- lines, cache, provenance


def test_lines_mode_makes_records_with_provenance_and_report(project, server):
    write_prompt()
    records, report = run_stage(params_for(server))
    assert len(records) == 4 * 5
    assert server.stats.chat_requests == 4
    assert report["requests"]["sent"] == 4 and report["requests"]["ok"] == 4
    assert report["cleaned"]["numbering"] == 20  # the server numbers its lines "1. ..."
    assert not records[0]["text"].startswith("1.")
    meta = records[0]["meta"]
    assert meta["prompt_file"] == "data/prompts/persona.yaml"
    assert meta["slots"] == {"topic": "airports"} and meta["topic"] == "airports"
    assert meta["model"] == "test-model" and meta["temperature"] == 1.0
    assert meta["finish_reason"] == "stop" and meta["created"].startswith("2025-")
    assert len(meta["request_hash"]) == 32
    assert report["tokens"]["total"] > 0 and report["cost_usd"] > 0
    # plan order, not arrival order: the first four... come from the first grid cell
    assert [r["meta"]["topic"] for r in records[::5]] == ["airports", "gyms", "fridges", "weddings"]


def test_second_run_is_served_from_cache_and_writes_the_same_file(project, server):
    write_prompt()
    run_stage(params_for(server))
    first = Path("data/raw/samples.jsonl").read_bytes()
    records, report = run_stage(params_for(server))
    assert server.stats.chat_requests == 4  # nothing asked again
    assert report["requests"]["cached"] == 4 and report["requests"]["sent"] == 0
    assert report["cost_usd"] == 0 and report["cost_usd_cached"] > 0
    assert Path("data/raw/samples.jsonl").read_bytes() == first


def test_changing_a_sampling_param_is_a_new_request(project, server):
    write_prompt()
    run_stage(params_for(server))
    run_stage(params_for(server, temperature=0.5))
    assert server.stats.chat_requests == 8


# ---------------------------------------------------------------- faults


def test_faults_are_retried_and_counted(project, server):
    topics = ["airports", "gyms", "fridges", "weddings", "printers", "trains"]
    write_prompt(grid={"topic": topics})
    server.rules = [
        Rule("airports", ["429:0.2"]),
        Rule("gyms", ["500", "500"]),
        Rule("fridges", ["timeout"]),
        Rule("weddings", ["garbage"]),
        Rule("printers", ["drop"]),
    ]
    server.hang_s = 1.0
    server.keep_bodies = True
    records, report = run_stage(params_for(server, timeout_s=0.3, concurrency=6))
    assert sorted({r["meta"]["topic"] for r in records}) == sorted(topics)
    assert len(records) == 30
    assert report["retries_by_reason"] == {"429": 1, "5xx": 2, "timeout": 1, "garbage": 1, "connection": 1}
    assert report["requests"]["retries"] == 6 and report["requests"]["failed"] == 0
    assert report["requests"]["attempts"] == 12
    airports = next(request_key(b) for b in server.stats.bodies if "airports" in b["messages"][-1]["content"])
    first, second = server.stats.arrivals[airports]
    assert second - first >= 0.2  # the 429 said Retry-After: 0.2; backoff alone would be ~10 ms


def test_truncated_last_line_is_dropped_and_counted(project, server):
    write_prompt(grid={"topic": ["airports"]})
    server.rules = [Rule("airports", ["length"])]
    records, report = run_stage(params_for(server))
    assert len(records) == 4
    assert report["dropped"]["truncated"] == 1
    assert records[0]["meta"]["finish_reason"] == "length"


def test_retries_exhausted_is_a_counted_failure_and_the_rest_is_kept(project, server):
    write_prompt(grid={"topic": ["airports", "gyms"]})
    server.rules = [Rule("airports", ["500"] * 10)]
    records, report = run_stage(params_for(server, max_retries=2))
    assert len(records) == 5
    assert report["requests"]["failed"] == 1 and report["failed_by_reason"] == {"5xx": 1}
    # the next run asks only for the one that failed
    server.rules = []
    before = server.stats.chat_requests
    records, report = run_stage(params_for(server))
    assert server.stats.chat_requests - before == 1 and len(records) == 10


def test_quirky_answers_are_cleaned_and_counted(project, server):
    write_prompt(grid={"topic": ["airports"]})
    server.responder = lambda body: (
        "Sure! Here are 5 more lines:\n\n- \"Gate changes are a personality test.\"\n"
        "2) **Boarding groups are a caste system.**\n   \n"
        "Duty free: the only place a Toblerone costs a mortgage.\nHope these help!"
    )
    records, report = run_stage(params_for(server))
    assert [r["text"] for r in records] == [
        "Gate changes are a personality test.",
        "Boarding groups are a caste system.",
        "Duty free: the only place a Toblerone costs a mortgage.",
    ]
    assert report["dropped"]["chatter"] == 2
    assert report["cleaned"]["bullet"] == 1 and report["cleaned"]["numbering"] == 1
    assert report["cleaned"]["quotes"] == 1 and report["cleaned"]["emphasis"] == 1
    assert report["cleaned"]["empty_line"] == 1


def test_rule_filters_drop_by_rule(project, server):
    write_prompt(grid={"topic": ["airports"]})
    server.responder = lambda body: "Is this a question?\nIs a BANANA tax fair?\nNo question here.\nWhy?"
    filters = {"min_chars": 5, "require": [r"\?$"], "ban": ["banana"]}
    records, report = run_stage(params_for(server, filters=filters))
    assert [r["text"] for r in records] == ["Is this a question?"]
    assert report["dropped"] == {"filter:min_chars": 1, "filter:require:\\?$": 1, "filter:ban:banana": 1}


# ---------------------------------------------------------------- budget


def test_max_requests_stops_keeps_and_resumes(project, server, capfd):
    write_prompt()
    records, report = run_stage(params_for(server, max_requests=2, concurrency=1))
    assert server.stats.chat_requests == 2 and len(records) == 10
    assert report["budget_stop"] == 1 and report["requests"]["unsent"] == 2
    assert "budget stop: synthesize.max_requests" in capfd.readouterr().err
    records, report = run_stage(params_for(server))
    assert server.stats.chat_requests == 4 and len(records) == 20


def test_max_cost_is_never_exceeded(project, server):
    write_prompt(grid={"topic": [f"topic {i}" for i in range(10)]})
    cap = 0.0005  # worst case per request ~$0.00023 at max_tokens 100: room for two or three
    records, report = run_stage(params_for(server, max_cost_usd=cap, max_tokens=100))
    assert report["budget_stop"] == 1
    assert 0 < report["requests"]["sent"] < 10
    assert report["cost_usd"] <= cap
    assert report["requests"]["unsent"] == 10 - report["requests"]["sent"]


def test_max_cost_without_a_price_is_an_error(project, server):
    write_prompt()
    with pytest.raises(UserError, match=r"synthesize.prices has no entry for model 'other'"):
        run_stage(params_for(server, model="other", max_cost_usd=1.0))


# ---------------------------------------------------------------- the key


def test_api_key_never_reaches_disk_logs_or_errors(project, server, capfd):
    write_prompt()
    run_stage(params_for(server, max_requests=3))
    run_stage(params_for(server))
    server.rules = [Rule("", ["http:401"])]
    write_prompt(grid={"topic": ["something new"]})
    with pytest.raises(UserError) as err:
        run_stage(params_for(server))
    assert "refused the key in $OPENAI_API_KEY" in str(err.value)
    assert f"Bearer {KEY}" in server.stats.auth  # the key was really used...
    out = capfd.readouterr()
    leaks = [p for p in project.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
    assert leaks == []  # ...and is in no file written: samples, report, cache (WAL too), batch files
    assert KEY not in out.out + out.err + str(err.value)
    assert any(project.joinpath(".tenny").iterdir())


# ---------------------------------------------------------------- bad input


def one_line_error(params) -> str:
    with pytest.raises(UserError) as err:
        run_stage(params)
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"user": "Write {n} lines about {topc}."}, r"persona.yaml: user: unknown slot \{topc\} \(did you mean \{topic\}\?\)"),
        ({"grid": {}}, r"persona.yaml: grid is empty; mode lines needs at least one slot"),
        ({"grid": {"topic": []}}, r"persona.yaml: grid.topic: empty list"),
        ({"user": "Write some lines."}, r"persona.yaml: user: the template references no slot"),
        ({"usr": "typo"}, r"persona.yaml: unknown field 'usr' \(did you mean 'user'\?\)"),
        ({"repeat": 3}, r"persona.yaml: repeat: 3 needs nonce: true"),
        ({"mode": "rewrite", "user": "Rewrite {text} as {topic}", "input": "nope.jsonl"}, r"persona.yaml: input: nope.jsonl not found"),
        ({"mode": "pairs", "user": "{chunk} {topic}", "docs": "docs/*.md"}, r"persona.yaml: docs: no file matches 'docs/\*.md'"),
        ({"mode": "pairs", "user": "About {topic}"}, r"persona.yaml: user: mode pairs needs the slot \{chunk\}"),
    ],
)
def test_bad_prompt_files_are_one_line_errors(project, server, fields, expected):
    write_prompt(**fields)
    assert __import__("re").search(expected, one_line_error(params_for(server)))
    assert server.stats.chat_requests == 0


def test_missing_prompt_file_and_bad_yaml(project, server):
    assert "data/prompts/persona.yaml: prompt file not found" in one_line_error(params_for(server))
    Path("data/prompts/persona.yaml").write_text("user: [unclosed\n")
    assert "data/prompts/persona.yaml:2: not valid YAML" in one_line_error(params_for(server))


def test_missing_key_names_the_variable(project, server, monkeypatch):
    write_prompt()
    monkeypatch.delenv("OPENAI_API_KEY")
    assert "synthesize.api_key_env: $OPENAI_API_KEY is not set; export OPENAI_API_KEY=" in one_line_error(params_for(server))
    monkeypatch.setenv("MY_KEY", KEY)
    records, _ = run_stage(params_for(server, api_key_env="MY_KEY"))
    assert len(records) == 20


def test_a_key_pasted_into_params_is_refused_without_echoing_it(project, server):
    write_prompt()
    message = one_line_error(params_for(server, api_key_env=KEY))
    assert "must name an environment variable" in message and KEY not in message


def test_unreachable_base_url_is_one_line_error(project):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_prompt()
    params = validate({"synthesize": {"provider": "openai", "base_url": f"http://127.0.0.1:{port}/v1",
                                      "retry_base_s": 0.01, "retry_max_s": 0.02}})
    message = one_line_error(params)
    assert message.startswith(f"synthesize.base_url: cannot connect to http://127.0.0.1:{port}/v1")
    assert "start the server or fix synthesize.base_url" in message


def test_base_url_that_is_not_a_url(project, server):
    write_prompt()
    assert "synthesize.base_url 'localhost:8000' is not an http(s) URL" in one_line_error(params_for(server, base_url="localhost:8000"))


def test_unknown_model_404_names_the_setting(project, server):
    write_prompt()
    server.rules = [Rule("", ["http:404"])]
    assert "synthesize.model 'test-model'" in one_line_error(params_for(server))


def test_requests_per_minute_paces_the_run(project, server):
    import time

    write_prompt(grid={"topic": [f"t{i}" for i in range(16)]})
    start = time.monotonic()
    run_stage(params_for(server, requests_per_minute=300, concurrency=16))  # 5/s after a 1 s burst
    elapsed = time.monotonic() - start
    first, last = min(t[0] for t in server.stats.arrivals.values()), max(t[0] for t in server.stats.arrivals.values())
    # 16 requests: 6 at once, then ten 0.2 s apart: the last leaves 2 s after the first. The margin
    # is wide because a loaded machine can delay the first arrival while the later ones are due.
    assert last - first >= 1.5
    assert elapsed < 5


def test_429_pauses_every_request_not_just_the_one_told(project, server):
    write_prompt(grid={"topic": ["airports", "gyms", "fridges"]})
    server.rules = [Rule("airports", ["429:0.3"])]
    server.latency = 0.05
    server.keep_bodies = True
    run_stage(params_for(server, concurrency=2))
    arrivals = {b["messages"][-1]["content"].split()[-1].rstrip("."): server.stats.arrivals[request_key(b)][0]
                for b in server.stats.bodies}
    # fridges was free to go when gyms finished (~0.05 s), but the Retry-After held everyone
    assert arrivals["fridges"] - arrivals["airports"] >= 0.3
    assert arrivals["gyms"] - arrivals["airports"] < 0.05


def test_quota_exhausted_stops_with_what_to_do(project, server):
    write_prompt()
    server.rules = [Rule("", ["quota"])]
    assert "no quota left (HTTP 429 insufficient_quota); add credit" in one_line_error(params_for(server))
    assert server.stats.chat_requests <= 4  # not retried


def test_batch_needs_the_cache(project, server):
    write_prompt()
    assert "synthesize.batch needs synthesize.cache: true" in one_line_error(params_for(server, batch=True, cache=False))


def test_cache_false_asks_again(project, server):
    write_prompt()
    run_stage(params_for(server, cache=False))
    run_stage(params_for(server, cache=False))
    assert server.stats.chat_requests == 8 and not Path(".tenny/synthesize-cache.sqlite").exists()


def test_budget_stop_still_serves_answers_already_paid_for(project, server):
    write_prompt(grid={"topic": ["c", "d"]})
    run_stage(params_for(server))
    write_prompt(grid={"topic": ["a", "b", "c", "d"]})
    records, report = run_stage(params_for(server, max_requests=1))
    assert [r["meta"]["topic"] for r in records[::5]] == ["a", "c", "d"]
    assert report["requests"]["unsent"] == 1 and report["requests"]["cached"] == 2
    assert server.stats.chat_requests == 3


def test_cli_startup_does_not_import_the_openai_client():
    import subprocess

    code = ("import sys; from pipeline.cli import build_parser; build_parser(); "
            "import pipeline.engines.synthesis.providers.openai_api; "
            "heavy = [m for m in ('openai', 'aiohttp', 'httpx2') if m in sys.modules]; "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
