"""Build: review decisions applied, a stable split, chat formatting and data checks."""

from __future__ import annotations

import csv
import json

import pytest

from pipeline.core.decisions import append_decision
from pipeline.core.errors import UserError
from pipeline.core.params import load_params
from pipeline.core.records import make_record, read_records, write_records
from pipeline.stages import base, build


@pytest.fixture
def project(in_tmp):
    recs = [make_record(text=f"Cynical sample number {i} about printers.", meta={"topic": "printers"}) for i in range(40)]
    recs.append(make_record(prompt="Why do meetings exist?", completion="To schedule more meetings."))
    recs.append(make_record(prompt="Why do meetings exist?", completion="So nobody decides alone."))
    recs.append(make_record(messages=[{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "ok"}]))
    recs.append(make_record(text="   \t  "))
    write_records("data/deduped/samples.jsonl", recs)
    (in_tmp / "data/reviews").mkdir(parents=True)
    (in_tmp / "data/reviews/decisions.jsonl").write_text("")
    params = load_params("params.yaml", ["train.base_model=tiny", "build.system_prompt=You are Tenny.",
                                         "build.user_template=Give me a cynical take on {topic}."])
    base.run(params)
    return in_tmp, recs, params


def outputs():
    return list(read_records("data/final/train.jsonl")), list(read_records("data/final/val.jsonl"))


def test_chat_format_split_and_report(project):
    root, recs, params = project
    build.run(params)
    train, val = outputs()
    assert len(train) + len(val) == len(recs) and val
    first = next(r for r in train + val if r["id"] == recs[0]["id"])
    assert first["messages"] == [
        {"role": "system", "content": "You are Tenny."},
        {"role": "user", "content": "Give me a cynical take on printers."},
        {"role": "assistant", "content": recs[0]["text"]},
    ]
    report = json.loads((root / "reports/dataset.json").read_text())
    assert report["train"] == len(train) and report["val"] == len(val)
    assert report["tokens"]["all"]["count"] == len(recs) and report["tokens"]["all"]["max"] > 0
    w = report["warnings"]
    assert w["empty_or_whitespace_body"]["count"] == 1
    assert w["duplicate_prompt"]["count"] == 1 and w["duplicate_prompt"]["examples"] == [recs[41]["id"]]
    assert w["roles_out_of_order"]["examples"] == [recs[42]["id"]]
    with open(root / "reports/token_lengths.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(int(r["samples"]) for r in rows) == len(recs)


def test_split_is_stable_when_data_is_added(project):
    """A sample stays on its side of the split whatever else is added: versions stay comparable."""
    root, recs, params = project
    build.run(params)
    train1, val1 = outputs()
    write_records("data/deduped/samples.jsonl", recs + [make_record(text=f"New sample {i}.") for i in range(30)])
    build.run(params)
    train2, val2 = outputs()
    assert {r["id"] for r in val1} <= {r["id"] for r in val2}
    assert {r["id"] for r in train1} <= {r["id"] for r in train2}
    other_seed = load_params("params.yaml", ["train.base_model=tiny", "build.seed=7"])
    build.run(other_seed)
    assert {r["id"] for r in outputs()[1]} != {r["id"] for r in val2}


def test_decisions_reject_edit_tag_and_include_modes(project):
    root, recs, params = project
    log = root / "data/reviews/decisions.jsonl"
    append_decision(log, recs[0]["id"], "reject")
    append_decision(log, recs[1]["id"], "edit", text="An edited take on printers.")
    append_decision(log, recs[1]["id"], "tag", tags=["keeper", "dry"])
    append_decision(log, recs[2]["id"], "accept")
    append_decision(log, recs[3]["id"], "reject")
    append_decision(log, recs[3]["id"], "undo")  # back to pending
    build.run(params)
    train, val = outputs()
    by_id = {r["id"]: r for r in train + val}
    assert recs[0]["id"] not in by_id
    edited = by_id[recs[1]["id"]]
    assert edited["messages"][-1]["content"] == "An edited take on printers."
    assert edited["meta"]["tags"] == ["keeper", "dry"] and edited["meta"]["edited"] is True
    assert recs[3]["id"] in by_id  # the undone rejection no longer counts
    report = json.loads((root / "reports/dataset.json").read_text())
    assert report["review"]["excluded_rejected"] == 1 and report["review"]["edited"] == 1

    accepted_only = load_params("params.yaml", ["train.base_model=tiny", "build.include=accepted"])
    build.run(accepted_only)
    train, val = outputs()
    assert sorted(r["id"] for r in train + val) == sorted([recs[1]["id"], recs[2]["id"]])


def test_nothing_accepted_is_a_clear_error_and_keeps_old_outputs(project):
    root, recs, params = project
    build.run(params)
    before = (root / "data/final/train.jsonl").read_bytes()
    with pytest.raises(UserError, match="no training samples left.*build.include"):
        build.run(load_params("params.yaml", ["train.base_model=tiny", "build.include=accepted"]))
    assert (root / "data/final/train.jsonl").read_bytes() == before


def test_bad_decision_line_names_file_and_line(project):
    root, recs, params = project
    (root / "data/reviews/decisions.jsonl").write_text(
        json.dumps({"id": recs[0]["id"], "action": "accept"}) + "\n" + json.dumps({"id": recs[1]["id"], "action": "love"}) + "\n")
    with pytest.raises(UserError, match=r"decisions.jsonl:2: action: must be one of"):
        build.run(params)


def test_a_cut_last_decision_is_skipped_with_a_note_and_the_log_is_left_as_it_is(project, capsys):
    # a review session repairs a line cut by a crash; build (a DVC stage) only reads its deps,
    # and a teammate's crash costs the build that one keystroke, said in the report (issue 27)
    root, recs, params = project
    log = root / "data/reviews/decisions.jsonl"
    append_decision(log, recs[0]["id"], "reject")
    with open(log, "a") as fh:
        fh.write(json.dumps({"id": recs[1]["id"], "action": "reject"})[:-9])
    before = log.read_bytes()
    build.run(params)
    report = json.loads((root / "reports/dataset.json").read_text())
    assert report["review"]["excluded_rejected"] == 1  # the whole line counts, the cut one does not
    assert "decisions.jsonl:2: a cut last line" in report["review_notes"][0]
    assert "decisions.jsonl:2: a cut last line" in capsys.readouterr().out
    assert log.read_bytes() == before and sorted(p.name for p in log.parent.iterdir()) == ["decisions.jsonl"]


def test_a_duplicate_sample_id_names_both_lines_and_keeps_old_outputs(project):
    root, recs, params = project
    build.run(params)
    before = (root / "data/final/train.jsonl").read_bytes()
    write_records("data/deduped/samples.jsonl", recs)
    with open("data/deduped/samples.jsonl", "a") as fh:
        fh.write(json.dumps(recs[5]) + "\n")
    with pytest.raises(UserError, match=rf"samples.jsonl:{len(recs) + 1}: id: duplicate id {recs[5]['id']} \(first on line 6\)"):
        build.run(params)
    assert (root / "data/final/train.jsonl").read_bytes() == before


def test_text_format_keeps_bodies(project):
    root, recs, params = project
    build.run(load_params("params.yaml", ["train.base_model=tiny", "build.format=text"]))
    train, val = outputs()
    kinds = {next(k for k in ("text", "prompt", "messages") if k in r) for r in train + val}
    assert kinds == {"text", "prompt", "messages"}
