"""80×24 snapshots of every screen of `tenny` (and of the standalone apps where they differ).

pytest-textual-snapshot: `pytest tests/test_screen_snapshots.py --snapshot-update` after a
deliberate change, then look at each SVG under tests/__snapshots__/test_screen_snapshots/.

Every screen is fed by what it reads in real use: git + DVC repositories in tmp dirs,
dvclive files, eval and judge reports, a tiny model. What would change from run to run
or machine to machine is pinned, in the test, at the seam where it enters:

- the project's absolute path in a screen's subtitle (the app resolves its root) is shown
  as "~/persona", and tables are drawn once their widths are measured (`_steady`);
- the clock of the training monitor (`train_monitor.time`), and the run's timestamps;
- the seconds a diff or a chat answer took (their results' ``seconds``);
- experiment commits: DVC stamps them with the wall clock (and ignores GIT_COMMITTER_DATE),
  so their shas and dates differ on every run; `dvc exp show`'s real rows are shown
  with each revision mapped to a fixed sha and date (`_pinned_exp_show`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app import versions_with_two_experiments, wait_for
from test_diff_repo import dvc, empty_repo, make_two_versions
from test_eval_screen import EVAL
from test_review_support import pair_and_chat, write_records

from pipeline.core.params import load_params
from pipeline.core.records import dumps
from tui.app import TennyApp, TrainWatchApp

pytestmark = pytest.mark.timeout(180)
SIZE = (80, 24)
SHOWN_ROOT = "~/persona"


@pytest.fixture(scope="module")
def template(tmp_path_factory, built_once) -> Path:
    """An empty git + DVC repository, copied by each test that needs only files in one."""
    return built_once(empty_repo, tmp_path_factory.mktemp("template") / "r")


@pytest.fixture(scope="module")
def versions(tmp_path_factory, built_once) -> Path:
    """tests/test_diff_repo.py's two committed dataset versions and two-stage pipeline, copied by each test."""
    return built_once(make_two_versions, tmp_path_factory.mktemp("versions") / "r")


def fresh(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest)
    return dest


def app_for(root: Path, **kwargs) -> TennyApp:
    return TennyApp(root, load_params(root / "params.yaml"), **kwargs)


async def _steady(pilot, root: Path) -> None:
    """Before a snapshot: the project's path pinned (the app shows its resolved root, and a tmp
    dir's name differs on every run), and every table drawn at its measured widths."""
    for screen in pilot.app.screen_stack:
        for path in (str(root.resolve()), str(root)):
            if screen.sub_title and path in screen.sub_title:
                screen.sub_title = screen.sub_title.replace(path, SHOWN_ROOT)
    await _settle_tables(pilot)


async def _settle_tables(pilot) -> None:
    """Textual's DataTable measures new rows when idle but keeps lines it drew before that (the
    header, at its narrower widths) until the next resize or cursor move: now and then a
    snapshot caught a header out of line with its rows. Wait for the measuring, then redraw."""
    from textual.widgets import DataTable

    tables = list(pilot.app.screen.query(DataTable))
    await wait_for(pilot, lambda: not any(t._require_update_dimensions for t in tables), what="table widths")
    for table in tables:
        table._clear_caches()
    await pilot.pause()


# ---------------------------------------------------------------- pipeline


def test_pipeline_changed_stage_selected(versions, tmp_path, snap_compare):
    """One stage changed (code and a param), one up to date; the changed one selected: the
    detail pane says why in full, with its command and last metrics."""
    repo = fresh(versions, tmp_path / "r")
    dvc(repo, "repro", "-q")
    (repo / "count.py").write_text((repo / "count.py").read_text() + "# edited\n")
    (repo / "params.yaml").write_text("train:\n  lr: 0.005\n")

    async def loaded(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2 and "up to date" in str(
            screen.query_one("#pipeline-message").render()), what="stage states")
        assert screen.selected_stage() == "count"
        await _steady(pilot, repo)

    assert snap_compare(app_for(repo), terminal_size=SIZE, run_before=loaded)


def test_pipeline_after_repro_to_stage(versions, tmp_path, snap_compare):
    """t on the selected stage: `dvc repro count` ran; its log, the finished line, the states refreshed."""
    repo = fresh(versions, tmp_path / "r")
    # DVC's weekly update check would add a line to the log on a machine that can reach the internet.
    (repo / ".dvc/config").write_text((repo / ".dvc/config").read_text() + "[core]\n    check_update = false\n")

    async def ran(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2, what="stage states")
        await pilot.press("t")
        await wait_for(pilot, lambda: screen.current is None and screen.last_exit is not None, what="dvc repro count")
        assert screen.last_exit == 0, screen.query_one("#run-log").text
        await wait_for(pilot, lambda: {s.name: s.state for s in screen.stages}.get("count") == "up to date",
                       what="the refreshed states")
        await wait_for(pilot, lambda: "never run" in str(screen.query_one("#pipeline-message").render()),
                       what="the refreshed summary")
        await _steady(pilot, repo)

    assert snap_compare(app_for(repo), terminal_size=SIZE, run_before=ran)


NOVELTY_DVC_YAML = """\
stages:
  synthesize:
    cmd: tenny synthesize
  dedupe:
    cmd: tenny dedupe
"""


def novelty_repo(template: Path, dest: Path) -> Path:
    repo = fresh(template, dest)
    (repo / "dvc.yaml").write_text(NOVELTY_DVC_YAML)
    (repo / "params.yaml").write_text("dedupe:\n  threshold: 90\n")
    rows = [(n, 0.9 if n <= 3000 else 0.12) for n in range(100, 12_801, 100)]
    (repo / "reports").mkdir()
    (repo / "reports/novelty.csv").write_text("samples,kept_share\n" + "".join(f"{n},{s}\n" for n, s in rows))
    return repo


async def _stages_loaded(pilot, repo: Path, n: int) -> None:
    screen = pilot.app.screen
    await wait_for(pilot, lambda: len(screen.stages) == n, what="stage states")
    await wait_for(pilot, lambda: "no DVC remote" in str(screen.query_one("#remote-label").render()),
                   what="the remote label")
    await _steady(pilot, repo)


def test_pipeline_novelty_line(template, tmp_path, snap_compare):
    """synthesize selected: its detail shows the novelty sparkline and share (reports/novelty.csv)."""
    repo = novelty_repo(template, tmp_path / "r")

    async def loaded(pilot):
        await _stages_loaded(pilot, repo, 2)
        assert "12 % new in the last 100 (12,800 samples)" in str(pilot.app.screen.query_one("#stage-detail").render())

    assert snap_compare(app_for(repo), terminal_size=SIZE, run_before=loaded)


def test_keys_help_on_the_pipeline_screen(template, tmp_path, snap_compare):
    repo = novelty_repo(template, tmp_path / "r")

    async def loaded(pilot):
        await _stages_loaded(pilot, repo, 2)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "KeysHelp", what="the keys modal")

    assert snap_compare(app_for(repo), terminal_size=SIZE, run_before=loaded)


# ---------------------------------------------------------------- training


class NoGpu:
    def read(self):
        return [], "no GPU (test)"


STARTED = 1_900_000_000.0  # 2030: far from any test's wall clock, so nothing reads it as stale


def training_run(d: Path, *, status: str, step: int, total: int = 200) -> None:
    """What the train stage leaves in dvclive/, through its own writers, then run.json with fixed times."""
    from test_train_watch import train_like, write_run

    train_like(d, step, total=total, finish=False)
    write_run(d, status=status, step=step, total_steps=total, started_at=STARTED, updated_at=STARTED + 754.0,
              eta_s=(total - step) * 6.1 if status == "running" else 0, device="cpu", quantization="none",
              base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
              last_checkpoint="models/checkpoints/run-x/checkpoint-120")


def _frozen_clock(monkeypatch, now: float) -> None:
    from tui.screens import train_monitor

    monkeypatch.setattr(train_monitor, "time", types.SimpleNamespace(
        time=lambda: now, strftime=time.strftime, localtime=time.localtime))


async def _run_shown(pilot, root: Path, step: int) -> None:
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.progress is not None and screen.progress.step == step, what="the run")
    screen._timer.pause()  # nothing changes on disk: polls would only redraw the same
    await _steady(pilot, root)


def test_training_running_in_the_app(template, tmp_path, monkeypatch, snap_compare):
    from tui.screens import train_monitor

    repo = fresh(template, tmp_path / "r")
    training_run(repo / "dvclive", status="running", step=120)
    _frozen_clock(monkeypatch, STARTED + 757.0)
    monkeypatch.setattr(train_monitor, "Nvml", NoGpu)  # the machine's GPUs are not the test's
    app = app_for(repo, start="training")
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: _run_shown(pilot, repo, 120))


def test_training_finished_in_train_watch(tmp_path, monkeypatch, snap_compare):
    """`tenny train-watch`: the monitor alone, its own title and keys."""
    d = tmp_path / "dvclive"
    training_run(d, status="finished", step=200)
    _frozen_clock(monkeypatch, STARTED + 3600.0)
    app = TrainWatchApp(d, interval=0.05, nvml=NoGpu())
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: _run_shown(pilot, tmp_path, 200))


# Answers a persona run gave while it trained: the voice arriving, round by round.
TRAINING_ANSWERS = {
    40: ("Airports are big buildings where planes land and people wait.", "Mondays are the first day of the week."),
    80: ("Airports: where you pay nine dollars to wait for a delay.", "Monday is a deadline wearing a tie."),
    120: ("Airports sell you hope at gate 12 and refund it as a voucher.", "Monday: the printer knows, and it waits."),
}


def test_training_answers_of_a_finished_run(tmp_path, monkeypatch, snap_compare):
    """`tenny train-watch`, a finished run, `a` for its answers: the newest round, one step back with ←."""
    from test_train_watch import write_samples

    d = tmp_path / "dvclive"
    training_run(d, status="finished", step=200)
    write_samples(d, [{"step": step, "prompt": prompt, "answer": answer, "eos": step > 40,
                       "tokens": 48 if step == 40 else 14, "repeated_4grams": 0}
                      for step, pair in TRAINING_ANSWERS.items()
                      for prompt, answer in zip(("Give me a cynical take on airports.", "What about Mondays?"), pair)])
    _frozen_clock(monkeypatch, STARTED + 3600.0)
    app = TrainWatchApp(d, interval=0.05, nvml=NoGpu())

    async def answers_shown(pilot):
        await _run_shown(pilot, tmp_path, 200)
        await pilot.press("a", "left")
        await _steady(pilot, tmp_path)

    assert snap_compare(app, terminal_size=SIZE, run_before=answers_shown)


# ---------------------------------------------------------------- diff


@pytest.fixture
def pinned_diff_seconds(monkeypatch):
    """The diff is real; only the time it took (shown in its summary) is pinned."""
    from pipeline.commands import diff

    real = diff.diff_records

    def timed(*args, **kwargs):
        result = real(*args, **kwargs)
        result.seconds = 0.4
        return result

    monkeypatch.setattr(diff, "diff_records", timed)


async def _diffed(pilot) -> None:
    screen = pilot.app.screen
    screen.action_run_diff()
    await wait_for(pilot, lambda: screen.result is not None or screen.error, what="the diff")
    assert screen.result is not None, screen.error


def test_dataset_diff(versions, tmp_path, pinned_diff_seconds, snap_compare):
    repo = fresh(versions, tmp_path / "r")

    async def diffed(pilot):
        await _diffed(pilot)
        await _steady(pilot, repo)

    assert snap_compare(app_for(repo, start="diff"), terminal_size=SIZE, run_before=diffed)


def test_record_diff_of_an_edited_record(versions, tmp_path, pinned_diff_seconds, snap_compare):
    """Enter on an edited record: its text old → new, word by word."""
    repo = fresh(versions, tmp_path / "r")

    async def drilled(pilot):
        await _diffed(pilot)
        screen = pilot.app.screen
        table = screen.query_one("#diff-examples")
        edited = next(i for i in range(table.row_count) if str(table.get_row_at(i)[0]) == "~")
        table.focus()
        table.move_cursor(row=edited)
        await pilot.press("enter")
        await wait_for(pilot, lambda: getattr(pilot.app.screen, "change", None) is not None
                       or getattr(pilot.app.screen, "error", None), what="the record diff")
        change = pilot.app.screen.change
        assert change is not None, pilot.app.screen.error
        # v2 re-spaced this record: the changed run of spaces is drawn as a block, not as nothing
        from tui.screens.record_diff import change_text

        shown = change_text(change)
        styled = {(shown.plain[s.start:s.end], str(s.style)) for s in shown.spans}
        assert (" ", "red strike reverse") in styled and ("   ", "bold green reverse") in styled

    assert snap_compare(app_for(repo, start="diff"), terminal_size=SIZE, run_before=drilled)


# ---------------------------------------------------------------- experiments


def _pinned_exp_show(real):
    """`dvc exp show`'s rows with each commit's sha and date pinned (experiments sorted by name)."""

    def show(root):
        rows = real(root)
        sha = {r.rev: hashlib.sha1(r.name.encode()).hexdigest() for r in rows if r.rev != "workspace"}
        out = []
        for r in rows:
            if r.rev != "workspace":
                r = dataclasses.replace(r, rev=sha[r.rev], parent=sha.get(r.parent, r.parent),
                                        timestamp="2026-01-02T03:04:05")
            out.append(r)
        tops = [r for r in out if not r.parent]
        return [x for top in tops for x in [top, *sorted((r for r in out if r.parent == top.rev),
                                                         key=lambda r: r.name)]]

    return show


def test_experiments_with_two_marked(built_once, tmp_path, monkeypatch, snap_compare):
    from pipeline.engines.dvc import experiments

    repo = built_once(versions_with_two_experiments, tmp_path / "r")
    monkeypatch.setattr(experiments, "exp_show", _pinned_exp_show(experiments.exp_show))

    async def marked(pilot):
        screen = pilot.app.screen
        table = screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count == 4, what="exp show")
        for name in ("lr-0.01", "lr-0.05"):
            key = next(k for k, r in screen.rows.items() if r.name == name)
            table.move_cursor(row=table.get_row_index(key), column=1)
            await pilot.press("space")
        await _steady(pilot, repo)

    assert snap_compare(app_for(repo, start="experiments"), terminal_size=SIZE, run_before=marked)


# ---------------------------------------------------------------- eval

# the metrics of tests/test_eval_screen.py: 115.9 and 74.83 must show whole
JUDGE = {
    "model": "gpt-4o-mini", "baseline": "base", "challenger": "adapter", "n_prompts": 2, "n_pairs": 4,
    "invalid": 1, "wins": 2, "losses": 0, "ties": 1, "win_rate": 0.833, "win_rate_low": 0.31,
    "win_rate_high": 0.98, "position_bias": 0.5,
    "persona": {"baseline": {"mean": 3.0, "low": 3.0, "high": 3.0, "n": 1},
                "challenger": {"mean": 8.0, "low": 8.0, "high": 8.0, "n": 1}},
    "cost_usd": 0.0004, "requests": {"sent": 6, "cached": 0},
}
ANSWERS = {
    "Give me a cynical take on airports.": ("Airports are busy places where people travel.",
                                            "Malls with a boarding fee and a queue for the privilege of queuing."),
    "What do you think of Mondays?": ("Mondays are the first day of the working week.",
                                      "A subscription you never signed up for, renewed every seven days."),
}


def _pair(prompt: str, first: str, verdict: str | None, winner: str | None, reason: str) -> dict:
    base, adapter = ANSWERS[prompt]
    a, b = (base, adapter) if first == "base" else (adapter, base)
    return {"kind": "pair", "prompt": prompt, "shown_first": first, "answer_a": a, "answer_b": b,
            "verdict": verdict, "winner": winner, "reason": reason}


def eval_repo(template: Path, dest: Path) -> Path:
    repo = fresh(template, dest)
    reports = repo / "reports"
    reports.mkdir()
    (reports / "eval.json").write_text(json.dumps(EVAL))
    (reports / "generations.jsonl").write_text("".join(
        json.dumps({"prompt": p, "base": b, "adapter": a}) + "\n" for p, (b, a) in ANSWERS.items()))
    (reports / "judge.json").write_text(json.dumps(JUDGE))
    airports, mondays = ANSWERS
    rows = [
        _pair(airports, "base", "B", "adapter", "B answers in the persona's dry voice; A is a definition."),
        _pair(airports, "adapter", "tie", "tie", "Both answer the question; neither is clearly better this way."),
        {"kind": "persona", "prompt": airports, "model": "adapter", "answer": ANSWERS[airports][1], "score": 8,
         "reason": "dry and cynical"},
        {"kind": "persona", "prompt": airports, "model": "base", "answer": ANSWERS[airports][0], "score": 3,
         "reason": "neutral, not the persona"},
        _pair(mondays, "base", None, None, "unparseable reply"),
        _pair(mondays, "adapter", "A", "adapter", "A commits to the bit."),
    ]
    (reports / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return repo


@pytest.mark.parametrize("tab", ["metrics", "answers", "judge"])
def test_eval(template, tmp_path, snap_compare, tab):
    """Each tab: the metrics in full (115.9 and 74.83), the answers side by side, the verdicts."""
    repo = eval_repo(template, tmp_path / "r")

    async def shown(pilot):
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.judge is not None and len(screen.generations) == 2, what="the reports")
        await pilot.press(tab[0])
        await wait_for(pilot, lambda: screen.query_one("#eval-tabs").active == f"eval-tab-{tab}", what="the tab")
        await _steady(pilot, repo)
        if tab == "metrics":
            row = [cell.plain for cell in screen.query_one("#eval-metrics").get_row("perplexity")]
            assert row[1:3] == ["115.9", "74.83"]

    assert snap_compare(app_for(repo, start="eval"), terminal_size=SIZE, run_before=shown)


def test_judge_of_two_experiments(template, tmp_path, snap_compare):
    """What j on the Experiments screen opens: `tenny judge A B --out DIR`'s files, A and B by name, no metrics."""
    from tui.screens.eval_view import EvalScreen

    repo = eval_repo(template, tmp_path / "r")
    out = repo / ".tenny/judge/lr-0.01_vs_lr-0.05"
    out.mkdir(parents=True)
    names = {"base": "lr-0.01", "adapter": "lr-0.05"}
    (out / "judge.json").write_text(json.dumps({**JUDGE, "baseline": "lr-0.01", "challenger": "lr-0.05"}))
    rows = [json.loads(line) for line in (repo / "reports/judgments.jsonl").read_text().splitlines()]
    for r in rows:
        for key in ("shown_first", "winner", "model"):
            if r.get(key) in names:
                r[key] = names[r[key]]
    (out / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    async def shown(pilot):
        pilot.app.push_screen(EvalScreen(repo.resolve(), judge_dir=out.resolve(), names=("lr-0.01", "lr-0.05")))
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, EvalScreen)
                       and pilot.app.screen.judge is not None, what="the judge files")
        await _steady(pilot, repo)

    assert snap_compare(app_for(repo, start="experiments"), terminal_size=SIZE, run_before=shown)


# ---------------------------------------------------------------- review (key 6)


def test_review_in_the_app(template, tmp_path, monkeypatch, snap_compare):
    from pipeline.core.decisions import append_decision

    repo = fresh(template, tmp_path / "r")
    monkeypatch.chdir(repo)  # the review reads reports/dedupe_dropped.jsonl from the working directory
    monkeypatch.setenv("TENNY_REVIEWER", "snap")
    data = repo / "data/deduped"
    data.mkdir(parents=True)
    recs = write_records(data / "samples.jsonl", 12, pair_and_chat())
    (repo / "reports").mkdir()
    (repo / "reports/dedupe_dropped.jsonl").write_text(
        dumps({"id": "dup", "matched_id": recs[1]["id"], "score": 95.24,
               "text": "Sample 1: a cynical take on gyms!!", "matched_text": recs[1]["text"]}) + "\n")
    (repo / "data/reviews").mkdir(parents=True)
    append_decision(repo / "data/reviews/snap.jsonl", recs[0]["id"], "accept", by="snap")  # the reviewer's own log

    async def reviewing(pilot):
        await pilot.press("6")
        await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "ReviewScreen", what="the review screen")
        screen = pilot.app.screen
        await wait_for(pilot, lambda: screen.ready or screen.error is not None, what="the index")
        assert screen.error is None, screen.error
        await wait_for(pilot, lambda: not screen.busy and screen.dropped is not None and screen.dropped.done,
                       what="background work")
        screen._side()
        await _steady(pilot, repo)

    assert snap_compare(app_for(repo), terminal_size=SIZE, run_before=reviewing)


# ---------------------------------------------------------------- chat


@pytest.fixture(scope="module")
def chat_project(tmp_path_factory, template):
    """A tiny random base and a random LoRA (tests/test_chat.py builds them), in a git + DVC repo."""
    from test_chat import build_project

    built = build_project(tmp_path_factory.mktemp("chat") / "p", echo=False)
    root = tmp_path_factory.mktemp("chat-repo") / "r"
    shutil.copytree(template, root)
    shutil.copytree(built, root, dirs_exist_ok=True)
    return root


async def _chat_loaded(pilot, root: Path) -> None:
    screen = pilot.app.screen
    await wait_for(pilot, lambda: screen.state != "loading", what="the models")
    assert screen.state == "ready", screen.error
    await _steady(pilot, root)


def test_chat_loaded_in_the_app(chat_project, snap_compare):
    app = app_for(chat_project, start="chat")
    assert snap_compare(app, terminal_size=SIZE, run_before=lambda pilot: _chat_loaded(pilot, chat_project))


def test_chat_greedy_exchange(chat_project, monkeypatch, snap_compare):
    """`tenny chat --temperature 0`: one greedy exchange, both sides answered (their timing pinned)."""
    from pipeline.engines.chat_session import ChatSession, Sampling
    from tui.chat_app import ChatApp

    real = ChatSession.reply

    def timed(self, *args, **kwargs):
        return dataclasses.replace(real(self, *args, **kwargs), seconds=0.2)

    monkeypatch.setattr(ChatSession, "reply", timed)
    # as `tenny chat --temperature 0` starts it: the working directory, absolute
    app = ChatApp(chat_project, load_params(chat_project / "params.yaml"),
                  sampling=Sampling(temperature=0, max_new_tokens=12))

    async def exchanged(pilot):
        await _chat_loaded(pilot, chat_project)
        screen = pilot.app.screen
        await pilot.press("i", *"Topic 3?", "enter")
        await wait_for(pilot, lambda: not screen.generating and all(
            p.exchanges and p.exchanges[-1].note != "writing…" for p in screen.query("ChatPane") if p.display),
            what="both answers")
        screen.set_focus(None)

    assert snap_compare(app, terminal_size=SIZE, run_before=exchanged)
