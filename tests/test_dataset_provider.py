"""Provider dataset: start from an existing JSONL / CSV / Parquet file with a field mapping."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import UserError
from pipeline.core.params import ParamsError, load_params
from pipeline.core.records import read_records
from pipeline.stages.synthesize import run as synthesize

ROWS = [
    {"quote": "Time is money, and both are missing.", "author": "Ann", "year": 2001},
    {"quote": 'He said "no" and meant "later".', "author": "Bob", "year": 2002},
    {"quote": "", "author": "Nobody", "year": 2003},
]


def params(tmp_path, dataset: dict):
    (tmp_path / "params.yaml").write_text(json.dumps({"synthesize": {"provider": "dataset", "dataset": dataset}}))
    return load_params(tmp_path / "params.yaml")


@pytest.fixture
def files(in_tmp):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (in_tmp / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    import csv

    with open(in_tmp / "q.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["quote", "author", "year"])
        w.writeheader()
        w.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), in_tmp / "q.parquet")
    return in_tmp


@pytest.mark.parametrize("name", ["q.jsonl", "q.csv", "q.parquet"])
def test_template_mapping_in_every_format(files, name):
    synthesize(params(files, {"path": name, "text": "Quote by {author}: {quote}", "meta_fields": ["year"]}))
    recs = list(read_records("data/raw/samples.jsonl"))
    assert [r["text"] for r in recs] == ["Quote by Ann: Time is money, and both are missing.",
                                         'Quote by Bob: He said "no" and meant "later".']
    assert str(recs[0]["meta"]["year"]) == "2001" and recs[0]["meta"]["source"] == name
    report = json.loads((files / "reports/synthesize.json").read_text())
    assert report["dropped"] == {"empty_field": 1}


def test_field_mapping_to_prompt_completion(files):
    synthesize(params(files, {"path": "q.csv", "prompt": "Something {author} would say:", "completion": "quote"}))
    first = next(iter(read_records("data/raw/samples.jsonl")))
    assert first["prompt"] == "Something Ann would say:" and first["completion"].startswith("Time is money")


def test_missing_field_names_file_row_and_field(files):
    with pytest.raises(UserError, match=r"q\.jsonl:1: field 'qoute' \(used by synthesize\.dataset\.text\) is missing"):
        synthesize(params(files, {"path": "q.jsonl", "text": "{qoute}"}))
    with pytest.raises(UserError, match=r"neither a field of q\.csv .*nor a template"):
        synthesize(params(files, {"path": "q.csv", "text": "qoute"}))


def test_bad_mapping_and_missing_file(files):
    with pytest.raises(ParamsError, match="map exactly one body"):
        params(files, {"path": "q.csv", "text": "quote", "prompt": "author", "completion": "quote"})
    with pytest.raises(UserError, match=r"synthesize\.dataset\.path: nope\.csv: no such file"):
        synthesize(params(files, {"path": "nope.csv", "text": "quote"}))


def test_shipped_example_dataset(in_tmp):
    """The README's example mapping works on the shipped quotes files."""
    import shutil

    from conftest import REPO

    for name in ("quotes.csv", "quotes.jsonl"):
        shutil.copy(REPO / "data/examples" / name, in_tmp / name)
        synthesize(params(in_tmp, {"path": name, "text": "Quote by {author}: {quote}", "meta_fields": ["year"]}))
        recs = list(read_records("data/raw/samples.jsonl"))
        assert len(recs) == 40 and all(r["text"].startswith("Quote by ") for r in recs)
