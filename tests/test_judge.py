"""The judge: scripted judges on the loopback server, the eval stage with a tiny model, and `tenny judge`.

Each scripted judge reads the request the way a real one would (the prompt
text, the two labelled answers) and answers from that, so the figures in
reports/judge.json are checked against what the judge actually said.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import REPO, env_with_bin  # noqa: E402
from openai_server import FakeOpenAI, last_user  # noqa: E402

from pipeline.cli import main as tenny  # noqa: E402
from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import load_params, validate  # noqa: E402
from pipeline.core.records import make_record, write_jsonl, write_records  # noqa: E402
from pipeline.engines.judging import formats, prompt_file  # noqa: E402
from pipeline.engines.judging.runner import Answers, judge_answers, prepare, summary  # noqa: E402
from pipeline.engines.judging.stats import Z95, mean_interval, prompt_figures, wilson  # noqa: E402
from pipeline.engines.judging.verdicts import parse_score, parse_verdict  # noqa: E402

pytestmark = pytest.mark.timeout(120)

KEY = "sk-judge-DO-NOT-LEAK-93be0c1d"
PROBE = 1  # the one request that asks a new server whether it takes response_format
ITEMS = [Answers(f"Give me a cynical take on {t}.", f"base answer about {t}", f"ADAPTER answer about {t}")
         for t in ("airports", "gyms", "fridges")]


# ---------------------------------------------------------------- scripted judges


def answers_shown(body: dict) -> tuple[str, str]:
    user = last_pair_turn(body)
    a = re.search(r"\[Answer A\]\n(.*?)\n\[End of answer A\]", user, re.S).group(1)
    b = re.search(r"\[Answer B\]\n(.*?)\n\[End of answer B\]", user, re.S).group(1)
    return a, b


def last_pair_turn(body: dict) -> str:
    """The turn holding the answers (the first user turn: a retry appends a follow-up after it)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


def is_pair(body: dict) -> bool:
    return "[Answer A]" in last_pair_turn(body)


def scored_answer(body: dict) -> str:
    return re.search(r"\[Answer\]\n(.*?)\n\[End of answer\]", last_pair_turn(body), re.S).group(1)


def always_a(body: dict) -> str:
    if is_pair(body):
        return '{"winner": "A", "reason": "the first one"}'
    return '{"score": 5, "reason": "fine"}'


def prefers_adapter(body: dict) -> str:
    """Picks whichever label holds the adapter's answer, in the wrappers real models use."""
    if is_pair(body):
        a, _ = answers_shown(body)
        label = "A" if a.startswith("ADAPTER") else "B"
        return f'Sure! Here is my verdict:\n```json\n{{"winner": "{label}", "reason": "more Tenny"}}\n```\nHope that helps.'
    answer = scored_answer(body)
    score = (8 if "airports" in answer else 9) if answer.startswith("ADAPTER") else (2 if "gyms" in answer else 3)
    return f'{{"score": {score}, "reason": "scored"}}'


def garbage(body: dict) -> str:
    return "I think the first one is nicer, honestly."


def garbage_then_json(body: dict) -> str:
    """Unreadable at first; answers properly when asked again (the follow-up turn)."""
    if not any(m["role"] == "assistant" for m in body["messages"]):
        return "Both are fine I guess"
    return always_a(body)


@pytest.fixture
def project(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    (in_tmp / "data/prompts").mkdir(parents=True)
    shutil.copy(REPO / "data/prompts/judge.yaml", in_tmp / "data/prompts/judge.yaml")
    return in_tmp


@pytest.fixture
def serve():
    servers = []

    def start(responder) -> FakeOpenAI:
        def answer(body: dict) -> str:  # the judges below answer the response_format probe as a model would
            return '{"winner": "tie", "reason": "probe"}' if body["messages"] == formats.PROBE else responder(body)

        s = FakeOpenAI(responder=answer).start_in_thread()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop_thread()


def judge_params(server: FakeOpenAI, **judge) -> dict:
    return {"model": "judge-model", "base_url": server.url, "concurrency": 4, "timeout_s": 5.0,
            "retry_base_s": 0.01, "retry_max_s": 0.05,
            "prices": {"judge-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}, **judge}


def run_judge(server: FakeOpenAI, items=ITEMS, **judge) -> tuple[dict, list[dict]]:
    params = validate({"eval": {"judge": judge_params(server, **judge)}})
    return judge_answers(prepare(params.eval.judge), items, baseline="base", challenger="adapter")


# ---------------------------------------------------------------- the figures


def test_a_judge_that_always_answers_a_cannot_move_the_result(project, serve):
    server = serve(always_a)
    report, rows = run_judge(server)
    assert report["win_rate"] == 0.5 and report["position_bias"] == 1.0
    assert (report["n_prompts"], report["n_pairs"], report["invalid"]) == (3, 6, 0)
    assert (report["wins"], report["losses"], report["ties"]) == (3, 3, 0)
    # by prompt: every prompt's two orders split, each scores 1/2
    assert (report["prompts_judged"], report["prompt_splits"], report["consistency"]) == (3, 3, 0.0)
    low, high = wilson(1.5, 3)
    assert (report["win_rate_low"], report["win_rate_high"]) == (round(low, 4), round(high, 4))
    pairs = [r for r in rows if r["kind"] == "pair"]
    # every prompt in both orders, each verdict mapped to the side that was shown first
    for prompt in {i.prompt for i in ITEMS}:
        mine = [r for r in pairs if r["prompt"] == prompt]
        assert sorted(r["shown_first"] for r in mine) == ["adapter", "base"]
        assert all(r["verdict"] == "A" and r["winner"] == r["shown_first"] for r in mine)
        assert all(r["reason"] == "the first one" for r in mine)


def test_a_judge_that_prefers_the_adapter_gives_one_with_its_interval(project, serve):
    server = serve(prefers_adapter)
    report, rows = run_judge(server)
    assert report["win_rate"] == 1.0 and (report["wins"], report["losses"]) == (6, 0)
    assert (report["prompt_wins"], report["consistency"]) == (3, 1.0)
    # Wilson at p = 1 over the 3 prompts (not the 6 verdicts): [n / (n + z^2), 1]
    assert report["win_rate_low"] == pytest.approx(3 / (3 + Z95 ** 2), abs=1e-4)
    assert report["win_rate_high"] == 1.0
    assert report["position_bias"] == 0.5  # half its picks were shown first, half second
    persona = report["persona"]
    assert persona["challenger"]["mean"] == pytest.approx((8 + 9 + 9) / 3, abs=1e-3)
    assert persona["baseline"]["mean"] == pytest.approx((3 + 2 + 3) / 3, abs=1e-3)
    for side in ("baseline", "challenger"):
        p = persona[side]
        assert p["n"] == 3 and 1 <= p["low"] <= p["mean"] <= p["high"] <= 10
    scores = {(r["model"], r["answer"]): r["score"] for r in rows if r["kind"] == "persona"}
    assert scores[("adapter", "ADAPTER answer about airports")] == 8
    assert scores[("base", "base answer about gyms")] == 2


def test_garbage_replies_are_invalid_never_guessed(project, serve):
    server = serve(garbage)
    report, rows = run_judge(server)
    assert report["invalid"] == report["n_pairs"] == 6
    assert report["win_rate"] is None and report["position_bias"] is None
    assert (report["wins"], report["losses"], report["ties"]) == (0, 0, 0)
    assert report["persona"]["baseline"]["n"] == 0 and report["persona"]["baseline"]["mean"] is None
    assert all(r["verdict"] is None and r["winner"] is None and r["retried"] for r in rows if r["kind"] == "pair")
    # asked once, then once more with the follow-up turn: 12 verdict/score requests, 12 retries
    assert report["requests"]["asked_again"] == 12 and server.stats.chat_ok == 24 + PROBE


def test_an_unreadable_reply_is_asked_once_more(project, serve):
    server = serve(garbage_then_json)
    server.keep_bodies = True
    report, rows = run_judge(server)
    assert report["invalid"] == 0 and report["win_rate"] == 0.5
    assert all(r["retried"] and r["status"] == "ok" for r in rows)
    assert server.stats.chat_ok == 2 * len(rows) + PROBE
    # the second request is the first exchange plus a follow-up turn, so the cache cannot replay the first reply
    second = [b for b in server.stats.bodies if any(m["role"] == "assistant" for m in b["messages"])]
    assert len(second) == len(rows)
    assert all(b["messages"][-2]["content"] == "Both are fine I guess" and "only the JSON object" in last_user(b)
               for b in second)


def test_a_rerun_sends_no_request_and_the_key_is_written_nowhere(project, serve):
    server = serve(prefers_adapter)
    first, rows = run_judge(server)
    asked = server.stats.chat_requests
    assert first["requests"]["sent"] == asked - PROBE == 12 and first["cost_usd"] > 0
    again, rows_again = run_judge(server)
    assert server.stats.chat_requests == asked
    assert again["requests"] == {**first["requests"], "sent": 0, "cached": 12}
    # the first run's cost also holds the response_format probe (one short request), never cached
    assert again["cost_usd"] == 0 and again["cost_usd_cached"] == pytest.approx(first["cost_usd"], rel=0.03)
    assert again["cost_usd_cached"] < first["cost_usd"]
    strip = ("cost_usd", "cost_usd_cached", "requests", "tokens", "client")
    assert {k: v for k, v in again.items() if k not in strip} == {k: v for k, v in first.items() if k not in strip}
    assert rows_again == rows
    for f in project.rglob("*"):
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


def test_budget_stop_counts_unanswered_and_never_overspends(project, serve):
    server = serve(always_a)
    report, _ = run_judge(server, max_cost_usd=0.0015, persona_score=False)
    assert report["cost_usd"] <= 0.0015
    assert 0 < report["unanswered"] < report["n_pairs"] and report["invalid"] == 0
    assert report["wins"] + report["losses"] + report["ties"] + report["unanswered"] == report["n_pairs"]


# ---------------------------------------------------------------- parsing and statistics


@pytest.mark.parametrize("reply, verdict", [
    ('{"winner": "B", "reason": "x"}', "B"),
    ('```json\n{"winner": "a", "reason": "x"}\n```', "A"),
    ('Verdict: {"winner": "Answer B", "reason": "x"} -- done', "B"),
    ('{"note": 1} then {"winner": "TIE", "reason": "same"}', "tie"),
    ('{"winner": "C", "reason": "x"}', None),
    ('{"winner": "A or B", "reason": "x"}', None),
    ('A is better.', None),
    ('{"winner": "A", "reason": "1.1.2.2.2.2.2', "A"),  # cut at max_tokens after a complete verdict
    ('{"winner": "A", "reason": ', "A"),
    ('{"winner": "A"', None), ('{"winner": "A', None), ('{"reason": "x", "winner": "B', None),
])
def test_verdicts_are_read_leniently_but_never_guessed(reply, verdict):
    assert parse_verdict(reply)[0] == verdict


@pytest.mark.parametrize("reply, score", [
    ('{"score": 7, "reason": "ok"}', 7), ('{"score": "9"}', 9), ('{"score": 8.0}', 8),
    ('{"score": 11}', None), ('{"score": 7.5}', None), ('{"score": true}', None), ("seven", None),
    ('{"score": 1, "reason": "1.1.2.2.2.2', 1), ('{"score": 1', None), ('{"score": 11, "reason": "x', None),
])
def test_scores_are_whole_numbers_from_one_to_ten(reply, score):
    assert parse_score(reply)[0] == score


def test_verdicts_are_asked_for_with_a_json_schema_where_the_server_takes_it(project, serve):
    server = serve(always_a)
    server.keep_bodies = True
    report, _ = run_judge(server)
    assert report["structured"] == 1 and report["invalid"] == 0
    judged = [b for b in server.stats.bodies if b["messages"] != formats.PROBE]
    assert len(judged) == 12
    for body in judged:
        schema = body["response_format"]["json_schema"]["schema"]
        assert set(schema["required"]) == ({"winner", "reason"} if is_pair(body) else {"score", "reason"})
    memory = json.loads((project / ".tenny/judge-formats.json").read_text())
    assert memory == {f"{server.url} judge-model": True}


def test_a_server_that_rejects_response_format_is_judged_from_free_text_and_told_once(project, serve, capsys):
    server = serve(prefers_adapter)
    server.rejects = {"response_format"}
    report, _ = run_judge(server)
    assert report["structured"] == 0 and report["invalid"] == 0 and report["win_rate"] == 1.0
    assert capsys.readouterr().err.count("rejects response_format") == 1
    assert server.stats.faults["rejected_field"] == 1  # the probe only: every verdict was asked without it
    run_judge(server, persona_score=False)  # remembered: no probe, no message
    assert server.stats.faults["rejected_field"] == 1 and "rejects" not in capsys.readouterr().err


def test_the_eval_screen_line_shows_the_win_rate_by_prompt_and_the_consistency(project, serve):
    from tui.widgets.eval_judge import JudgeReport, summary_line

    report, _ = run_judge(serve(always_a))
    assert re.search(r"server: concurrency \d+ of 4 \(lowest \d+\), median latency [\d.]+ s", summary(report))
    line = summary_line(JudgeReport(report))
    assert line.startswith("adapter over base: 50 % (") and "over 3 prompts (both orders agree on 0 %)" in line
    assert "position bias 100 %" in line


def test_wilson_matches_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    for k, n in ((0, 5), (3, 3), (5, 10), (17, 40), (1, 2)):
        ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_prompt_figures_score_each_prompt_once():
    per_prompt = [["adapter", "adapter"], ["adapter", "base"], ["tie", "tie"], ["base", None], [None, None]]
    f = prompt_figures(per_prompt, "adapter", "base")
    assert f["prompts_judged"] == 4  # the prompt with no valid verdict is not a unit
    assert f["win_rate"] == pytest.approx((1 + 0.5 + 0.5 + 0) / 4)
    assert (f["prompt_wins"], f["prompt_losses"], f["prompt_splits"]) == (1, 1, 1)
    assert f["consistency"] == pytest.approx(2 / 3, abs=1e-4)  # of the 3 prompts with both orders valid, 2 agree
    low, high = wilson(2.0, 4)
    assert (f["win_rate_low"], f["win_rate_high"]) == (round(low, 4), round(high, 4))


def test_the_key_is_not_in_a_repr_and_the_cache_key_covers_the_server(project, serve, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    first, other = serve(prefers_adapter), serve(always_a)
    params = validate({"eval": {"judge": judge_params(first)}})
    judge = prepare(params.eval.judge)
    assert KEY not in repr(judge) and KEY not in str(judge)
    a, _ = run_judge(first)
    b, _ = run_judge(other)  # same model name, another server: asked again, not served old verdicts
    assert other.stats.chat_requests == 12 + PROBE and b["requests"]["cached"] == 0
    assert a["win_rate"] == 1.0 and b["win_rate"] == 0.5
    assert KEY not in caplog.text


def test_wilson_and_mean_intervals():
    low, high = wilson(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    assert wilson(0, 0) is None
    m = mean_interval([4, 6, 5, 5, 6, 4])
    assert m["mean"] == 5 and m["low"] == pytest.approx(5 - 2.5706 * (0.8944 / 6 ** 0.5), abs=2e-3)
    assert mean_interval([7])["low"] is None


def test_a_broken_judge_prompt_names_the_file_line_and_field(project):
    path = project / "data/prompts/judge.yaml"
    path.write_text(path.read_text().replace("{answer_b}", "{answer_c}"))
    with pytest.raises(UserError, match=r"judge\.yaml:\d+: field 'pair' must contain \{answer_b\}"):
        prompt_file.load(path)


def test_missing_key_and_pasted_key_are_clear_errors(project, serve, monkeypatch):
    server = serve(always_a)
    monkeypatch.delenv("OPENAI_API_KEY")
    params = validate({"eval": {"judge": judge_params(server)}})
    with pytest.raises(UserError, match=r"\$OPENAI_API_KEY is not set"):
        prepare(params.eval.judge)
    params = validate({"eval": {"judge": judge_params(server, api_key_env=KEY)}})
    with pytest.raises(UserError) as err:
        prepare(params.eval.judge)
    assert KEY not in str(err.value)


# ---------------------------------------------------------------- the eval stage


def final_data(root) -> None:
    texts = [f"Sample number {i}: printers sense fear and deadlines sense printers." for i in range(12)]
    write_records(root / "data/final/train.jsonl", [make_record(prompt=f"Topic {i}?", completion=t) for i, t in enumerate(texts)])
    write_records(root / "data/final/val.jsonl", [make_record(prompt="Topic 100?", completion="Printers sense fear.")])


def test_eval_stage_writes_judge_json_off_and_on(project, serve):
    from pipeline.stages import base, train
    from pipeline.stages import eval as evaluate

    final_data(project)
    overrides = ["train.base_model=tiny", "train.max_steps=1", "train.batch_size=4", "train.lora.target_modules=[]",
                 "eval.prompts=['Topic one', 'Topic two']", "eval.max_new_tokens=3"]
    p = load_params(project / "params.yaml", overrides)
    base.run(p)
    train.run(p)
    evaluate.run(p)
    assert json.loads((project / "reports/judge.json").read_text()) == {"model": None, "n_pairs": 0}
    assert [json.loads(x)["kind"] for x in (project / "reports/judgments.jsonl").read_text().splitlines()] == ["off"]

    server = serve(always_a)
    p = load_params(project / "params.yaml", overrides + ["eval.judge.model=judge-model", f"eval.judge.base_url={server.url}"])
    evaluate.run(p)
    report = json.loads((project / "reports/judge.json").read_text())
    gens = [json.loads(line) for line in (project / "reports/generations.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (project / "reports/judgments.jsonl").read_text().splitlines()]
    assert (report["model"], report["baseline"], report["challenger"]) == ("judge-model", "base", "adapter")
    assert report["n_prompts"] == len(gens) == 2 and report["n_pairs"] == 4 and report["win_rate"] == 0.5
    g = {x["prompt"]: x for x in gens}
    for r in (r for r in rows if r["kind"] == "pair"):
        other = "base" if r["shown_first"] == "adapter" else "adapter"
        assert (r["answer_a"], r["answer_b"]) == (g[r["prompt"]][r["shown_first"]], g[r["prompt"]][other])


# ---------------------------------------------------------------- tenny judge


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, env=env_with_bin(), check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(project):
    git(project, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True, env=env_with_bin())
    for tag, who in (("v1", "base"), ("v2", "ADAPTER")):
        write_jsonl(project / "reports/generations.jsonl",
                    [{"prompt": i.prompt, "base": i.baseline, "adapter": f"{who} answer {n}"} for n, i in enumerate(ITEMS)])
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", tag)
        git(project, "tag", tag)
    return project


def test_tenny_judge_compares_two_revisions(repo, serve, capsys):
    server = serve(prefers_adapter)
    judge = ["--set", "eval.judge.model=judge-model", "--set", f"eval.judge.base_url={server.url}"]
    assert tenny([*judge, "judge", "v1", "v2"]) == 0
    out = capsys.readouterr().out
    assert "win rate 1.00" in out and "v2 (challenger) vs v1 (baseline)" in out
    folder = repo / ".tenny/judge/v1_vs_v2"
    report = json.loads((folder / "judge.json").read_text())
    assert (report["baseline"], report["challenger"], report["win_rate"]) == ("v1", "v2", 1.0)
    rows = [json.loads(line) for line in (folder / "judgments.jsonl").read_text().splitlines()]
    assert {r["winner"] for r in rows if r["kind"] == "pair"} == {"v2"}

    assert tenny([*judge, "judge", "v2", "v1", "--json", "--out", "here"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["win_rate"] == 0.0 and printed == json.loads((repo / "here/judge.json").read_text())


def test_tenny_judge_exits_2_without_generations_or_judge(repo, serve, capsys):
    server = serve(always_a)
    git(repo, "rm", "-q", "reports/generations.jsonl")
    git(repo, "commit", "-q", "-m", "no generations")
    judge = ["--set", "eval.judge.model=judge-model", "--set", f"eval.judge.base_url={server.url}"]
    assert tenny([*judge, "judge", "v1", "HEAD"]) == 2
    assert "revision 'HEAD' has no reports/generations.jsonl" in capsys.readouterr().err
    assert tenny(["judge", "v1", "v2"]) == 2
    assert "eval.judge.model is not set" in capsys.readouterr().err
    assert server.stats.chat_requests == 0
