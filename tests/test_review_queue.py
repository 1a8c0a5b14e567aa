"""The index behind the review screen: ids without parsing, filters, search, near-twins, bad lines."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_review_support import pair_and_chat, write_records

from pipeline.core.errors import UserError
from pipeline.core.records import RecordError, dumps, editable_text, make_record
from pipeline.engines.review_queue import (
    CHUNK,
    DroppedIndex,
    Filter,
    LineIndex,
    ReviewQueue,
    approx_tokens,
    compile_query,
    id_key,
    id_keys,
)


def _queue(tmp_path, records=None, n=12):
    path = tmp_path / "r.jsonl"
    recs = write_records(path, n, records)
    q = ReviewQueue(path, tmp_path / "d.jsonl")
    q.open()
    return q, recs


def test_index_reads_ids_and_lines_without_parsing(tmp_path):
    q, recs = _queue(tmp_path, pair_and_chat())
    assert len(q) == len(recs)
    for pos, rec in enumerate(recs):
        assert q.index.id_of(pos) == rec["id"]
        assert q.sample(pos).record == rec
        assert q.sample(pos).line == pos + 1


def test_foreign_ids_blank_lines_crlf_and_no_final_newline(tmp_path):
    path = tmp_path / "r.jsonl"
    rows = [{"id": "custom-1", "text": "one"}, {"text": "two", "id": "0123456789abcdef"},
            {"id": "UPPER0123456789A", "text": "three"}]
    path.write_bytes(b"\n".join(dumps(r).encode() for r in rows[:2]) + b"\r\n\n   \n" + dumps(rows[2]).encode())
    q = ReviewQueue(path, tmp_path / "d.jsonl")
    q.open()
    assert len(q) == 3
    assert [q.index.id_of(p) for p in range(3)] == ["custom-1", "0123456789abcdef", "UPPER0123456789A"]
    assert [q.sample(p).line for p in range(3)] == [1, 2, 5]


def test_a_line_longer_than_a_batch(tmp_path):
    path = tmp_path / "r.jsonl"
    big = make_record(text="x" * (CHUNK + 100))
    small = make_record(text="small")
    path.write_text(dumps(small) + "\n" + dumps(big) + "\n" + dumps(small | {"id": "f" * 16}) + "\n")
    ix = LineIndex(path)
    ix.scan()
    assert len(ix) == 3 and ix.id_of(1) == big["id"] and ix.sample(1).record["text"] == big["text"]


@pytest.mark.parametrize("content, where", [
    (b'{"id":"a","text":"ok"}\n{"id":"b","text":', ":2"),
    (b'{"id":"a","text":"ok"}\n[1,2]\n', ":2"),
    (b'{"id":"a"}\n', ":1"),
    (b'\xef\xbb\xbf{"id":"a","text":"x"}\n', ":1"),
    (b'{"id":"a","text":"\xff"}\n', ":1"),
])
def test_malformed_records_name_file_and_line(tmp_path, content, where):
    path = tmp_path / "r.jsonl"
    path.write_bytes(content)
    with pytest.raises(RecordError) as err:
        LineIndex(path).scan()
    assert str(path) + where in str(err.value)


def test_a_cut_fast_form_line_is_caught_when_indexed(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = make_record(text="hello there")
    path.write_text(dumps(rec) + "\n" + dumps(rec)[:-5] + "\n")
    with pytest.raises(RecordError, match=":2"):
        LineIndex(path).scan()


def test_missing_records_file_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="tenny dedupe"):
        ReviewQueue(tmp_path / "nope.jsonl", tmp_path / "d.jsonl")


def test_status_filters_follow_decisions(tmp_path):
    q, recs = _queue(tmp_path)
    assert q.first_pending() == 0
    q.decide(q.sample(0), "accept")
    q.decide(q.sample(1), "reject")
    q.decide(q.sample(2), "edit", text="better")
    q.decide(q.sample(3), "tag", tags=["funny"])
    assert q.counts() == {"total": 12, "accepted": 2, "rejected": 1, "reviewed": 3, "edited": 1}
    assert q.first_pending() == 3
    q.set_filter(Filter.parse("accepted"))
    assert list(q.visible_positions()) == [0, 2]
    q.set_filter(Filter.parse("edited"))
    assert list(q.visible_positions()) == [2]
    q.set_filter(Filter.parse("tag:funny"))
    assert list(q.visible_positions()) == [3]
    q.set_filter(Filter.parse("pending"))
    assert q.visible_count() == 9 and q.next_visible(0) == 3 and q.next_visible(5, -1) == 4
    q.decide(q.sample(3), "accept")  # leaves the pending filter at once
    assert not q.visible(3)
    assert q.undo_last() == recs[3]["id"] and q.visible(3)

    # reopening folds the same state from the log
    again = ReviewQueue(tmp_path / "r.jsonl", tmp_path / "d.jsonl")
    again.open()
    assert again.counts() == q.counts() and again.first_pending() == 3


def test_filter_parse():
    assert Filter.parse("") == Filter() and Filter.parse("tag: x ") == Filter("tag", "x")
    assert Filter.parse("topic = gyms") == Filter("slot", "topic", "gyms")
    with pytest.raises(ValueError):
        Filter.parse("sideways")


def test_slot_filter_reads_meta_and_nested_slots(tmp_path):
    q, _ = _queue(tmp_path, [make_record(text="t", meta={"topic": "gyms"})])
    mask = q.slot_mask("topic", "gyms")
    assert list(np.flatnonzero(mask)) == [1, 4, 7, 10, 12]
    assert q.slot_mask("model", "gpt-4o-mini").sum() == 12
    assert q.slot_mask("temperature", "1.0").sum() == 12
    assert q.slot_mask("topic", "nowhere").sum() == 0


def test_search_substring_regex_wraps_and_sees_edits(tmp_path):
    q, _ = _queue(tmp_path, pair_and_chat())
    assert q.search("FRIDGES", 0) == 2
    assert q.search("fridges", 11, step=1) == 2  # wraps around
    assert q.search("fridges", 2, step=-1) == 11
    assert q.search(r"/Sample 1\d:/", 0) == 10
    assert q.search("hope goes", 0) == 12  # completion of a pair
    assert q.search("time is a loop", 0) == 13  # a chat turn
    assert q.search('"quoted"', 0) is None
    q.decide(q.sample(5), "edit", text="now about zeppelins")
    assert q.search("zeppelins", 0) == 5
    q.set_filter(Filter.parse("rejected"))
    assert q.search("fridges", 0) is None
    with pytest.raises(re.error, match=r"missing \), unterminated subpattern"):
        q.search("/(unclosed/", 0)


def test_search_folds_case_the_same_way_in_both_directions(tmp_path):
    q, _ = _queue(tmp_path, [make_record(text="Die Straße ist lang"), make_record(text="die strasse"),
                             make_record(text="5 \u212a, not 5 k"), make_record(text="ÉCOLE")], n=0)
    assert q.search("strasse", 1) == 0 and q.search("strasse", 0) == 1
    assert q.search("straße", 1) == 0 and q.search("straße", 0) == 1
    assert q.search("STRASSE", 1) == 0
    assert q.search("5 k,", 0) == 2  # the Kelvin sign folds to k
    assert q.search("école", 0) == 3


# Characters whose full case fold differs from ASCII lowering, JSON's escaped characters, and plain ones.
fold_alphabet = st.sampled_from(list("aAsSkKiIfFlLtTeE ßẞſKİﬁﬂﬅÉéΣσςΐ東\"\\/\n\t\x1b\u2028😀"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(fold_alphabet, min_size=1, max_size=12), query=st.text(fold_alphabet, min_size=1, max_size=4),
       ascii_writer=st.booleans(), sub=st.data())
def test_search_prefilter_never_rejects_a_line_the_matcher_accepts(text, query, ascii_writer, sub):
    if sub.draw(st.booleans()):  # often a piece of the text itself, in another case
        at = sub.draw(st.integers(0, len(text) - 1))
        query = sub.draw(st.sampled_from([str.upper, str.lower, str.casefold, str]))(text[at:at + len(query)])
    matcher, _ = compile_query(query)
    record = make_record(text=text)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "r.jsonl"
        # tenny's own writer keeps non-ASCII as is; other writers escape it
        path.write_text((json.dumps(record) if ascii_writer else dumps(record)) + "\n", encoding="utf-8")
        q = ReviewQueue(path, Path(folder) / "d.jsonl")
        q.open()
        try:
            assert (q.search(query, 0) == 0) == matcher(text), (text, query)
        finally:
            q.close()


def test_bulk_decides_what_the_filter_shows(tmp_path):
    q, recs = _queue(tmp_path, [{"id": "odd-id", "text": "foreign"}])
    q.decide(q.sample(0), "reject")
    q.set_filter(Filter.parse("pending"))
    assert q.bulk("accept", q.visible_positions()) == 12
    assert q.counts()["accepted"] == 12 and q.counts()["rejected"] == 1
    assert q.state("odd-id").status == "accepted"
    assert q.visible_count() == 0


def test_dropped_index_finds_twins_by_matched_id(tmp_path):
    path = tmp_path / "dropped.jsonl"
    rows = [{"id": f"d{i}", "matched_id": "keep" if i % 2 else "other", "score": 90 + i, "text": f"t{i}",
             "matched_text": "m"} for i in range(10)]
    rows.append({"id": "e", "matched_id": "we\"ird", "score": 95.0, "text": "esc", "matched_text": "m"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ix = DroppedIndex(path)
    ix.scan()
    twins, count = ix.twins("keep", limit=3)
    assert count == 5 and [t["id"] for t in twins] == ["d9", "d7", "d5"]  # best score first
    assert ix.twins("we\"ird")[1] == 1
    assert ix.twins("nobody") == ([], 0)


def test_dropped_index_reads_only_the_best_of_many_twins(tmp_path):
    path = tmp_path / "dropped.jsonl"
    rows = [{"id": f"d{i}", "matched_id": "keep", "score": 50 + i / 100, "text": f"t{i}"} for i in range(1000)]
    rows.insert(500, {"id": "no-score", "matched_id": "keep", "text": "?"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ix = DroppedIndex(path)
    ix.scan()
    twins, count = ix.twins("keep", limit=3)
    assert count == 1001 and [t["id"] for t in twins] == ["d999", "d998", "d997"]
    assert ix.twins("keep", limit=1001)[0][-1]["id"] == "no-score"  # a row without a score goes last


@pytest.mark.parametrize("row, problem", [
    ('{"id": "a\\q"}', r"dropped.jsonl:2: malformed JSON: Invalid \\escape"),
    ('{"id": "b", "matched_id": "c\\q"}', r"dropped.jsonl:2: malformed JSON: Invalid \\escape"),
    ('{"id": "b", "score": 1}', r"dropped.jsonl:2: matched_id: missing or not a string"),
])
def test_a_bad_dropped_row_is_named_by_the_scan(tmp_path, row, problem):
    path = tmp_path / "dropped.jsonl"
    path.write_text('{"id": "x", "matched_id": "keep", "score": 90}\n' + row + "\n")
    with pytest.raises(RecordError, match=problem + ".*re-run `tenny dedupe`"):
        DroppedIndex(path).scan()


def test_a_bad_dropped_row_is_named_when_shown(tmp_path):
    path = tmp_path / "dropped.jsonl"
    path.write_text('{"id": "x", "matched_id": "keep", "score": 90}\n{"id": "y\\q", "matched_id": "keep"}\n')
    ix = DroppedIndex(path)
    ix.scan()  # the matched_id reads fine without parsing the row
    with pytest.raises(RecordError, match=r"dropped.jsonl:2: malformed JSON"):
        ix.twins("keep")


def test_id_key_and_helpers():
    assert id_key("0123456789abcdef") == 0x0123456789ABCDEF
    assert id_key("x") == id_key("x") != id_key("y")
    assert approx_tokens("abcd" * 10) == 10
    pair, chat = pair_and_chat()
    assert editable_text(pair) == pair["completion"]
    assert editable_text(chat) == chat["messages"][-1]["content"]


def test_id_keys_of_hex_ids_of_other_lengths_are_their_hashes():
    # A 12- and a 20-character hex id add up to two 16-character ids: the batch
    # path must not split them into the wrong keys.
    ids = ["a" * 12, "b" * 20, "0123456789abcdef"]
    assert id_keys(ids).tolist() == [id_key(r) for r in ids]
