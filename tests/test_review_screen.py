"""Pilot tests of the review screen: every binding, filter, search, undo, bulk, bad input."""

from __future__ import annotations

import json

import pytest
from test_review_support import HOSTILE, pair_and_chat, ready, wait_for, write_records

from pipeline.core.decisions import append_decision, load_states, read_decisions
from pipeline.core.records import dumps, make_record
from tui.review_app import ReviewApp
from tui.screens.review import ReviewScreen
from tui.widgets.review_dialogs import ConfirmDialog, EditDialog, FilterDialog, PromptDialog

SIZE = (100, 30)


@pytest.fixture
def files(tmp_path):
    records = tmp_path / "r.jsonl"
    recs = write_records(records, 12, pair_and_chat())
    return records, tmp_path / "reviews" / "d.jsonl", recs


def _app(files, **kw):
    records, log, _ = files
    return ReviewApp(records, log, dropped=records.parent / "dropped.jsonl", base_dir=records.parent / "base", **kw)


def _log(files):
    return [(d["id"], d["action"]) for d in read_decisions(files[1])]


async def _open_dialog(pilot, dialog, *keys) -> None:
    """Press ``keys`` and wait until ``dialog`` is the screen."""
    await pilot.press(*keys)
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, dialog))


def _shown_text(screen: ReviewScreen) -> str:
    return str(screen.query_one("#rv-sample").render())


async def test_accept_reject_skip_and_move(files):
    _, log, recs = files
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        s = app.review
        assert s.pos == 0 and "Sample 0:" in _shown_text(s)
        await pilot.press("a")
        assert s.pos == 1 and _log(files) == [(recs[0]["id"], "accept")]
        await pilot.press("x")
        assert s.pos == 2 and _log(files)[-1] == (recs[1]["id"], "reject")
        await pilot.press("space")
        assert s.pos == 3 and len(_log(files)) == 2
        await pilot.press("j", "down")
        assert s.pos == 5
        await pilot.press("k", "up")
        assert s.pos == 3
        await pilot.press("k", "k", "k", "k")
        assert s.pos == 0 and "start" in s.note
        await pilot.press("pagedown", "pageup")
        status = str(s.query_one("#rv-status").render())
        assert "2/14 reviewed" in status and "50% accepted" in status
    states = load_states(log)
    assert states[recs[0]["id"]].status == "accepted" and states[recs[1]["id"]].status == "rejected"


async def test_reopening_resumes_at_the_first_undecided(files):
    _, log, recs = files
    for r in recs[:4]:
        append_decision(log, r["id"], "accept")
    append_decision(log, recs[6]["id"], "reject")
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.review.pos == 4
        assert "4/14" not in str(app.review.query_one("#rv-status").render())  # 5 reviewed
        assert "5/14 reviewed" in str(app.review.query_one("#rv-status").render())


async def test_edit_saves_with_ctrl_s_and_cancels_with_escape(files):
    _, log, recs = files
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await _open_dialog(pilot, EditDialog, "e")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.review)
        assert _log(files) == [] and app.review.pos == 0
        await _open_dialog(pilot, EditDialog, "e")
        app.screen.query_one("TextArea").text = "A better take."
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.review.pos == 1)
        state = load_states(log)[recs[0]["id"]]
        assert state.text == "A better take." and state.status == "accepted"
        await pilot.press("k")
        assert "EDITED" in _shown_text(app.review) and "A better take." in _shown_text(app.review)
        # a pair edits its completion
        await _open_dialog(pilot, PromptDialog, "g")
        await pilot.press("1", "3", "enter")
        await wait_for(pilot, lambda: app.review.pos == 12)
        await _open_dialog(pilot, EditDialog, "e")
        assert app.screen.query_one("TextArea").text == recs[12]["completion"]
        await pilot.press("ctrl+s")  # unchanged: nothing written
        await wait_for(pilot, lambda: app.screen is app.review)
        assert "no change" in app.review.note and len(_log(files)) == 1


async def test_tag_completes_known_tags_and_does_not_advance(files):
    _, log, recs = files
    append_decision(log, "elsewhere", "tag", tags=["off-persona"])
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await _open_dialog(pilot, PromptDialog, "t")
        await pilot.press("f", "u", "n", "n", "y", ",", " ", "o", "f")
        await wait_for(pilot, lambda: app.screen.query_one("Input")._suggestion == "funny, off-persona")
        await pilot.press("right", "enter")
        await wait_for(pilot, lambda: app.screen is app.review)
        assert app.review.pos == 0
        assert load_states(log)[recs[0]["id"]].tags == ["funny", "off-persona"]
        assert "funny, off-persona" in str(app.review.query_one("#rv-side").render())


async def test_undo_many_levels_goes_back_to_each_sample(files):
    _, log, recs = files
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a", "x", "a")
        assert app.review.pos == 3
        await pilot.press("u")
        assert app.review.pos == 2
        await pilot.press("u")
        assert app.review.pos == 1
        await pilot.press("u")
        assert app.review.pos == 0
        await pilot.press("u")
        assert "nothing to undo" in app.review.note
    assert all(s.status == "pending" for s in load_states(log).values())


async def test_goto_rejects_bad_positions(files):
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        for keys, pos, note in ((["9", "9"], 0, "no sample #99"), (["7"], 6, "")):
            await _open_dialog(pilot, PromptDialog, "g")
            await pilot.press(*keys, "enter")
            await wait_for(pilot, lambda: app.screen is app.review)
            assert app.review.pos == pos and note in app.review.note


async def _search(pilot, app, query):
    await _open_dialog(pilot, PromptDialog, "slash")
    app.screen.query_one("Input").value = query
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.screen is app.review and not app.review.busy)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def test_search_next_and_previous(files):
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await _search(pilot, app, "GYMS")
        assert app.review.pos == 1
        await pilot.press("n")
        await pilot.app.workers.wait_for_complete()
        await wait_for(pilot, lambda: app.review.pos == 4)
        await pilot.press("N")
        await pilot.app.workers.wait_for_complete()
        await wait_for(pilot, lambda: app.review.pos == 1)
        await pilot.press("N")  # wraps to the last match
        await pilot.app.workers.wait_for_complete()
        await wait_for(pilot, lambda: app.review.pos == 10)
        await _search(pilot, app, "/Sample 1[01]:/")
        assert app.review.pos == 11
        await _search(pilot, app, "zzz-nothing")
        assert app.review.pos == 11 and "no match" in app.review.note
        await _search(pilot, app, "/(bad/")
        assert "bad search" in app.review.note


async def _filter(pilot, app, spec=None, arrows=0):
    await _open_dialog(pilot, FilterDialog, "f")
    if spec is not None:
        app.screen.query_one("Input").value = spec
    for _ in range(arrows):
        await pilot.press("down")
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.screen is app.review)
    await pilot.app.workers.wait_for_complete()
    await wait_for(pilot, lambda: not app.review.busy)


async def test_filters_by_status_tag_and_slot(files):
    _, log, recs = files
    append_decision(log, recs[2]["id"], "accept")
    append_decision(log, recs[5]["id"], "reject")
    append_decision(log, recs[7]["id"], "edit", text="edited")
    append_decision(log, recs[9]["id"], "tag", tags=["keeper"])
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        s = app.review
        await _filter(pilot, app, arrows=2)  # all, pending, [accepted]
        assert s.queue.filter.label == "accepted" and s.pos == 2
        await pilot.press("j")
        assert s.pos == 7
        await pilot.press("j")
        assert s.pos == 7 and "end" in s.note
        await _filter(pilot, app, "rejected")
        assert s.pos == 5 and "1/1" in str(s.query_one("#rv-status").render())
        await _filter(pilot, app, "edited")
        assert s.pos == 7
        await _filter(pilot, app, "tag:keeper")
        assert s.pos == 9
        await _filter(pilot, app, "topic=fridges")
        assert s.queue.visible_count() == 4 and s.pos in (2, 5, 8, 11)
        await _filter(pilot, app, "pending")
        first = s.pos
        await pilot.press("a")  # the accepted sample leaves the filter, the next pending shows
        assert not s.queue.visible(first) and s.queue.visible(s.pos)
        await _filter(pilot, app, "nonsense")
        assert "unknown filter" in s.note
        await _filter(pilot, app, "all")
        assert s.queue.visible_count() == 14


async def test_bulk_accept_and_reject_confirm_with_the_count(files):
    _, log, recs = files
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("x")
        await _filter(pilot, app, "pending")
        await _open_dialog(pilot, ConfirmDialog, "A")
        assert "13 samples" in app.screen.question and "pending" in app.screen.question
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is app.review)
        assert len(_log(files)) == 1
        await _open_dialog(pilot, ConfirmDialog, "A")
        await pilot.press("y")
        await pilot.app.workers.wait_for_complete()
        await wait_for(pilot, lambda: not app.review.busy)
        assert app.review.queue.counts()["accepted"] == 13
        await _filter(pilot, app, "accepted")
        await _open_dialog(pilot, ConfirmDialog, "X")
        assert "Reject all 13" in app.screen.question
        await pilot.press("y")
        await pilot.app.workers.wait_for_complete()
        await wait_for(pilot, lambda: not app.review.busy)
    states = load_states(log)
    assert len(states) == 14 and all(st.status == "rejected" for st in states.values())


async def test_help_palette_and_quit(files):
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "ReviewHelp")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is app.review)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "CommandPalette")
        await pilot.press(*"reject")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.review.pos == 1)
        assert _log(files)[0][1] == "reject"
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_shows_pair_chat_provenance_twins_and_tokens(files, tmp_path):
    records, _, recs = files
    (tmp_path / "dropped.jsonl").write_text(dumps({"id": "dup", "matched_id": recs[0]["id"], "score": 96.5,
                                                    "text": "Sample 0: a cynical take on airports!",
                                                    "matched_text": recs[0]["text"]}) + "\n")
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: app.review.dropped is not None and app.review.dropped.done)
        await pilot.pause()
        side = str(app.review.query_one("#rv-side").render())
        assert "96.5" in side and "airports!" in side
        assert "persona.yaml" in side and "topic = airports" in side and "gpt-4o-mini" in side
        assert f"{len(recs[0]['text'])} chars" in side and "≈10 tokens" in side
        app.review._show(12)
        assert "PROMPT" in _shown_text(app.review) and "COMPLETION" in _shown_text(app.review)
        app.review._show(13)
        shown = _shown_text(app.review)
        assert shown.index("SYSTEM") < shown.index("USER") < shown.index("ASSISTANT")


async def test_hostile_text_is_inert(tmp_path):
    records = tmp_path / "r.jsonl"
    # a fixed id keeps the snapshot stable; a lone surrogate is a bad line (records.parse_line), not hostile text
    hostile = {"id": "hostile-1", "text": HOSTILE, "meta": {"model": "\x1b[2Jbad[/]", "slots": {"k[b]": "\u202ev"}}}
    long = make_record(text="y" * 100_000)
    records.write_text(json.dumps(hostile) + "\n" + dumps(long) + "\n", encoding="utf-8")
    (tmp_path / "dropped.jsonl").write_text(dumps({"id": "z", "matched_id": hostile["id"], "score": 91,
                                                    "text": "\x1b]0;title\x07[red]", "matched_text": ""}) + "\n")
    app = ReviewApp(records, tmp_path / "d.jsonl", dropped=tmp_path / "dropped.jsonl")
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: app.review.dropped is not None and app.review.dropped.done)
        app.review._side()
        await pilot.pause()
        for widget_id in ("#rv-sample", "#rv-side"):
            text = app.review.query_one(widget_id).render()
            plain = str(text)
            for bad in ("\x1b", "\x00", "\x07", "\r", "\u202e", "\u200b", "\u200d"):
                assert bad not in plain, (widget_id, repr(bad))
            assert not any(span.style and "link" in str(span.style) for span in text.spans)
        plain = str(app.review.query_one("#rv-sample").render())
        assert "[bold red]styled?[/]" in plain and "[link=http://evil.example]" in plain  # markup shown as text
        assert "\\x1b[31m" in plain and "\\u202e" in plain and "\\u200b" in plain and "\\x00" in plain
        # what reaches the terminal: no control character in the cells, no OSC or clear in the bytes
        compositor = app.screen._compositor
        cells = "".join(seg.text for strip in compositor.render_strips() for seg in strip)
        assert not [c for c in cells if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u202e\u200b\u200d"]
        terminal = compositor.render_full_update().render_segments(app.console)
        assert "\x1b]" not in terminal and "\x1b[2J" not in terminal and "\x07" not in terminal
        await pilot.press("j")
        plain = str(app.review.query_one("#rv-sample").render())
        assert "80,000 more characters not shown" in plain
        await _open_dialog(pilot, EditDialog, "e")  # the editor shows the escapes too
        await pilot.press("escape")
        await _open_dialog(pilot, EditDialog, "k", "e")
        assert "\x1b" not in app.screen.query_one("TextArea").text
        await pilot.press("escape")
        await pilot.press("a")
    assert load_states(tmp_path / "d.jsonl")[hostile["id"]].status == "accepted"


async def test_twins_panel_shows_the_best_scored_first(files, tmp_path):
    _, _, recs = files
    # more twins than the panel reads, written worst first: the best are at the end of the file
    rows = [{"id": f"d{i}", "matched_id": recs[0]["id"], "score": 50 + i / 10, "text": f"twin {i}",
             "matched_text": ""} for i in range(400)]
    (tmp_path / "dropped.jsonl").write_text("".join(dumps(r) + "\n" for r in rows))
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: app.review.dropped is not None)
        side = str(app.review.query_one("#rv-side").render())
        shown = side[side.index("NEAR-TWINS"):].splitlines()[1:9]
        assert [line.split()[0] for line in shown] == ["89.9", "89.8", "89.7", "89.6", "89.5", "89.4", "89.3", "89.2"]
        assert "twin 399" in shown[0] and "… and 392 more" in side


@pytest.mark.parametrize("bad_row, where", [
    ('{"id": "a\\q"}', "status"),  # a bad escape: no matched_id can be read; the scan worker fails
    ('{"id": "a\\q", "matched_id": "MATCHED", "score": 99}', "panel"),  # found when the row is shown
])
async def test_a_bad_dropped_report_row_is_reported_and_the_app_stays_up(files, tmp_path, bad_row, where):
    _, log, recs = files
    good = dumps({"id": "dup", "matched_id": recs[0]["id"], "score": 91.0, "text": "t", "matched_text": ""})
    (tmp_path / "dropped.jsonl").write_text(good + "\n" + bad_row.replace("MATCHED", recs[0]["id"]) + "\n")
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        side = app.review.query_one("#rv-side")
        await wait_for(pilot, lambda: "unavailable" in str(side.render()), what="the near-twins error")
        expected = "dropped.jsonl:2: malformed JSON: Invalid \\escape"
        assert expected in str(side.render())
        if where == "status":
            assert "near-twins failed" in str(app.review.query_one("#rv-status").render())
            assert expected in app.review.note
        await pilot.press("a")  # the review goes on
        assert app.is_running and app.review.pos == 1
    assert _log(files) == [(recs[0]["id"], "accept")]
    assert load_states(log)[recs[0]["id"]].status == "accepted"


@pytest.mark.parametrize("records_text, log_text, expect", [
    ('{"id":"a","text":"ok"}\n{"id":"b","text":\n', "", ":2"),
    ('{"id":"a","text":"ok"}\n', '{"id":"a","action":"accept"}\nnonsense\n{"id":"a","action":"accept"}\n', "d.jsonl:2"),
    ("", "", "no samples"),
])
async def test_bad_input_opens_no_half_working_screen(tmp_path, records_text, log_text, expect):
    records, log = tmp_path / "r.jsonl", tmp_path / "d.jsonl"
    records.write_text(records_text)
    if log_text:
        log.write_text(log_text)
    app = ReviewApp(records, log)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.review.error is not None)
        assert expect in app.review.error and "then run `tenny review` again" in app.review.error or expect == "no samples"
        before = log.read_bytes() if log.exists() else b""
        await pilot.press("a", "x", "j", "e")
        assert app.screen is app.review
        assert (log.read_bytes() if log.exists() else b"") == before
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running)


async def test_cut_log_is_repaired_on_open_and_said(files):
    _, log, recs = files
    append_decision(log, recs[0]["id"], "accept")
    with open(log, "ab") as fh:
        fh.write(b'{"id":"' + recs[1]["id"].encode() + b'","action":"rej')
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.review.pos == 1 and "set aside" in app.review.note
        await pilot.press("x")
    assert [p.name.startswith("d.jsonl.torn-") for p in log.parent.iterdir()].count(True) == 1
    assert _log(files) == [(recs[0]["id"], "accept"), (recs[1]["id"], "reject")]


async def test_two_sessions_on_one_log(files):
    _, log, recs = files
    one, two = _app(files, by="one"), _app(files, by="two")
    async with one.run_test(size=SIZE) as p1, two.run_test(size=SIZE) as p2:
        await ready(p1)
        await ready(p2)
        await p1.press("a")
        await p2.press("x")  # the same sample, decided later: this one wins
        one.review.sync_now()
        assert one.review.queue.state(recs[0]["id"]).status == "rejected"
    assert load_states(log)[recs[0]["id"]].status == "rejected"
    assert [d["by"] for d in read_decisions(log)] == ["one", "two"]


async def test_screen_pushed_from_another_app(files):
    from textual.app import App

    records, log, recs = files

    class Host(App):
        def on_mount(self):
            self.push_screen(ReviewScreen(records, log))

    app = Host()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ReviewScreen) and app.screen.ready)
        await pilot.press("a")
        await pilot.press("q")  # pops back to the host instead of quitting it
        await wait_for(pilot, lambda: not isinstance(app.screen, ReviewScreen))
        assert app.is_running
    assert load_states(log)[recs[0]["id"]].status == "accepted"


def test_command_line_errors_before_the_screen_opens(tmp_path):
    import argparse

    from tui.commands import review as review_command
    from pipeline.core.errors import UserError

    parser = argparse.ArgumentParser()
    review_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "missing.jsonl"), "--decisions", str(tmp_path / "d.jsonl")])
    with pytest.raises(UserError, match="no such records file"):
        review_command.run(None, args)
    args = parser.parse_args([str(tmp_path)])
    with pytest.raises(UserError, match="is a folder"):
        review_command.run(None, args)
    records = tmp_path / "r.jsonl"
    write_records(records, 2)
    with pytest.raises(UserError, match="no such theme"):
        ReviewApp(records, tmp_path / "d.jsonl", theme="no-such-theme")


def test_the_review_command_module_does_not_import_textual():
    import subprocess
    import sys

    code = "import sys, pipeline.commands.review; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_exact_tokens_when_the_base_model_has_a_tokenizer(files, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    base = tmp_path / "base"
    base.mkdir()
    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "Sample": 1, "a": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(base / "tokenizer.json"))
    app = _app(files)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await wait_for(pilot, lambda: app.review.tokenizer is not None)
        await pilot.pause()
        side = str(app.review.query_one("#rv-side").render())
        assert " · 7 tokens" in side and "≈" not in side  # "Sample 0: a cynical take on airports."


async def test_resizes_down_to_80x24_and_below(files):
    app = _app(files)
    async with app.run_test(size=(160, 40)) as pilot:
        await ready(pilot)
        footer = app.review.query_one("#rv-footer")
        assert footer.styles.height.value == 2
        await pilot.resize_terminal(80, 24)
        await pilot.pause()
        assert footer.styles.height.value == 3 and footer.region.bottom == 24
        await pilot.resize_terminal(60, 16)
        await pilot.pause()
        await pilot.press("a")
        assert app.review.pos == 1
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert "Sample 1:" in _shown_text(app.review)
