"""The review log: fold semantics, repair of a cut last line, two writers, bulk lines."""

from __future__ import annotations

import json
import multiprocessing as mp
import os

import pytest

from pipeline.decisions import (
    DecisionLog,
    append_decision,
    append_decisions,
    fold,
    load_states,
    read_decisions,
    repair,
)
from pipeline.records import RecordError


def _d(rid, action, **kw):
    return {"id": rid, "action": action, **kw}


def test_fold_latest_wins_and_undo_cancels_the_latest():
    states = fold([_d("a", "accept"), _d("a", "reject"), _d("b", "accept"), _d("a", "undo")])
    assert states["a"].status == "accepted"
    assert states["b"].status == "accepted"
    states = fold([_d("a", "accept"), _d("a", "undo"), _d("a", "undo")])
    assert states["a"].status == "pending"


def test_fold_edit_accepts_and_keeps_text_tags_replace():
    states = fold([_d("a", "edit", text="new"), _d("a", "tag", tags=["x", "y", "x"]), _d("a", "tag", tags=["z"])])
    assert states["a"].status == "accepted" and states["a"].text == "new" and states["a"].tags == ["z"]
    states = fold([_d("a", "edit", text="new"), _d("a", "reject"), _d("a", "undo")])
    assert states["a"].status == "accepted" and states["a"].text == "new"


def test_append_is_durable_and_load_states_reads_it(tmp_path):
    log = tmp_path / "reviews" / "decisions.jsonl"
    append_decision(log, "a", "accept", by="me")
    append_decision(log, "b", "edit", text="hi\nthere", by="me")
    rows = list(read_decisions(log))
    assert [r["action"] for r in rows] == ["accept", "edit"] and rows[0]["by"] == "me"
    states = load_states(log)
    assert states["a"].status == "accepted" and states["b"].text == "hi\nthere"


def test_repair_sets_a_cut_last_line_aside(tmp_path):
    log = tmp_path / "decisions.jsonl"
    append_decision(log, "a", "accept")
    whole = log.read_bytes()
    with open(log, "ab") as fh:
        fh.write(b'{"id":"b","action":"rej')  # a crash inside the write
    aside = repair(log)
    assert aside is not None and aside.exists()
    assert aside.read_bytes() == b'{"id":"b","action":"rej'
    assert aside.name.startswith("decisions.jsonl.torn-")
    assert log.read_bytes() == whole
    append_decision(log, "c", "reject")
    assert [r["id"] for r in read_decisions(log)] == ["a", "c"]


def test_repair_adds_a_missing_newline_to_a_whole_last_line(tmp_path):
    log = tmp_path / "decisions.jsonl"
    log.write_text('{"id":"a","action":"accept"}')
    assert repair(log) is None
    append_decision(log, "b", "accept")
    assert [r["id"] for r in read_decisions(log)] == ["a", "b"]


def test_repair_of_a_single_cut_line(tmp_path):
    log = tmp_path / "decisions.jsonl"
    log.write_bytes(b'{"id":"a","act')
    aside = repair(log)
    assert aside is not None and log.read_bytes() == b""


def test_malformed_middle_line_names_file_and_line(tmp_path):
    log = tmp_path / "decisions.jsonl"
    log.write_text('{"id":"a","action":"accept"}\nnot json\n{"id":"b","action":"accept"}\n')
    with pytest.raises(RecordError) as err:
        DecisionLog(log).open()
    assert f"{log}:2" in str(err.value)
    log.write_text('{"id":"a","action":"maybe"}\n')
    with pytest.raises(RecordError, match="action"):
        DecisionLog(log).open()


def test_decision_log_follows_other_writers_and_undoes_across_restarts(tmp_path):
    log = tmp_path / "decisions.jsonl"
    one, two = DecisionLog(log, by="one"), DecisionLog(log, by="two")
    one.open()
    two.open()
    one.append("a", "accept")
    two.append("a", "reject")  # the later decision wins, in both sessions
    assert two.states["a"].status == "rejected"
    assert one.poll() == ["a"] and one.states["a"].status == "rejected"
    one.append("b", "accept")
    again = DecisionLog(log)
    again.open()
    assert again.stack == ["a", "a", "b"]
    assert again.undo_last() == "b" and again.states["b"].status == "pending"
    assert again.undo_last() == "a" and again.states["a"].status == "accepted"
    assert load_states(log)["a"].status == "accepted"


def test_poll_waits_for_a_line_still_being_written(tmp_path):
    log = tmp_path / "decisions.jsonl"
    d = DecisionLog(log)
    d.open()
    with open(log, "ab") as fh:
        fh.write(b'{"id":"a","action":"accept"}\n{"id":"b",')
    assert d.poll() == ["a"]
    with open(log, "ab") as fh:
        fh.write(b'"action":"reject"}\n')
    assert d.poll() == ["b"] and d.states["b"].status == "rejected"


def test_append_decisions_bulk_writes_whole_lines(tmp_path):
    log = tmp_path / "decisions.jsonl"
    n = append_decisions(log, (f"id{i}" for i in range(2500)), "accept", by="bulk", batch=1000)
    assert n == 2500
    states = load_states(log)
    assert len(states) == 2500 and all(s.status == "accepted" for s in states.values())
    with pytest.raises(ValueError):
        append_decisions(log, ["x"], "edit")


def _writer(path, prefix, n):
    for i in range(n):
        append_decision(path, f"{prefix}{i}", "accept" if i % 2 else "reject", by=prefix)


def test_two_processes_on_one_log_interleave_whole_lines(tmp_path):
    log = tmp_path / "decisions.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(str(log), p, 150)) for p in ("p", "q")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    lines = log.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 301
    for line in lines[:-1]:
        json.loads(line)
    assert len(load_states(log)) == 300


def test_log_shrinking_under_a_session_is_an_error(tmp_path):
    log = tmp_path / "decisions.jsonl"
    d = DecisionLog(log)
    d.open()
    d.append("a", "accept")
    os.truncate(log, 0)
    with pytest.raises(Exception, match="shrank"):
        d.poll()


def test_fast_fold_matches_the_reference_fold(tmp_path):
    """DecisionLog folds plain lines without json; the result must equal ``fold``'s."""
    import random

    rng = random.Random(3)
    log = tmp_path / "decisions.jsonl"
    ids = [f"{i:016x}" for i in range(40)] + ["custom id", "ünïcode"]
    with open(log, "w", encoding="utf-8") as fh:
        for _ in range(600):
            rid = rng.choice(ids)
            action = rng.choice(["accept", "reject", "undo", "edit", "tag", "accept"])
            row = {"id": rid, "action": action}
            if action == "edit":
                row["text"] = f"text {rng.random()}"
            if action == "tag":
                row["tags"] = rng.sample(["a", "b", "c"], 2)
            row |= {"at": "2026-01-01T00:00:00+0000", "by": rng.choice(["me", 'q"uote', "ü"])}
            sep = rng.choice([(",", ":"), (", ", ": ")])
            fh.write(json.dumps(row, ensure_ascii=False, separators=sep) + "\n")
    reference = fold(read_decisions(log))
    session = DecisionLog(log)
    session.open()
    assert set(session.states) == set(reference)
    for rid, state in reference.items():
        mine = session.states[rid]
        assert (mine.status, mine.text, mine.tags) == (state.status, state.text, state.tags), rid


def test_a_bad_line_among_plain_lines_is_named(tmp_path):
    log = tmp_path / "decisions.jsonl"
    for i in range(5):
        append_decision(log, f"{i:016x}", "accept")
    with open(log, "ab") as fh:
        fh.write(b'{"id":"x","action":"accept","at":"","by":"\xff"}\n')
    with pytest.raises(RecordError, match=f"{log}:6"):
        DecisionLog(log).open()


@pytest.mark.timeout(30)
def test_a_line_longer_than_a_read_block_is_folded(tmp_path, monkeypatch):
    # An edit whose text is longer than one read block (8 MB in use) used to be re-read forever.
    import pipeline.decisions as decisions

    monkeypatch.setattr(decisions, "_READ_BLOCK", 64)
    log = tmp_path / "decisions.jsonl"
    append_decision(log, "a", "edit", text="long " * 100)
    append_decision(log, "b", "accept")
    session = DecisionLog(log)
    session.open()
    assert session.states["a"].text == "long " * 100 and session.states["a"].status == "accepted"
    assert session.states["b"].status == "accepted"
