"""Pilot tests of what each app screen tells the user: a training run that left the
workspace, stage states in words, keys that work from every screen."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_app import app_for, on_screen, plain, wait_for  # noqa: E402
from test_diff_repo import dvc, make_two_versions  # noqa: E402
from test_train_watch import write_run  # noqa: E402

from tui.app import TrainWatchApp  # noqa: E402

pytestmark = pytest.mark.timeout(120)


class NoGpu:
    def read(self):
        return [], "no GPU (test)"


async def test_training_screen_says_when_its_run_left_the_workspace(tmp_path):
    d = tmp_path / "dvclive"
    write_run(d, status="running", step=3, total_steps=10, started_at=1_000_000.0, updated_at=9e12)
    app = TrainWatchApp(d, interval=0.05, nvml=NoGpu())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        header = lambda: plain(screen.query_one("#train-header"))  # noqa: E731
        await wait_for(pilot, lambda: "step 3/10" in header(), 10, "the run")
        assert "no longer" not in header()

        shutil.rmtree(d)
        await wait_for(pilot, lambda: "no longer in the workspace" in header(), 10, "the deleted run")
        # the last values stay, named as a run that is gone
        assert "dvclive/ was deleted" in header() and "step 3/10" in header()
        assert "dvclive/ was deleted" in on_screen(app)

        d.mkdir()
        await pilot.pause(0.3)
        assert "dvclive/ was emptied" in header()

        write_run(d, status="running", step=1, total_steps=10, started_at=2_000_000.0, updated_at=9e12)
        await wait_for(pilot, lambda: "step 1/10" in header(), 10, "the new run")
        assert "was emptied" not in header()
        assert "a new run replaced dvclive/" in header()

        # Replaced between two polls, same folder: the start time tells the runs apart.
        app.screen._timer.pause()
        write_run(d, status="running", step=7, total_steps=10, started_at=3_000_000.0, updated_at=9e12)
        before = screen.replaced
        screen.poll()
        await wait_for(pilot, lambda: "step 7/10" in header(), 10, "the replacing run")
        assert screen.replaced != before and "step 1" in screen.replaced


async def test_pipeline_screen_says_each_stage_state_in_words_before_its_metrics(tmp_path, built_once):
    repo = built_once(make_two_versions, tmp_path / "r")
    dvc(repo, "repro", "-q")
    (repo / "count.py").write_text((repo / "count.py").read_text() + "# edited\n")
    (repo / "params.yaml").write_text("train:\n  lr: 0.005\n")
    app = app_for(repo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2, 30, "stage states")
        table = screen.query_one("#stages")
        row = [cell.plain for cell in table.get_row("count")]
        assert row[1].startswith("changed: deps count.py modified")
        assert row[2] == "records=11, lr_seen=0.002"  # the last run's, not the new param
        assert [c.plain for c in table.get_row("report")][1] == "up to date"
        detail = plain(screen.query_one("#stage-detail"))
        assert "changed: deps count.py modified, params.yaml train.lr modified" in detail
        assert "{" not in detail and "metrics records=" in detail
        assert "changed: deps count.py" in on_screen(app)

        await pilot.press("down")
        await wait_for(pilot, lambda: "report  up to date" in plain(screen.query_one("#stage-detail")), 5, "detail")


async def test_pipeline_screen_names_a_stage_never_run(tmp_path, built_once):
    repo = built_once(make_two_versions, tmp_path / "r")
    app = app_for(repo)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.stages) == 2, 30, "stage states")
        cells = [c.plain for c in screen.query_one("#stages").get_row("count")]
        # never run: DVC's "changed deps … (modified)" for a stage with no lock entry would mislead
        assert cells[1] == "never run"


MODES = {"1": "pipeline", "2": "training", "3": "diff", "4": "experiments", "5": "eval", "7": "chat"}


async def test_global_keys_work_from_every_screen(tmp_path, built_once):
    from textual.command import CommandPalette
    from textual.widgets import Input

    from tui.screens.keys_help import KeysHelp
    from tui.screens.review import ReviewScreen

    repo = built_once(make_two_versions, tmp_path / "r")
    app = app_for(repo)
    async with app.run_test(size=(80, 24)) as pilot:
        # each key from the screen before it, then back to the pipeline from the last one
        for key, mode in [*MODES.items(), ("1", "pipeline")]:
            await pilot.press(key)
            await wait_for(pilot, lambda: app.current_mode == mode, 5, f"{key} → {mode}")
            # no screen opens with a text field focused, so its keys act at once
            assert not isinstance(app.focused, Input), mode
            # however many keys a screen has, the two that explain and leave the app are on screen
            await pilot.pause()
            footer = on_screen(app).splitlines()[-1]
            assert "? Help" in footer and "q Quit" in footer, (mode, footer)

            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, KeysHelp), 5, f"{mode}: ? opens the keys")
            shown = on_screen(app)
            assert "q" in shown and "Quit" in shown and "Command palette" in shown
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, KeysHelp), 5, "help closes")

            await pilot.press("ctrl+p")
            await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette), 5, f"{mode}: ctrl+p")
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, CommandPalette), 5, "palette closes")

        await pilot.press("6")
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen), 10, "6 → review")
        await pilot.press("3")
        await wait_for(pilot, lambda: app.current_mode == "diff", 5, "review: 3 → diff")

        await pilot.press("q")
        await wait_for(pilot, lambda: app.return_code is not None, 5, "q quits")


async def test_standalone_review_footer_keeps_quit_and_help_on_screen_at_80x24(tmp_path, monkeypatch):
    from test_review_support import pair_and_chat, ready, write_records

    from tui.review_app import ReviewApp

    monkeypatch.chdir(tmp_path)
    write_records(tmp_path / "samples.jsonl", 12, pair_and_chat())
    app = ReviewApp("samples.jsonl", "decisions.jsonl")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await pilot.pause(0.2)
        shown = on_screen(app)
        assert "q Quit" in shown and "? Help" in shown and "a Accept" in shown
