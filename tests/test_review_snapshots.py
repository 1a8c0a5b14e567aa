"""Snapshots of the review screens (pytest-textual-snapshot; `--snapshot-update` after a deliberate change).

Paths are relative (the test runs in its own folder) so the title bar is the
same on every machine.
"""

from __future__ import annotations

import json

import pytest
from test_review_support import HOSTILE, pair_and_chat, ready, wait_for, write_records

from pipeline.core.decisions import append_decision
from pipeline.core.records import dumps, make_record
from tui.review_app import ReviewApp


@pytest.fixture
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TENNY_REVIEWER", "snap")
    recs = write_records(tmp_path / "samples.jsonl", 12, pair_and_chat())
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "dedupe_dropped.jsonl").write_text(
        dumps({"id": "dup", "matched_id": recs[1]["id"], "score": 95.24,
               "text": "Sample 1: a cynical take on gyms!!", "matched_text": recs[1]["text"]}) + "\n")
    append_decision("decisions.jsonl", recs[0]["id"], "accept", by="snap")
    append_decision("decisions.jsonl", recs[3]["id"], "tag", tags=["keeper"], by="snap")
    return recs


def _app(theme: str | None = None) -> ReviewApp:
    return ReviewApp("samples.jsonl", "decisions.jsonl", theme=theme)


async def _ready(pilot) -> None:
    await ready(pilot)
    screen = pilot.app.review
    await wait_for(pilot, lambda: screen.dropped is not None and screen.dropped.done)
    screen._side()
    await pilot.pause()


def test_main_screen_80x24(here, snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready)


def test_main_screen_light_theme_wide(here, snap_compare):
    assert snap_compare(_app("textual-light"), terminal_size=(120, 30), run_before=_ready)


def test_chat_record(here, snap_compare):
    async def go(pilot):
        await _ready(pilot)
        pilot.app.review._show(13)
        await pilot.pause()

    assert snap_compare(_app(), terminal_size=(100, 30), run_before=go)


def test_hostile_text(tmp_path, monkeypatch, snap_compare):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples.jsonl").write_text(
        json.dumps({"id": "hostile-1", "text": HOSTILE, "meta": {"model": "\x1b[2J[b]x"}}) + "\n"
        + dumps(make_record(text="z" * 100_000)) + "\n")
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=ready)


def test_help_screen(here, snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready, press=["question_mark"])


def test_filter_dialog(here, snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready, press=["f"])


def test_edit_dialog(here, snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready, press=["e"])


def test_bulk_confirmation(here, snap_compare):
    assert snap_compare(_app(), terminal_size=(80, 24), run_before=_ready, press=["A"])


def test_bad_records_file(tmp_path, monkeypatch, snap_compare):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples.jsonl").write_text('{"id":"a","text":"fine"}\n{"id":"b","text":"cut\n')

    async def failed(pilot):
        await wait_for(pilot, lambda: pilot.app.review.error is not None)

    assert snap_compare(_app(), terminal_size=(80, 24), run_before=failed)
