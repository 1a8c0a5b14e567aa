"""Synthesis saturation: synthesize.stop_when_novelty_below stops a paid run once the
generator mostly repeats itself, and the Pipeline screen shows the novelty figure.

The runs go through the real openai client against the loopback server, whose
responder answers the first K grid cells with sentences of their own and every
later cell with a near-copy of one joke (so every sample still has its own id).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.utils import default_process

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import FakeOpenAI, last_user  # noqa: E402

from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import validate  # noqa: E402
from pipeline.core.records import read_records  # noqa: E402
from pipeline.engines.dedupe_index import Incremental, dedupe_processed  # noqa: E402
from pipeline.stages import synthesize  # noqa: E402

pytestmark = pytest.mark.timeout(120)

KEY = "sk-test-saturation"
K = 150          # distinct answers before the generator repeats itself
CELLS = 320      # grid cells in the plan, one sample each: past STOP_AT + all in flight (2 × concurrency 8)
WINDOW = 100
# With WINDOW 100 and 0.2: after sample i (0-based) the window holds the distinct samples
# i-99..149 and the first near-copy (150); fewer than 20 new first at i = 231.
STOP_AT = 232


def fresh(i: int) -> str:
    """A sentence of its own for cell i: seeded random words, far below fuzz.ratio 90 from any other."""
    rng = random.Random(i)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(8)]
    return "Cell " + " ".join(words) + "."


def answer_for(i: int) -> str:
    return fresh(i) if i < K else f"Same old joke about the queue at the post office again, take {i}."


def responder(body: dict) -> str:
    return answer_for(int(last_user(body).rsplit("cell", 1)[1].strip(" .")))


@pytest.fixture
def server():
    s = FakeOpenAI(responder=responder).start_in_thread()
    yield s
    s.stop_thread()


@pytest.fixture
def project(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (in_tmp / "data/prompts").mkdir(parents=True)
    prompt = {"mode": "lines", "system": "You are Tenny.", "user": "Write {n} line about cell {cell}.",
              "grid": {"cell": list(range(CELLS))}, "per_response": 1}
    (in_tmp / "data/prompts/persona.yaml").write_text(yaml.safe_dump(prompt, sort_keys=False), encoding="utf-8")
    return in_tmp


def params_for(server: FakeOpenAI, **synth):
    data = {
        "provider": "openai", "base_url": server.url, "model": "test-model",
        "prompts": ["data/prompts/persona.yaml"], "concurrency": 8,
        "timeout_s": 5.0, "retry_base_s": 0.01, "retry_max_s": 0.05,
        "prices": {"test-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
        "filters": {"min_chars": 1}, "novelty_window": WINDOW,
    }
    data.update(synth)
    return validate({"synthesize": data, "dedupe": {"threshold": 90}})


def run_stage(params) -> tuple[list[dict], dict]:
    assert synthesize.run(params) == 0
    return list(read_records("data/raw/samples.jsonl")), json.loads(Path("reports/synthesize.json").read_text())


def test_a_saturated_run_stops_writes_what_it_has_and_a_cached_rerun_sends_nothing(project, server, capsys):
    records, report = run_stage(params_for(server, stop_when_novelty_below=0.2))
    err = capsys.readouterr().err
    assert ("synthesize: stopped at 232 samples: only 19 % of the last 100 were new "
            "(synthesize.stop_when_novelty_below 0.2)") in err
    # complete and valid: the samples up to the stop, in plan order, nothing after it
    assert [r["text"] for r in records] == [answer_for(i) for i in range(STOP_AT)]
    assert report["novelty_stop"] == 1 and report["novelty_last_window"] == 0.19
    assert report["samples"] == STOP_AT
    # it stopped sending: only what was in flight at the stop went past it
    sent = server.stats.chat_requests
    assert STOP_AT <= sent <= STOP_AT + 2 * 8
    assert report["requests"]["sent"] == sent and report["requests"]["unsent"] == CELLS - sent

    first = Path("data/raw/samples.jsonl").read_bytes()
    _, again = run_stage(params_for(server, stop_when_novelty_below=0.2))
    assert server.stats.chat_requests == sent  # nothing asked again, nothing new paid for
    assert again["requests"]["sent"] == 0 and again["novelty_stop"] == 1
    assert Path("data/raw/samples.jsonl").read_bytes() == first
    assert "stopped at 232 samples" in capsys.readouterr().err


def test_without_the_param_the_run_goes_to_the_end(project, server, capsys):
    records, report = run_stage(params_for(server))
    assert server.stats.chat_requests == CELLS and len(records) == CELLS
    assert report["novelty_stop"] == 0 and "novelty_last_window" not in report
    assert "stopped at" not in capsys.readouterr().err


def test_a_run_that_stays_new_goes_to_the_end_with_its_share(project, server, capsys):
    # every cell its own sentence: the share stays 1 however long the window
    server.responder = lambda body: fresh(int(last_user(body).rsplit("cell", 1)[1].strip(" .")))
    records, report = run_stage(params_for(server, stop_when_novelty_below=0.5))
    assert len(records) == CELLS and report["novelty_stop"] == 0 and report["novelty_last_window"] == 1.0
    assert "stopped at" not in capsys.readouterr().err


def test_novelty_window_below_100_is_refused_by_name():
    with pytest.raises(UserError, match="novelty_window"):
        validate({"synthesize": {"novelty_window": 50}})
    with pytest.raises(UserError, match="stop_when_novelty_below"):
        validate({"synthesize": {"stop_when_novelty_below": 20}})


def test_the_incremental_index_keeps_exactly_what_dedupe_keeps():
    rng = random.Random(7)
    patterns = ["the queue at the {} is longer than my patience", "{} again, because of course",
                "nobody asked for a {} but here we are"]
    fillers = ["airport", "airports", "gym", "post office", "fridge", "wedding", "dentist", "bank"]
    texts = [default_process(rng.choice(patterns).format(rng.choice(fillers)) + rng.choice(["", "!", " ok"]))
             for _ in range(400)]
    for threshold in (80.0, 90.0, 95.0):
        index = Incremental(threshold)
        mine = [index.add(t) for t in texts]
        theirs = (dedupe_processed(texts, threshold, workers=1, block=64).matched < 0).tolist()
        assert mine == theirs
        assert 0 < sum(mine) < len(texts)  # the corpus has both kinds at every threshold


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet="aab c", max_size=12), max_size=40), st.sampled_from([0.0, 50.0, 75.0, 90.0, 100.0]))
def test_the_incremental_index_matches_dedupe_on_short_near_strings(texts, threshold):
    # short strings over a tiny alphabet: many pairs right at the threshold
    index = Incremental(threshold)
    assert [index.add(t) for t in texts] == (dedupe_processed(texts, threshold, workers=1, block=8).matched < 0).tolist()


# ---------------------------------------------------------------- the Pipeline screen

DVC_YAML = """\
stages:
  synthesize:
    cmd: python -c "print('synthesize')"
  dedupe:
    cmd: python -c "print('dedupe')"
"""


def pipeline_repo(tmp_path: Path, built_once) -> Path:
    from test_diff_repo import empty_repo

    repo = built_once(empty_repo, tmp_path / "r")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text("dedupe:\n  threshold: 90\n")
    return repo


async def test_pipeline_screen_shows_the_novelty_share_at_80x24(tmp_path, built_once):
    from test_app import app_for, on_screen, plain, wait_for

    repo = pipeline_repo(tmp_path, built_once)
    rows = [(n, 0.9 if n <= 300 else 0.12) for n in range(100, 701, 100)]
    (repo / "reports").mkdir()
    (repo / "reports/novelty.csv").write_text("samples,kept_share\n" + "".join(f"{n},{s}\n" for n, s in rows))
    app = app_for(repo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2, 30, "stage states")
        detail = lambda: plain(screen.query_one("#stage-detail"))  # noqa: E731
        await wait_for(pilot, lambda: "novelty" in detail(), 5, "the novelty line (synthesize selected)")
        assert "12 % new in the last 100 (700 samples)" in detail()
        assert "12 % new in the last 100" in on_screen(app)

        # the file changes (dedupe ran again): the next look shows the new figure
        (repo / "reports/novelty.csv").write_text("samples,kept_share\n100,1.0\n150,0.5\n")
        await pilot.press("down")
        await wait_for(pilot, lambda: "50 % new in the last 50 (150 samples)" in detail(), 5, "dedupe's figure")


async def test_pipeline_screen_says_run_dedupe_when_there_is_no_novelty_yet(tmp_path, built_once):
    from test_app import app_for, plain, wait_for

    app = app_for(pipeline_repo(tmp_path, built_once))
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2, 30, "stage states")
        await wait_for(pilot, lambda: "novelty: run dedupe" in plain(screen.query_one("#stage-detail")), 5,
                       "the hint")
