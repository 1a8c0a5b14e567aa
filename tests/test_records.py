"""The record format: hostile lines are errors naming file, line and field; writes are atomic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from pipeline.core.records import (
    RecordError,
    append_jsonl,
    count_lines,
    make_record,
    read_records,
    read_records_lenient_ids,
    record_id,
    render_text,
    with_body,
    write_records,
)


def write(path, *lines: str | bytes) -> None:
    data = b"".join((l if isinstance(l, bytes) else l.encode()) + b"\n" for l in lines)
    path.write_bytes(data)


def good(text="hello") -> str:
    return json.dumps(make_record(text=text))


def error_of(path) -> RecordError:
    with pytest.raises(RecordError) as info:
        list(read_records(path))
    return info.value


def test_ids_are_stable_over_whitespace_and_unicode_composition():
    a = make_record(text="Café  menus\tlie.")
    b = make_record(text=" Cafe\u0301 menus lie. ", meta={"model": "x"})
    assert a["id"] == b["id"]
    assert make_record(text="Cafe menus lie.")["id"] != a["id"]
    # The body kind is part of the identity: a text is not a prompt/completion pair.
    assert make_record(prompt="a", completion="b")["id"] != make_record(text="a\nb")["id"]
    assert record_id({"messages": [{"role": "user", "content": "hi"}]}) == make_record(messages=[{"role": "user", "content": " hi "}])["id"]


def test_round_trip_all_three_bodies(tmp_path):
    recs = [
        make_record(text="plain", meta={"source": "x"}),
        make_record(prompt="Q?", completion="A."),
        make_record(messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no"}]),
    ]
    path = tmp_path / "r.jsonl"
    assert write_records(path, recs) == 3
    assert list(read_records(path)) == recs
    assert render_text(recs[1]) == "Q?\nA."
    assert render_text(recs[2]) == "user: hi\nassistant: no"


def test_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, "", good("a"), "   ", good("b"), "")
    assert [r["text"] for r in read_records(path)] == ["a", "b"]


@pytest.mark.parametrize(
    "line, lineno, field, words",
    [
        ("{not json", 2, None, "malformed JSON"),
        ('["a list"]', 2, None, "must be a JSON object"),
        ('{"id": "x"}', 2, None, "no body"),
        ('{"id": "x", "text": 5}', 2, "text", "must be a string, got int"),
        ('{"id": "x", "text": "a", "prompt": "p", "completion": "c"}', 2, None, "two bodies"),
        ('{"id": "x", "prompt": "p"}', 2, "completion", "missing"),
        ('{"id": "x", "messages": []}', 2, "messages", "non-empty list"),
        ('{"id": "x", "messages": [{"role": "robot", "content": "x"}]}', 2, "messages[0].role", "must be one of"),
        ('{"id": "x", "messages": [{"role": "user", "content": null}]}', 2, "messages[0].content", "must be a string"),
        ('{"text": "no id"}', 2, "id", "missing"),
        ('{"id": 7, "text": "a"}', 2, "id", "non-empty string"),
        ('{"id": "x", "text": "a", "meta": []}', 2, "meta", "must be an object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, lineno, field, words):
    path = tmp_path / "bad.jsonl"
    write(path, good("first"), line, good("never reached"))
    err = error_of(path)
    assert (err.path, err.line, err.field) == (str(path), lineno, field)
    assert words in err.problem
    assert str(err).startswith(f"{path}:{lineno}: ")


def test_invalid_utf8_and_bom_and_duplicate_ids(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, good("a"), b'{"id": "x", "text": "caf\xe9"}')
    err = error_of(path)
    assert err.line == 2 and "not valid UTF-8" in err.problem

    write(path, b"\xef\xbb\xbf" + good("a").encode())
    err = error_of(path)
    assert err.line == 1 and "BOM" in err.problem

    write(path, good("same"), good("other"), good("same"))
    err = error_of(path)
    assert err.line == 3 and err.field == "id" and "first on line 1" in err.problem


def test_reading_streams(tmp_path):
    """The reader yields the first record before it has seen a bad line further down."""
    path = tmp_path / "r.jsonl"
    write(path, good("a"), "{broken")
    stream = read_records(path)
    assert next(stream)["text"] == "a"
    with pytest.raises(RecordError):
        next(stream)


def test_lenient_reader_assigns_ids(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, '{"text": "no id yet"}', '{"prompt": "p", "completion": "c", "meta": {"k": 1}}')
    recs = list(read_records_lenient_ids(path))
    assert recs[0]["id"] == make_record(text="no id yet")["id"]
    assert recs[1]["meta"] == {"k": 1}


def test_write_is_atomic_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    write_records(path, [make_record(text="old")])

    def boom():
        yield make_record(text="new 1")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_records(path, boom())
    assert [r["text"] for r in read_records(path)] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left behind


def test_write_refuses_invalid_and_duplicate_records(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RecordError, match="two bodies"):
        write_records(path, [{"id": "x", "text": "a", "messages": [{"role": "user", "content": "b"}]}])
    rec = make_record(text="a")
    with pytest.raises(RecordError, match="duplicate id"):
        write_records(path, [rec, rec])
    assert not path.exists()


def test_killed_writer_leaves_old_file(tmp_path):
    """A process killed (SIGKILL) in the middle of a write leaves the previous file whole."""
    path = tmp_path / "out.jsonl"
    write_records(path, [make_record(text="old")])
    code = f"""
import os, signal
from pipeline.core.records import atomic_writer
with atomic_writer({str(path)!r}) as fh:
    fh.write('{{"partial": ')
    fh.flush()
    os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -9
    assert [r["text"] for r in read_records(path)] == ["old"]


def test_append_and_count(tmp_path):
    path = tmp_path / "log.jsonl"
    for i in range(3):
        append_jsonl(path, {"i": i})
    assert count_lines(path) == 3
    path.write_bytes(path.read_bytes() + b'{"i": 3}')  # no final newline
    assert count_lines(path) == 4


def test_with_body_keeps_meta_and_changes_id():
    rec = make_record(text="a", meta={"source": "s"})
    new = with_body(rec, text="b")
    assert new["meta"] == {"source": "s"} and new["id"] != rec["id"]


def test_lone_surrogate_escape_is_an_error_but_a_pair_is_text(tmp_path):
    path = tmp_path / "r.jsonl"
    write(path, '{"id": "x", "text": "emoji \\ud83d\\ude00 ok"}', '{"id": "y", "text": "broken \\ud800 here"}')
    stream = read_records(path)
    assert next(stream)["text"] == "emoji \U0001F600 ok"
    with pytest.raises(RecordError, match=r":2: .*lone surrogate"):
        next(stream)
