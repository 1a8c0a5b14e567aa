"""dedupe.engine dask gives the local engine's output, on a real LocalCluster."""

from __future__ import annotations

from pathlib import Path

import pytest
from rapidfuzz.utils import default_process

from pipeline.dedupe_index import dedupe_processed

pytest.importorskip("dask.distributed")


def test_local_cluster_output_identical_to_local_engine(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench.corpus import make_corpus

    import pipeline.dedupe_dask as dd

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
