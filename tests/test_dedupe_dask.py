"""dedupe.engine dask gives the local engine's output, on a real LocalCluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from rapidfuzz.utils import default_process

from pipeline.engines.dedupe_index import dedupe_processed

pytest.importorskip("dask.distributed")


def test_local_cluster_output_identical_to_local_engine(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    import pipeline.engines.dedupe_dask as dd
    from bench.corpus import make_corpus

    monkeypatch.setattr(dd, "_LOCAL_PAIRS", 0)  # every job goes to the cluster
    texts = [default_process(t) for t in make_corpus(1500, "hostile", seed=2)]
    texts += [default_process(t) for t in make_corpus(1500, "realistic", seed=2)]
    local = dedupe_processed(texts, 88.0, n_fixed=100, workers=1, block=512)
    run_jobs, close = dd.dask_runner(workers=2)
    try:
        remote = dedupe_processed(texts, 88.0, n_fixed=100, run_jobs=run_jobs, block=512)
    finally:
        close()
    assert (remote.matched == local.matched).all()
    assert (remote.score == local.score).all()
    assert (remote.exact == local.exact).all()
    assert (local.matched >= 0).sum() > 500  # a corpus with plenty to drop


def test_cli_engine_dask_writes_what_local_writes(tmp_path):
    from pipeline.cli import main
    from pipeline.core.records import make_record, write_records

    texts = ["Airports are malls with a runway.", "airports are malls with a runway!!", "Airports are malls with runways.",
             "Gym memberships fund other people's gyms.", "Smart fridges know you too well.", "smart fridges know you too well"]
    src = tmp_path / "in.jsonl"
    write_records(src, [make_record(text=t) for t in texts])
    outs = {}
    for engine in ("local", "dask"):
        out, rep = tmp_path / f"{engine}.jsonl", tmp_path / f"{engine}.json"
        rc = main(["dedupe", str(src), "-o", str(out), "--report", str(rep), "--no-progress",
                   "--set", f"dedupe.engine={engine}", "--set", "dedupe.workers=1"])
        assert rc == 0
        outs[engine] = (out.read_text(), (tmp_path / f"{engine}_dropped.jsonl").read_text())
    assert outs["dask"] == outs["local"]
