"""`tenny dedupe` end to end: files, report, against, bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import yaml
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

from pipeline.cli import main
from pipeline.core.records import iter_jsonl, make_record, read_records, render_text, write_records

REPO = Path(__file__).resolve().parent.parent


def run_cli(tmp_path, records, *extra, against=None):
    src = tmp_path / "in.jsonl"
    write_records(src, records)
    params = tmp_path / "params.yaml"
    params.write_text("dedupe:\n  against: [%s]\n" % ", ".join(str(a) for a in (against or [])))
    out, report = tmp_path / "out.jsonl", tmp_path / "rep.json"
    rc = main(["--params", str(params), "dedupe", str(src), "-o", str(out), "--report", str(report), "--no-progress", *extra])
    return rc, out, report, tmp_path / "rep_dropped.jsonl"


def test_report_and_dropped_file(tmp_path):
    records = [
        make_record(text="Airports are malls with a runway attached."),
        make_record(text="AIRPORTS are malls with a runway attached!"),  # exact after processing
        make_record(text="Airports are malls with a runway atached."),  # near
        make_record(text="Gym memberships are donations to the fit."),
        make_record(prompt="Say hi", completion="Hello there, friend."),
        make_record(prompt="say hi!", completion="Hello there friend"),
        make_record(messages=[{"role": "user", "content": "Привет, как дела?"}, {"role": "assistant", "content": "Хорошо 😀"}]),
        make_record(messages=[{"role": "user", "content": "привет как дела"}, {"role": "assistant", "content": "Хорошо"}]),
        make_record(text="漢字とかなの文です。"),
    ]
    rc, out, report, dropped = run_cli(tmp_path, records)
    assert rc == 0
    kept = [r["id"] for r in read_records(out)]
    rows = [row for _, row in iter_jsonl(dropped)]
    rep = json.loads(report.read_text())
    assert rep["input"] == 9 and rep["kept"] == len(kept) and rep["dropped"] == len(rows)
    assert rep["exact_duplicates"] + rep["near_duplicates"] == rep["dropped"]
    assert rep["exact_duplicates"] == 1
    assert set(kept) | {r["id"] for r in rows} == {r["id"] for r in records}
    by_id = {r["id"]: r for r in records}
    for row in rows:
        assert set(row) >= {"id", "matched_id", "score", "text", "matched_text"}
        assert row["matched_id"] in kept
        a, b = by_id[row["id"]], by_id[row["matched_id"]]
        assert row["text"] == render_text(a) and row["matched_text"] == render_text(b)
        assert row["score"] == round(fuzz.ratio(default_process(row["text"]), default_process(row["matched_text"])), 2)
        assert row["score"] >= 90
    assert records[1]["id"] in {r["id"] for r in rows} and records[4]["id"] in kept


def test_against_goes_first_and_is_never_written(tmp_path):
    old = tmp_path / "accepted.jsonl"
    write_records(old, [make_record(text="Smart fridges judge your midnight snacks."),
                        make_record(text="smart fridges judge your midnight snacks!!")])
    new = [make_record(text="Smart fridges judge your midnight snack."), make_record(text="Wedding speeches: open mic for relatives.")]
    rc, out, report, dropped = run_cli(tmp_path, new, against=[old])
    assert rc == 0
    assert [r["id"] for r in read_records(out)] == [new[1]["id"]]
    rep = json.loads(report.read_text())
    assert rep["against"] == 2 and rep["input"] == 2 and rep["kept"] == 1
    row = json.loads(dropped.read_text())
    assert row["matched_id"] in {r["id"] for r in read_records(old)}


def test_empty_input_writes_empty_output(tmp_path):
    rc, out, report, dropped = run_cli(tmp_path, [])
    assert rc == 0
    assert out.read_text() == "" and dropped.read_text() == ""
    assert json.loads(report.read_text())["kept"] == 0


@pytest.mark.parametrize("value", ["-1", "100.01", "nan"])
def test_threshold_outside_range_is_a_clear_error(tmp_path, capsys, value):
    rc, *_ = run_cli(tmp_path, [make_record(text="x")], "--threshold", value)
    assert rc == 2
    assert "between 0 and 100" in capsys.readouterr().err


def test_missing_input_says_what_to_do(tmp_path, capsys):
    rc = main(["dedupe", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--no-progress"])
    assert rc == 2
    assert "no such records file" in capsys.readouterr().err


def test_large_samples_and_emoji_only(tmp_path):
    big = "the quick brown fox " * 5000  # 100 KB
    records = [make_record(text=big), make_record(text=big + "jumps"), make_record(text="😀😀"), make_record(text="🎉")]
    rc, out, report, dropped = run_cli(tmp_path, records)
    assert rc == 0
    rows = {row["id"]: row for _, row in iter_jsonl(dropped)}
    # emoji-only texts process to "" (default_process keeps letters and digits): exact duplicates, reported
    assert rows[records[3]["id"]]["matched_id"] == records[2]["id"] and rows[records[3]["id"]]["exact"]
    assert records[1]["id"] in rows


def test_novelty_falls_to_zero_when_the_input_repeats_itself(tmp_path):
    # Random letters: two of them never score near the threshold, so the first
    # 200 are all new and their repeat is all old.
    rng = random.Random(0)
    fresh = [" ".join("".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=6)) for _ in range(6)) for _ in range(200)]
    records = [make_record(text=t) for t in fresh] + [make_record(text=t.upper() + "!") for t in fresh]
    rc, out, report, _ = run_cli(tmp_path, records)
    assert rc == 0
    header, *rows = (tmp_path / "novelty.csv").read_text().splitlines()
    assert rows == ["100,1.0", "200,1.0", "300,0.0", "400,0.0"]
    plot = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["dedupe"]["plots"][0]["reports/novelty.csv"]
    assert header.split(",") == [plot["x"], plot["y"]]


def test_novelty_last_block_is_a_share_of_what_it_holds():
    from pipeline.stages.dedupe import novelty_rows

    assert novelty_rows([True] * 100 + [True, False] * 25) == [(100, 1.0), (150, 0.5)]
    assert novelty_rows([]) == []
