"""The judge's first pass (issue 27): prescore against the loopback server, stale files, build's judge_above."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).parent))
from openai_server import FakeOpenAI, last_user  # noqa: E402

from pipeline.core.decisions import append_decision, append_decisions  # noqa: E402
from pipeline.core.params import validate  # noqa: E402
from pipeline.core.records import make_record, write_records  # noqa: E402
from pipeline.core.team import Settled, Team  # noqa: E402
from pipeline.engines.agreement import agreement  # noqa: E402
from pipeline.engines.prescore import fingerprint_of, prescore  # noqa: E402
from pipeline.engines.prescore_file import judge_vs_people, read_scores  # noqa: E402
from pipeline.stages.build import included  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def score_by_number(body: dict) -> str:
    """The sample's own number, 1-10, as the score: a judge whose answers a test can predict."""
    n = int(re.search(r"take number (\d+)", last_user(body)).group(1))
    return json.dumps({"score": n % 10 + 1, "reason": f"take {n}\nfits"})


@pytest.fixture
def project(in_tmp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    (in_tmp / "data/prompts").mkdir(parents=True)
    shutil.copy(REPO / "data/prompts/judge.yaml", in_tmp / "data/prompts/judge.yaml")
    recs = [make_record(text=f"Cynical take number {i} on printers.") for i in range(20)]
    write_records(in_tmp / "samples.jsonl", recs)
    server = FakeOpenAI(responder=score_by_number).start_in_thread()
    yield in_tmp, recs, server
    server.stop_thread()


def judge(server, **kw):
    return validate({"eval": {"judge": {"model": "judge-model", "base_url": server.url, "concurrency": 4,
                                        "timeout_s": 5.0, "retry_base_s": 0.01, "retry_max_s": 0.05,
                                        "prices": {"judge-model": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}},
                                        **kw}}}).eval.judge


def test_prescore_scores_each_sample_once_and_resumes(project):
    root, recs, server = project
    out = root / "data/reviews/prescore.jsonl"
    counts = prescore(root / "samples.jsonl", judge(server), out)
    assert (counts["scored"], counts["already"]) == (20, 0) and server.stats.chat_ok == 20
    scores = read_scores(out)
    assert scores.row(recs[3]["id"])["score"] == 4 and scores.row(recs[3]["id"])["reason"] == "take 3 fits"
    assert scores.model == "judge-model" and scores.judge == fingerprint_of(judge(server))
    # a kill after 12 answers (the last one cut mid-write): the rerun asks for the rest only, and the
    # request cache answers those already paid for, so the server sees nothing new
    lines = out.read_bytes().split(b"\n")
    out.write_bytes(b"\n".join(lines[:12]) + b"\n" + lines[12][:20])
    counts = prescore(root / "samples.jsonl", judge(server), out)
    assert (counts["already"], counts["scored"]) == (12, 8) and server.stats.chat_ok == 20
    assert len(read_scores(out)) == 20
    assert prescore(root / "samples.jsonl", judge(server), out)["asked"] == 0


def test_another_judge_or_prompt_makes_the_file_stale_never_mixed(project):
    root, recs, server = project
    out = root / "data/reviews/prescore.jsonl"
    prescore(root / "samples.jsonl", judge(server), out)
    first = fingerprint_of(judge(server))
    other = judge(server, temperature=0.7)
    assert fingerprint_of(other) != first
    stale = read_scores(out, fingerprint_of(other))
    assert len(stale) == 0 and stale.stale == {first: 20}
    prompt = root / "data/prompts/judge.yaml"
    prompt.write_text(prompt.read_text().replace("[End of answer]", "[End]"))
    assert fingerprint_of(judge(server)) != first  # the prompt is part of who judged
    prescore(root / "samples.jsonl", other, out)
    assert server.stats.chat_ok == 40  # a new judge is asked anew
    now = read_scores(out)  # the file's latest judge: the new one, its rows only
    assert now.judge == fingerprint_of(other) and len(now) == 20 and now.stale == {first: 20}
    assert len(read_scores(out, first)) == 20


def test_judge_figures_match_scikit_learn():
    rng = np.random.default_rng(3)
    accepted = rng.random(500) < 0.6
    scores = np.clip(np.round(rng.normal(np.where(accepted, 7, 4), 2)), 1, 10).astype(np.int64)
    fig = judge_vs_people(scores, accepted)
    assert fig["auc"] == pytest.approx(roc_auc_score(accepted, scores), abs=1e-6)
    best = max(range(2, 11), key=lambda t: cohen_kappa_score(accepted, scores >= t))
    assert fig["best_threshold"] == best
    assert fig["kappa_at_best"] == pytest.approx(cohen_kappa_score(accepted, scores >= best), abs=1e-6)


def test_judge_above_takes_only_records_no_person_decided(project):
    root, recs, server = project
    folder = root / "data/reviews"
    prescore(root / "samples.jsonl", judge(server), folder / "prescore.jsonl")
    ids = [r["id"] for r in recs]
    append_decisions(folder / "alice.jsonl", ids[:5], "reject")  # scored 1-5: people say no
    append_decision(folder / "alice.jsonl", ids[9], "reject")  # the judge's 10: a person's reject wins
    append_decisions(folder / "bob.jsonl", ids[:5], "reject")
    team = Team.load(folder)
    scores = read_scores(folder / "prescore.jsonl")
    rules: Counter = Counter()
    kept = [r["id"] for r in included(iter(recs), Settled(team, "accepted"), Counter(), rules, (scores, 8))]
    # undecided 5..8, 10..19 (scores n % 10 + 1): 8 or more are 7, 8, 17, 18, 19 (scores 8, 9, 8, 9, 10)
    assert kept == [ids[i] for i in (7, 8, 17, 18, 19)]
    assert rules == {"accepted: left out": 6, "judge_above: kept": 5, "judge_above: left out": 9}
    report = agreement(team, scores=scores, resamples=50)
    assert report["judge"]["model"] == "judge-model" and report["judge"]["records"] == 6
    assert report["judge"]["auc"] is None  # the people rejected all six: no accept to rank against


async def test_review_shows_scores_sorts_by_them_and_marks_a_stale_file(project):
    from test_review_support import wait_for

    from pipeline.engines.prescore_file import row_line
    from tui.review_app import ReviewApp

    root, recs, server = project
    folder = root / "data/reviews"
    folder.mkdir(parents=True)
    with open(folder / "prescore.jsonl", "w") as fh:
        for i, r in enumerate(recs):
            fh.write(row_line(r["id"], "aaaaaaaaaaaa", i % 10 + 1, f"reason {i}", "judge-model") + "\n")
    app = ReviewApp(root / "samples.jsonl", folder / "alice.jsonl")
    async with app.run_test(size=(110, 34)) as pilot:
        s = app.review
        await wait_for(pilot, lambda: s.ready and s.score_of is not None, what="the scores")
        side = lambda: str(s.query_one("#rv-side").render())  # noqa: E731
        assert "1/10" in side() and "reason 0" in side()
        await pilot.press("s")
        assert s.pos == 9 and "10/10" in side() and "judge score" in s.note  # the best first
        await pilot.press("j")
        assert s.pos == 19
        await pilot.press("a")  # decided: the next in sort order that is still mine
        assert s.pos == 8
        await pilot.press("s")
        assert s.pos == 4 and "most uncertain" in s.note  # 5/10: the middle of 1-10
        await pilot.press("s")
        assert s.queue.order is None
    # params.yaml names a judge that did not write these rows: stale, never shown as scores
    (root / "params.yaml").write_text(f"eval:\n  judge:\n    model: judge-model\n    base_url: {server.url}\n")
    app = ReviewApp(root / "samples.jsonl", folder / "alice.jsonl")
    async with app.run_test(size=(110, 34)) as pilot:
        s = app.review
        await wait_for(pilot, lambda: s.ready and s.scores_note.startswith("stale"), what="the stale note")
        await pilot.pause()
        assert s.score_of is None and "stale: 20 scores from another judge" in str(s.query_one("#rv-side").render())
        await pilot.press("s")
        assert "no judge scores" in s.note
