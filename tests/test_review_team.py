"""Team review (issue 27): reviewers by name, task routing, agreement, adjudication, build policies."""

from __future__ import annotations

import io
import json
import os
import subprocess

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from test_review_support import wait_for, write_records

from pipeline.core.decisions import (
    append_decision,
    append_decisions,
    default_reviewer,
    read_decisions,
    reviewer_log,
    reviewer_logs,
)
from pipeline.core.errors import UserError
from pipeline.core.team import Settled, Team
from pipeline.engines.agreement import _alpha_of, _kd, _patterns, agreement, alpha_with_interval
from pipeline.engines.review_queue import Filter, ReviewQueue

# ---------------------------------------------------------------- names and logs


def test_reviewer_names_become_safe_file_names(tmp_path):
    assert reviewer_log(tmp_path, "alice").name == "alice.jsonl"
    assert reviewer_log(tmp_path, "Zoë Smith").name == "Zoë_Smith.jsonl"
    assert reviewer_log(tmp_path, "../../etc/passwd").parent == tmp_path  # no way out of the folder
    with pytest.raises(UserError, match="prescore"):
        reviewer_log(tmp_path, "prescore")
    with pytest.raises(UserError, match="letter or digit"):
        reviewer_log(tmp_path, "/..")
    # the folder's logs: the old single log counts as a reviewer; aside files and prescores do not
    for name in ("alice.jsonl", "decisions.jsonl", "prescore.jsonl", "bob.jsonl.torn-20260101T000000-1.jsonl"):
        (tmp_path / name).write_text("")
    (tmp_path / "README.md").write_text("x")
    assert list(reviewer_logs(tmp_path)) == ["alice", "decisions"]


def test_default_reviewer_is_git_user_name_then_user(tmp_path, monkeypatch):
    monkeypatch.delenv("TENNY_REVIEWER", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("USER", "login-name")
    monkeypatch.chdir(tmp_path)
    assert default_reviewer() == "login-name"
    subprocess.run(["git", "config", "--global", "user.name", "Ada Lovelace"], check=True)
    assert default_reviewer() == "Ada Lovelace"


def test_two_machines_as_one_reviewer_merge_with_every_decision_kept(tmp_path):
    """Both clones append to alice.jsonl; git merges them (merge=union in .gitattributes) and nothing is lost."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}

    def git(cwd, *args):
        return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True)

    origin = tmp_path / "origin"
    origin.mkdir()
    git(origin, "init", "-q", "-b", "main")
    (origin / ".gitattributes").write_text(open(".gitattributes").read())
    log = origin / "data/reviews/alice.jsonl"
    append_decision(log, "r0", "accept", by="alice")
    git(origin, "add", ".")
    git(origin, "commit", "-qm", "start")
    git(tmp_path, "clone", "-q", str(origin), "laptop")
    # the same decisions, the same second, on two machines: lines differ only by their decision id
    for machine in (origin, tmp_path / "laptop"):
        append_decision(machine / "data/reviews/alice.jsonl", "r1", "accept", by="alice")
        append_decision(machine / "data/reviews/alice.jsonl", "r2", "reject", by="alice")
        git(machine, "commit", "-qam", "review")
    git(tmp_path / "laptop", "pull", "-q", "--no-rebase", "--no-edit")
    rows = list(read_decisions(tmp_path / "laptop/data/reviews/alice.jsonl"))
    assert len(rows) == 5 and len({r["did"] for r in rows}) == 5
    assert Team.load(tmp_path / "laptop/data/reviews").logs["alice"].state("r2").status == "rejected"


def test_a_teammates_cut_last_line_is_skipped_with_a_note(tmp_path):
    append_decisions(tmp_path / "alice.jsonl", ["a", "b"], "accept")
    with open(tmp_path / "alice.jsonl", "ab") as fh:
        fh.write(b'{"id":"c","action":"rej')
    before = (tmp_path / "alice.jsonl").read_bytes()
    team = Team.load(tmp_path)
    assert sorted(team.logs["alice"].hist) == ["a", "b"]
    assert "alice.jsonl:3: a cut last line" in team.notes[0]
    assert (tmp_path / "alice.jsonl").read_bytes() == before  # a reader never repairs
    # a bad line anywhere else is still an error naming it
    (tmp_path / "bob.jsonl").write_text('{"id":"a","action":"love"}\n')
    with pytest.raises(UserError, match="bob.jsonl:1: action"):
        Team.load(tmp_path)


# ---------------------------------------------------------------- agreement


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """Three reviewers over 3,000 records: each decides ~70%, with their own error rate, and tags some."""
    folder = tmp_path_factory.mktemp("reviews")
    rng = np.random.default_rng(7)
    n = 3000
    ids = [f"{i:016x}" for i in range(n)]
    truth = rng.random(n) < 0.65
    for name, noise in (("alice", 0.08), ("bob", 0.15), ("carol", 0.3)):
        pick = rng.random(n) < 0.7
        label = truth ^ (rng.random(n) < noise)
        append_decisions(folder / f"{name}.jsonl", [i for i, p, a in zip(ids, pick, label) if p and a], "accept")
        append_decisions(folder / f"{name}.jsonl", [i for i, p, a in zip(ids, pick, label) if p and not a], "reject")
        for i in rng.choice(np.flatnonzero(pick), 200, replace=False):
            append_decision(folder / f"{name}.jsonl", ids[i], "tag", tags=["funny"] if i % 2 else ["off-persona"])
    return folder


def test_agreement_matches_krippendorff_and_scikit_learn(generated):
    team = Team.load(generated)
    report = agreement(team, resamples=200)
    # the references see the logs' decisions as a reviewer x record table (nan: not decided)
    statuses = {}
    for name in team.names:
        for d in read_decisions(generated / f"{name}.jsonl"):
            if d["action"] in ("accept", "reject"):
                statuses.setdefault(d["id"], {})[name] = 1.0 if d["action"] == "accept" else 0.0
    ids = sorted(statuses)
    table = np.array([[statuses[i].get(n, np.nan) for i in ids] for n in team.names])
    expected = krippendorff.alpha(reliability_data=table, level_of_measurement="nominal")
    assert report["alpha"] == pytest.approx(expected, abs=1e-6)
    low, high = report["alpha_ci95"]
    assert low < report["alpha"] < high and high - low < 0.1
    for pair in report["pairs"]:
        a, b = team.names.index(pair["a"]), team.names.index(pair["b"])
        both = ~np.isnan(table[a]) & ~np.isnan(table[b])
        assert pair["both_decided"] == both.sum()
        assert pair["kappa"] == pytest.approx(cohen_kappa_score(table[a, both], table[b, both]), abs=1e-6)
        assert pair["agreement"] == pytest.approx((table[a, both] == table[b, both]).mean(), abs=1e-6)
    assert report["reviewers"]["alice"]["decided"] == (~np.isnan(table[0])).sum()
    assert set(report["tags"]) == {"funny", "off-persona"}
    assert 0 < report["tags"]["funny"]["agreement"] < 1


def test_the_bootstrap_path_is_the_packages_alpha(generated):
    """Resamples are figured from pattern counts with the package's own coincidence functions: at the
    data's own counts that must be krippendorff.alpha exactly."""
    m = Team.load(generated).matrix()
    vc = np.stack([(m.status == 1).sum(1), (m.status == 2).sum(1)], 1)
    pats, counts = _patterns(vc)
    unit_o = np.stack([_kd._coincidences(p[None, :]) for p in pats])
    assert _alpha_of(unit_o, counts[None, :])[0] == pytest.approx(
        krippendorff.alpha(value_counts=vc, level_of_measurement="nominal"), abs=1e-12)
    assert alpha_with_interval(vc[:0])["alpha"] is None  # nothing two people coded: no figure, no crash


# ---------------------------------------------------------------- policies


@pytest.fixture
def team3(tmp_path):
    folder = tmp_path / "reviews"
    # r1: all accept · r2: 2 accept 1 reject · r3: 1 accept 2 reject · r4: alice only · r5: nobody
    # r6: alice edits, bob accepts · r7: split 1-1, the lead settles it
    votes = {"alice": {"r1": "a", "r2": "a", "r3": "a", "r4": "a", "r7": "a"},
             "bob": {"r1": "a", "r2": "a", "r3": "r", "r6": "a", "r7": "r"},
             "carol": {"r1": "a", "r2": "r", "r3": "r"}}
    for name, v in votes.items():
        for rid, code in v.items():
            append_decision(folder / f"{name}.jsonl", rid, "accept" if code == "a" else "reject", by=name)
    append_decision(folder / "alice.jsonl", "r6", "edit", text="better", by="alice")
    append_decision(folder / "carol.jsonl", "r2", "tag", tags=["funny"], by="carol")
    append_decision(folder / "lead.jsonl", "r7", "accept", by="lead")
    return Team.load(folder)


@pytest.mark.parametrize("policy, kept", [
    ("not_rejected", {"r1", "r4", "r5", "r6"}),
    ("accepted", {"r1", "r4", "r6"}),
    ("majority", {"r1", "r2", "r4", "r6"}),
    ("unanimous", {"r1", "r6"}),  # r4: one reviewer is too few at overlap 2
    ("adjudicated", {"r1", "r6", "r7"}),  # r7 split 1-1, settled by the lead
])
def test_build_policies(team3, policy, kept):
    # the lead's log counts only as an adjudicator's, only under adjudicated
    adjudicators = ["lead"] if policy == "adjudicated" else []
    if policy != "adjudicated":
        team3.logs.pop("lead")
    settled = Settled(team3, policy, overlap=2, adjudicators=adjudicators)
    got = set()
    for rid in ("r1", "r2", "r3", "r4", "r5", "r6", "r7"):
        state = settled.decide(rid)[1]
        status = state.status if state else "pending"
        if status == "accepted" or (policy == "not_rejected" and status == "pending"):
            got.add(rid)
    assert got == kept
    if policy == "adjudicated":
        assert settled.decide("r7")[0] == "adjudicated"
    assert settled.decide("r6")[1].text == "better"  # the edit in force travels with the accept
    assert settled.decide("r2")[1].tags == ["funny"]


def test_unknown_adjudicators_are_an_error_naming_them(team3):
    team3.check_adjudicators(["lead"])
    with pytest.raises(UserError, match=r"review.adjudicators: no review log for 'laed', 'boss'.*reviewers: alice"):
        team3.check_adjudicators(["laed", "lead", "boss"])


# ---------------------------------------------------------------- routing


def test_queue_routes_with_overlap_and_follows_the_team_live(tmp_path):
    records = tmp_path / "samples.jsonl"
    recs = write_records(records, 10)
    folder = tmp_path / "reviews"
    ids = [r["id"] for r in recs]
    append_decisions(folder / "bob.jsonl", ids[:4], "accept")
    append_decision(folder / "carol.jsonl", ids[0], "accept")  # r0: done at overlap 2 (bob + carol)
    append_decision(folder / "carol.jsonl", ids[1], "reject")  # r1: done, a disagreement
    q = ReviewQueue(records, folder / "alice.jsonl", overlap=2, team_dir=folder)
    q.open()
    assert list(q.others) == ["bob", "carol"]
    assert q.first_pending() == 2  # r0, r1 are done: not in my queue
    assert list(np.flatnonzero(q.for_me())) == list(range(2, 10))

    def shown(spec):
        q.set_filter(Filter.parse(spec))
        return list(q.visible_positions())

    assert shown("undecided") == list(range(4, 10))
    assert shown("needs-more") == [2, 3]
    assert shown("disagreements") == [1]
    q.decide(q.sample(2), "reject")  # mine: 2 is done now, and a disagreement with bob
    assert shown("mine") == [2] and shown("disagreements") == [1, 2] and shown("needs-more") == [3]
    assert q.team_decisions(ids[2])["bob"].status == "accepted"
    # carol decides r3 in her own session: it leaves my queue at the next look
    assert q.sync_team() == []
    append_decision(folder / "carol.jsonl", ids[3], "accept")
    assert q.sync_team() == ["carol"]
    assert q.first_pending() == 4 and q.counts()["team"] == {"bob": 4, "carol": 3}
    # a new reviewer's log appears mid-session
    append_decision(folder / "dave.jsonl", ids[4], "accept")
    assert "dave" in q.sync_team() and q.counts()["team"]["dave"] == 1
    # an adjudicator's decision settles a record at once
    q2 = ReviewQueue(records, folder / "erin.jsonl", overlap=3, adjudicators=["dave"], team_dir=folder)
    q2.open()
    assert not q2.for_me()[4] and q2.for_me()[5]


async def test_screen_shows_each_reviewers_decision_and_the_stats(tmp_path):
    from tui.review_app import ReviewApp
    from rich.console import Console

    from tui.widgets.review_stats import ReviewStats, stats_renderable

    records = tmp_path / "samples.jsonl"
    recs = write_records(records, 6)
    folder = tmp_path / "reviews"
    append_decision(folder / "bob.jsonl", recs[0]["id"], "edit", text="Bob's better take.", by="bob")
    append_decision(folder / "alice.jsonl", recs[0]["id"], "reject", by="alice")
    append_decision(folder / "bob.jsonl", recs[1]["id"], "accept", by="bob")
    app = ReviewApp(records, folder / "alice.jsonl", by="alice")
    app.review.overlap = 2
    async with app.run_test(size=(110, 34)) as pilot:
        screen = app.review
        # the first sample shows from my own log; once the team's logs are read, routing moves on:
        # sample 0 is done (alice + bob), sample 1 needs me
        await wait_for(pilot, lambda: screen.ready and screen._team_seen and screen.pos == 1, what="routing")
        await pilot.press("f")
        await pilot.pause()
        for ch in "disagreements":
            await pilot.press(ch)
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.queue.filter.kind == "disagreements" and screen.pos == 0)
        text = str(screen.query_one("#rv-sample").render())
        assert "REVIEWERS" in text and "Bob's better take." in text and "rejected" in text
        # bob accepts sample 2 in his own session: my status line counts it within a tick
        append_decision(folder / "bob.jsonl", recs[2]["id"], "accept", by="bob")
        await wait_for(pilot, lambda: screen.queue.counts()["team"]["bob"] == 3, what="bob's progress")
        assert "bob 3" in str(screen.query_one("#rv-status").render())
        await pilot.press("S")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewStats) and app.screen.report is not None)
        report = app.screen.report
        assert report["pairs"][0]["both_decided"] == 1 and report["disagreements"] == 1
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(stats_renderable(report))
        drawn = console.export_text()
        assert "Cohen's kappa" in drawn and "Krippendorff's alpha" in drawn and "bob" in drawn
        await pilot.press("escape")


def test_build_report_names_rules_and_review_json(tmp_path, monkeypatch):
    """Build with three logs: kept/left out per rule in dataset.json, agreement in reports/review.json."""
    from pipeline.core.params import load_params
    from pipeline.core.records import make_record
    from pipeline.stages import base, build

    monkeypatch.chdir(tmp_path)
    recs = [make_record(text=f"Cynical take number {i} on printers.", meta={"topic": "printers"}) for i in range(12)]
    (tmp_path / "data/deduped").mkdir(parents=True)
    (tmp_path / "data/deduped/samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    folder = tmp_path / "data/reviews"
    for name, accept in (("alice", range(0, 8)), ("bob", range(2, 10))):
        append_decisions(folder / f"{name}.jsonl", [recs[i]["id"] for i in accept], "accept")
    append_decision(folder / "bob.jsonl", recs[0]["id"], "reject")
    append_decision(folder / "lead.jsonl", recs[0]["id"], "accept")
    params = load_params("params.yaml", ["train.base_model=tiny", "build.include=adjudicated", "review.overlap=2",
                                         "review.adjudicators=[lead]"])
    base.run(params)
    build.run(params)
    report = json.loads((tmp_path / "reports/dataset.json").read_text())
    assert report["reviewers"] == ["alice", "bob", "lead"]
    # 2..7 both accepted; 0 settled by the lead; 1, 8, 9 one reviewer each (too few); 10, 11 undecided
    assert report["review_rules"] == {"adjudicated: kept": 1, "too_few_reviewers: left out": 3,
                                      "unanimous: kept": 6, "undecided: left out": 2}
    assert report["train"] + report["val"] == 7
    review = json.loads((tmp_path / "reports/review.json").read_text())
    assert review["disagreements"] == 1 and review["pairs"][0]["both_decided"] == 7
    assert "lead" not in review["reviewers"]  # adjudicators settle, they do not vote
    with pytest.raises(UserError, match="'nobody'"):
        build.run(load_params("params.yaml", ["train.base_model=tiny", "review.adjudicators=[nobody]"]))


def test_diff_shows_decisions_per_reviewer(tmp_path, built_once):
    from test_diff_repo import empty_repo

    from pipeline.commands.diff import DiffResult, SideStats, diff_reviewers, format_summary

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}

    def run(*args):
        subprocess.run(args, cwd=repo, env=env, check=True, capture_output=True)

    repo = built_once(empty_repo, tmp_path / "r")  # git init (branch main) and dvc init, copied
    folder = repo / "data/reviews"
    append_decisions(folder / "alice.jsonl", ["r1", "r2"], "accept")
    (folder / "prescore.jsonl").write_text("{}\n")  # not a reviewer
    run("git", "add", "-A")
    run("git", "commit", "-qm", "v1")
    append_decision(folder / "alice.jsonl", "r2", "reject")
    append_decisions(folder / "bob.jsonl", ["r1", "r3", "r4"], "accept")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "v2")
    by = diff_reviewers(repo, "HEAD~1", "HEAD", "data/reviews", 3)
    assert list(by) == ["alice", "bob"]
    assert (by["alice"].decided_a, by["alice"].decided_b, by["alice"].transitions) == (2, 2, {"accepted → rejected": 1})
    assert (by["bob"].decided_a, by["bob"].decided_b, by["bob"].changed) == (0, 3, 3)
    assert diff_reviewers(repo, "HEAD", "workspace", "data/reviews", 3)["bob"].changed == 0
    result = DiffResult("x", SideStats("HEAD~1", "x"), SideStats("HEAD", "x"), reviewers=by)
    text = format_summary(result)
    assert "decisions per reviewer" in text and "accepted → rejected 1" in text
    assert json.loads(json.dumps(result.to_json(), default=str))["reviewers"]["bob"]["decided_b"] == 3
