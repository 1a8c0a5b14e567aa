"""The review log: fold semantics, repair of a cut last line, two writers, bulk lines."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import tracemalloc

import pytest

from pipeline.core import decisions
from pipeline.core.decisions import (
    DecisionLog,
    append_decision,
    append_decisions,
    fold,
    load_states,
    read_decisions,
    repair,
)
from pipeline.core.errors import UserError
from pipeline.core.records import RecordError


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
    with pytest.raises(UserError, match="shrank"):
        d.poll()


AT = "2026-01-01T00:00:00+0000"


def reference_fold(rows: list[dict]) -> tuple[dict, list[str]]:
    """The log's rules written out plainly: per id a list of decisions in force, undo pops the latest.

    Returns {id: (status, edited text, tags)} and the ids of the decisions in force, in order.
    """
    in_force: dict[str, list[dict]] = {}
    order: list[str] = []
    for row in rows:
        kept = in_force.setdefault(row["id"], [])
        if row["action"] != "undo":
            kept.append(row)
            order.append(row["id"])
        elif kept:
            kept.pop()
            del order[len(order) - 1 - order[::-1].index(row["id"])]
    states = {}
    for rid, kept in in_force.items():
        status, text, tags = "pending", None, []
        for d in kept:
            if d["action"] == "edit":
                status, text = "accepted", d["text"]
            elif d["action"] == "tag":
                tags = list(dict.fromkeys(d["tags"]))
            else:
                status = d["action"] + "ed"
        states[rid] = (status, text, tags)
    return states, order


def random_log(rng: random.Random, n: int) -> tuple[list[dict], bytes, int]:
    """n decisions on a few ids, most written as tenny writes them (the regex path), the rest in other JSON.

    One id is only ever undone: it is mentioned, so it is there, pending.
    """
    ids = [f"{i:016x}" for i in range(30)] + ["custom id", "ünïcode"]
    rows, lines, plain = [], [], 0
    for _ in range(n):
        row = {"id": rng.choice(ids), "action": rng.choice(["accept", "reject", "undo"] * 3 + ["edit", "tag"])}
        if rng.random() < 0.02:
            row = {"id": "only undone", "action": "undo"}
        if row["action"] == "edit":
            row["text"] = rng.choice(["short", "two\nlines", 'a "quote"', "ünï", "long " * 60])
        if row["action"] == "tag":
            row["tags"] = rng.sample(["a", "b", "c"], rng.randint(0, 3)) * rng.randint(1, 2)
        row |= {"at": AT, "by": rng.choice(["me", "me", "ü", 'q"uote'])}
        compact = rng.random() < 0.8
        line = json.dumps(row, ensure_ascii=False, separators=(",", ":") if compact else (", ", ": "))
        plain += compact and row["action"] in ("accept", "reject", "undo") and row["by"] != 'q"uote'
        rows.append(row)
        lines.append(line + rng.choice(["\n"] * 20 + ["\r\n", "\n\n"]))
    return rows, "".join(lines).encode(), plain


@pytest.mark.parametrize("seed", range(6))
def test_random_logs_fold_as_the_plain_reference_says(tmp_path, monkeypatch, seed):
    """Every way into the fold (a session following the log, load_states, fold) gives the reference's states.

    Most lines take the regex path (no json.loads); small read blocks put
    block edges anywhere, and the session polls while the log grows, cut
    mid-line.
    """
    rng = random.Random(seed)
    monkeypatch.setattr(decisions, "_READ_BLOCK", rng.choice([64, 700, 8 << 20]))
    rows, data, plain = random_log(rng, 500)
    assert plain > 150
    want, order = reference_fold(rows)
    log = tmp_path / "decisions.jsonl"
    log.write_bytes(b"")
    session = DecisionLog(log)
    session.open()
    written = 0
    for cut in [*sorted(rng.sample(range(1, len(data)), 10)), len(data)]:
        with open(log, "ab") as fh:
            fh.write(data[written:cut])
        written = cut
        session.poll()
    assert session.stack == order
    for states in (session.states, load_states(log), fold(read_decisions(log))):
        assert {rid: (s.status, s.text, s.tags) for rid, s in states.items()} == want


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
    monkeypatch.setattr(decisions, "_READ_BLOCK", 64)
    log = tmp_path / "decisions.jsonl"
    append_decision(log, "a", "edit", text="long " * 100)
    append_decision(log, "b", "accept")
    session = DecisionLog(log)
    session.open()
    assert session.states["a"].text == "long " * 100 and session.states["a"].status == "accepted"
    assert session.states["b"].status == "accepted"


def test_load_states_reads_a_cut_last_line_as_an_error_and_leaves_the_log_alone(tmp_path):
    # build reads the log as a DVC dep: it may not repair it, and may not skip what it cannot read
    log = tmp_path / "decisions.jsonl"
    append_decision(log, "a", "accept")
    with open(log, "ab") as fh:
        fh.write(b'{"id":"b","action":"reject"}')  # whole, only the newline missing
    assert load_states(log)["b"].status == "rejected"
    with open(log, "ab") as fh:
        fh.write(b'\n{"id":"c","act')
    before = log.read_bytes()
    with pytest.raises(RecordError, match=f"{log}:3: malformed JSON"):
        load_states(log)
    assert log.read_bytes() == before and list(tmp_path.iterdir()) == [log]


def test_a_line_the_regex_would_take_but_json_refuses_is_named(tmp_path):
    log = tmp_path / "decisions.jsonl"
    append_decision(log, "a", "accept")
    with open(log, "ab") as fh:
        fh.write(b'{"id":"b\tc","action":"accept","at":"","by":"me"}\n')  # a raw tab inside a JSON string
    with pytest.raises(RecordError, match=f"{log}:2: malformed JSON"):
        load_states(log)
    with pytest.raises(RecordError, match=f"{log}:2"):
        DecisionLog(log).open()


def test_the_fold_keeps_a_decision_in_far_less_than_its_row(tmp_path):
    """A million decisions fold in ~200 MB (bench/bench_build.py): the id and a shared code, not the parsed row."""
    log = tmp_path / "decisions.jsonl"
    n = 50_000
    append_decisions(log, (f"{i:016x}" for i in range(n)), "accept")
    tracemalloc.start()
    try:
        states = load_states(log)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert len(states) == n and states[f"{n - 1:016x}"].status == "accepted"
    assert held / n < 200, f"{held / n:.0f} bytes per decision"
