"""``dedupe.engine: dask``: the same verification jobs, run on a Dask cluster.

The engine's only parallel work is a list of independent jobs per block (probe
texts aligned with candidate member texts → pairs at or above the threshold); the
candidate search and the in-order resolution stay on the client, so the output
is identical to the local engine by construction, and a test proves it on a
LocalCluster. Dask rather than Ray: see docs/dedupe.md.

Imported only when the engine is chosen, so ``tenny`` starts without Dask.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.core.errors import UserError
from pipeline.engines.dedupe_index import Job, JobResult, JobRunner, verify_job

# Jobs smaller than this many pairs run on the client: shipping them costs more
# than scoring them.
_LOCAL_PAIRS = 20_000


def _verify_many(jobs: list[Job]) -> list[JobResult]:
    return [verify_job(*job) for job in jobs]


def dask_runner(scheduler: str | None = None, workers: int = 0) -> tuple[JobRunner, Callable[[], None]]:
    """(run_jobs, close): connect to ``scheduler``, or start a LocalCluster of ``workers`` processes."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:  # pragma: no cover - dask[distributed] is a dependency
        raise UserError("dedupe.engine dask needs dask[distributed]: pip install 'dask[distributed]'") from None

    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise UserError(f"dedupe.scheduler {scheduler}: cannot connect ({err}); start one with "
                            "`dask scheduler`, or remove dedupe.scheduler to use a local cluster") from None
    else:
        cluster = LocalCluster(n_workers=workers or None, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))

    def run(jobs: list[Job]) -> list[JobResult]:
        out: list = [None] * len(jobs)
        remote, local = [], []
        for x, job in enumerate(jobs):
            (remote if len(job[0]) >= _LOCAL_PAIRS else local).append(x)
        # a few batches per worker: enough to balance, few enough to keep scheduling cheap
        n_batches = min(len(remote), 4 * n_workers)
        batches = [remote[b::n_batches] for b in range(n_batches)]
        futures = [client.submit(_verify_many, [jobs[x] for x in batch], pure=False) for batch in batches]
        for x in local:  # while the cluster works on the big ones
            out[x] = verify_job(*jobs[x])
        for batch, result in zip(batches, client.gather(futures)):
            for x, r in zip(batch, result):
                out[x] = r
        return out

    def close() -> None:
        client.close()
        if cluster is not None:
            cluster.close()

    return run, close
