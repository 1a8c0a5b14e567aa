"""Pilot tests of every screen of the app, on real git + DVC repositories."""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_diff_repo import (  # noqa: E402
    EXPECTED, HOSTILE_TEXT, empty_repo, git, make_hostile_versions, make_two_versions,
)

from pipeline.core.errors import UserError  # noqa: E402
from pipeline.core.params import load_params  # noqa: E402
from tui.app import TennyApp, run_app  # noqa: E402

pytestmark = pytest.mark.timeout(180)
SIZE = (140, 45)


async def wait_for(pilot, condition, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.1)
        if condition():
            return
    raise AssertionError(f"timed out waiting for {what}")


def plain(widget) -> str:
    return str(widget.render())


def raw_controls(text: str) -> list[str]:
    """Characters a terminal would act on or hide: C0 (but newline), C1, bidi, zero-width."""
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F
            or c in "\u061c\u200b\u200c\u200d\u200e\u200f\u2060\ufeff"
            or 0x202A <= ord(c) <= 0x202E or 0x2066 <= ord(c) <= 0x2069]


def on_screen(app) -> str:
    """Every character the compositor would draw, row after row."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


# HOSTILE_ID and HOSTILE_TEXT (test_diff_repo) as the one-line views must show them.
SHOWN_ID = "\\x1b[31m[bold red]x[/]\\u202e\\x9b\\u200b"


def versions_with_two_experiments(repo: Path) -> Path:
    """test_diff_repo's two versions, and two `dvc exp run`s of them (train.lr 0.01 and 0.05)."""
    from pipeline.engines.dvc import runs

    make_two_versions(repo)
    for lr in ("0.01", "0.05"):
        lines: list[str] = []
        assert runs.stream(runs.exp_run_args([f"train.lr={lr}"], name=f"lr-{lr}"), repo, lines.append) == 0, lines
    return repo


@pytest.fixture
def repo(tmp_path, built_once) -> Path:
    return built_once(make_two_versions, tmp_path / "r")


def app_for(repo: Path, **kwargs) -> TennyApp:
    return TennyApp(repo, load_params(repo / "params.yaml"), **kwargs)


async def test_pipeline_screen_runs_repro_and_exp_run(repo):
    app = app_for(repo)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2, what="stage states")
        assert {s.name: s.state for s in screen.stages} == {"count": "never run", "report": "never run"}
        # Select "count" (first row) and run up to it: `dvc repro count`.
        await pilot.press("t")
        await wait_for(pilot, lambda: screen.current is None and screen.last_exit is not None, what="repro count")
        log = screen.query_one("#run-log")
        assert screen.last_exit == 0, log.text
        assert "$ dvc repro count" in log.text and "counted 11" in log.text
        await wait_for(pilot, lambda: {s.name: s.state for s in screen.stages}.get("count") == "up to date",
                       what="refreshed states")
        assert {s.name: s.state for s in screen.stages}["report"] == "never run"
        assert "records=11" in str(screen.query_one("#stages").get_row("count")[2])
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "ran count")
        # dvc exp run with -S overrides typed in, submitted with Enter.
        screen.last_exit = None
        await pilot.click("#overrides")
        await pilot.press(*"train.lr=0.01", "enter")
        await wait_for(pilot, lambda: screen.current is None and screen.last_exit is not None, what="exp run")
        assert screen.last_exit == 0, log.text
        assert "$ dvc exp run --temp -S train.lr=0.01" in log.text
        from pipeline.engines.dvc import experiments

        assert any(r.params.get("train.lr") == 0.01 and r.parent for r in experiments.exp_show(repo))


async def test_pipeline_run_can_be_cancelled_and_ui_stays_live(tmp_path, built_once):
    repo = built_once(empty_repo, tmp_path / "slow")
    (repo / "slow.py").write_text("import time\nfor i in range(100000):\n    print('tick', i, flush=True)\n"
                                  "    time.sleep(0.05)\n")
    (repo / "dvc.yaml").write_text("stages:\n  slow:\n    cmd: python slow.py\n    outs: [never.txt]\n")
    app = TennyApp(repo, load_params(repo / "none.yaml"))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 1, what="stage states")
        await pilot.press("r")
        log = screen.query_one("#run-log")
        await wait_for(pilot, lambda: "tick 5" in log.text, what="streamed output")
        # The UI answers while the run streams: switch screens and back.
        await pilot.press("3")
        assert app.current_mode == "diff"
        await pilot.press("escape", "1")
        assert app.current_mode == "pipeline"
        await pilot.press("r")  # a second run is refused, not queued
        await pilot.press("q")  # quitting during a run asks first
        assert app.is_running
        await pilot.press("x")
        await wait_for(pilot, lambda: screen.current is None, what="cancel")
        assert "cancelled" in plain(screen.query_one("#run-status"))
        assert screen.query_one("#btn-cancel").disabled


async def test_notification_shows_typed_text_literally(tmp_path):
    (tmp_path / ".dvc").mkdir()
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"))
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        screen = app.screen
        # one override with no "=" (overrides split at spaces): the error quotes what was typed
        screen.query_one("#overrides").value = "\x1b[31m\x9b\u202e\u200b[red]x[/]"
        screen.action_exp_run()
        await wait_for(pilot, lambda: len(app.screen.query("Toast")) > 0, what="notification")
        shown = str(app.screen.query("Toast").first().render())
        assert "override '\\x1b[31m\\x9b\\u202e\\u200b[red]x[/]': expected dotted.key=value" in shown
        assert raw_controls(shown) == []


async def test_run_log_shows_stage_output_escaped(tmp_path, built_once):
    repo = built_once(empty_repo, tmp_path / "loud")
    (repo / "loud.py").write_text(f"print({HOSTILE_TEXT!r}, flush=True)\n")
    (repo / "dvc.yaml").write_text("stages:\n  loud:\n    cmd: python loud.py\n")
    app = TennyApp(repo, load_params(repo / "none.yaml"))
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 1, what="stage states")
        await pilot.press("r")
        await wait_for(pilot, lambda: screen.current is None and screen.last_exit is not None, what="repro")
        log = screen.query_one("#run-log")
        assert screen.last_exit == 0, log.text
        assert "evil \\x1b[2J\\x9b31m \\u202eright-to-left\\u202c zero\\u200bwidth [bold red]x[/]" in log.text
        assert raw_controls(log.text) == []


async def test_push_pull_and_cloud_status_from_the_pipeline_screen(repo, tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    (repo / "params.yaml").write_text(f"train:\n  lr: 0.002\nremote:\n  name: box\n  url: {storage}\n")
    app = app_for(repo)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        log = screen.query_one("#run-log")
        await wait_for(pilot, lambda: "box" in plain(screen.query_one("#remote-label")), what="remote label")
        await pilot.press("p")
        await wait_for(pilot, lambda: screen.current is None and screen.last_exit is not None, what="push")
        assert screen.last_exit == 0, log.text
        assert "dvc push -r box" in log.text
        assert any(storage.rglob("*"))
        screen.last_exit = None
        await pilot.press("c")
        await wait_for(pilot, lambda: screen.current is None and screen.last_exit is not None, what="status -c")
        assert "dvc status -c -r box" in log.text and screen.last_exit == 0


async def test_diff_screen_counts_and_bad_revision(repo):
    app = app_for(repo, start="diff")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert app.current_mode == "diff"
        await pilot.click("#btn-diff")
        await wait_for(pilot, lambda: screen.result is not None or screen.error, what="diff")
        r = screen.result
        assert r is not None, screen.error
        assert {k: getattr(r, k) for k in EXPECTED} == EXPECTED
        counts = screen.query_one("#diff-counts")
        assert counts.row_count >= 7
        assert screen.query_one("#diff-params").row_count >= 2  # train.lr and the count metric
        msg = plain(screen.query_one("#diff-message"))
        assert "+3 added" in msg and "~2 edited" in msg
        screen.query_one("#rev-a").value = "no-such-rev"
        await pilot.click("#btn-diff")
        await wait_for(pilot, lambda: screen.error is not None, what="error")
        assert "revision 'no-such-rev' not found" in plain(screen.query_one("#diff-message"))


async def test_diff_screen_shows_hostile_ids_and_text_as_text(tmp_path, built_once):
    repo = built_once(make_hostile_versions, tmp_path / "h")
    app = app_for(repo, start="diff")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.click("#btn-diff")
        await wait_for(pilot, lambda: screen.result is not None or screen.error, what="diff")
        assert screen.result is not None, screen.error
        table = screen.query_one("#diff-examples")
        sign, rid, text = table.get_row_at(0)
        assert (str(sign), str(rid)) == ("+", SHOWN_ID)  # markup in an id is shown, not applied
        assert str(text).startswith("evil \\x1b[2J\\x9b31m \\u202eright-to-left")
        await pilot.pause()
        drawn = on_screen(app)
        assert SHOWN_ID[:40] in drawn and raw_controls(drawn) == []


async def test_experiments_screen_sorts_marks_and_diffs(tmp_path, built_once):
    repo = built_once(versions_with_two_experiments, tmp_path / "r")
    app = app_for(repo, start="experiments")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        table = screen.query_one("#experiments")
        await wait_for(pilot, lambda: table.row_count >= 4, what="exp show")
        names = {r.name for r in screen.rows.values()}
        assert {"workspace", "lr-0.01", "lr-0.05"} <= names
        assert "p:train.lr" in [c.value for c in table.columns]
        screen.sort_by("p:train.lr", reverse=True)
        top = screen.rows[table.coordinate_to_cell_key((0, 0))[0].value]
        assert top.params["train.lr"] == 0.05
        await pilot.press("s")  # sorts by the cursor's column without error
        # Mark the two experiments, then diff them.
        keys = [k for k, r in screen.rows.items() if r.name in ("lr-0.01", "lr-0.05")]
        for k in keys:
            table.move_cursor(row=table.get_row_index(k), column=1)
            await pilot.press("space")
        assert screen.marked_refs() is not None and set(screen.marked_refs()) == {"lr-0.01", "lr-0.05"}
        await pilot.press("d")
        await wait_for(pilot, lambda: getattr(app.screen, "result", None) is not None
                       or getattr(app.screen, "error", None), what="diff of experiments")
        r = app.screen.result
        assert r is not None, app.screen.error
        assert r.unchanged == 11 and r.added == r.removed == 0
        assert r.params["params.yaml"]["train.lr"]["old"] in (0.01, 0.05)


async def test_eval_view_shows_generations_as_text(repo):
    reports = repo / "reports"
    (reports / "eval.json").write_text(json.dumps({"base": {"perplexity": 30.5}, "adapter": {"perplexity": 12.25}}))
    rows = [{"prompt": "Give me a cynical take on airports.", "base": "Airports are nice.",
             "adapter": "[bold]Airports[/bold] \x1b[31mare\x1b[0m malls with a boarding fee."},
            {"prompt": "Second", "base": "b2", "adapter": "a2"}]
    (reports / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    app = app_for(repo, start="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.generations) == 2, what="generations")
        adapter = plain(screen.query_one("#eval-adapter"))
        # markup shown literally, escapes shown as escapes
        assert "[bold]Airports[/bold] \\x1b[31mare\\x1b[0m malls" in adapter
        assert raw_controls(adapter) == []
        assert screen.metrics == {"base.perplexity": 30.5, "adapter.perplexity": 12.25}
        screen.query_one("#eval-prompts").move_cursor(row=1)
        await pilot.pause(0.1)
        assert "a2" in plain(screen.query_one("#eval-adapter"))


async def test_eval_view_without_reports_says_what_to_run(tmp_path):
    (tmp_path / ".dvc").mkdir()
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "dvc repro eval" in plain(app.screen.query_one("#eval-message")), what="message")


async def test_not_a_dvc_repo_is_a_message_not_a_crash(tmp_path, monkeypatch):
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: "not a DVC repository" in plain(app.screen.query_one("#pipeline-message")),
                       what="message")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="not a DVC repository"):
        run_app(load_params(tmp_path / "none.yaml"), None)


async def test_review_binding_pushes_the_review_screen_lazily(tmp_path, monkeypatch):
    from textual.screen import Screen

    (tmp_path / ".dvc").mkdir()
    monkeypatch.setenv("TENNY_REVIEWER", "Ann Lee")  # the person at the keyboard gets a log of their own
    pushed = {}

    class FakeReview(Screen):
        def __init__(self, records_path, decisions_path, **kwargs):
            super().__init__()
            pushed["args"] = (records_path, decisions_path)
            pushed["kwargs"] = kwargs

    fake = types.ModuleType("tui.screens.review")
    fake.ReviewScreen = FakeReview
    monkeypatch.setitem(sys.modules, "tui.screens.review", fake)
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("v")
        await pilot.pause(0.1)
        assert isinstance(app.screen, FakeReview)
        assert pushed["args"] == (tmp_path.resolve() / "data/deduped/samples.jsonl",
                                  tmp_path.resolve() / "data/reviews/Ann_Lee.jsonl")
        # the twins dedupe dropped and the tokenizer come from the app's project, not the shell's folder
        assert pushed["kwargs"] == {"dropped": tmp_path.resolve() / "reports/dedupe_dropped.jsonl",
                                    "base_dir": tmp_path.resolve() / "models/base", "by": "Ann Lee"}
    monkeypatch.setitem(sys.modules, "tui.screens.review", None)  # as if the module did not exist
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("v")
        await pilot.pause(0.1)
        assert app.current_mode == "eval" and not isinstance(app.screen, FakeReview)


async def test_command_palette_lists_the_screens(tmp_path):
    (tmp_path / ".dvc").mkdir()
    app = TennyApp(tmp_path, load_params(tmp_path / "none.yaml"), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        from tui.app import TennyCommands

        names = [c[0] for c in TennyCommands(app.screen)._commands()]
        assert "Open training" in names and "Run dvc repro (all stages)" in names
        app.pipeline_action("refresh")
        await wait_for(pilot, lambda: app.current_mode == "pipeline", what="palette action")
