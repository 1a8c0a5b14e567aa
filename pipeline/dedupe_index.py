"""The exact, fast engine behind ``tenny dedupe`` (the contract is in shared/DESIGN.md).

The result is the brute-force one: walking the samples in order, a sample is
dropped iff ``fuzz.ratio`` against some earlier *kept* sample is >= threshold,
and it is reported against the best such sample (highest score, earliest on a
tie). Only the work is smaller:

1. Exact copies of a kept sample (same ``default_process`` text) are dropped by
   a hash lookup, score 100.
2. The indel distance is a metric, and fuzz.ratio is a function of it:
   ``ratio = 100 * (1 - indel / (len_a + len_b))``. So a pair can only reach the
   threshold when ``indel <= max_indel(len_a + len_b)``. Samples are grouped
   around *leaders* (the first sample of each region of the corpus); with each
   sample's indel distance to every leader, the triangle inequality
   ``indel(a, b) >= |indel(a, p) - indel(b, p)|`` and the length bound
   ``indel(a, b) >= |len_a - len_b|`` rule out whole clusters, and within a
   cluster every member outside a distance window. These bounds never rule out a
   pair that could reach the threshold; they only skip pairs that cannot.
3. What is left is verified by rapidfuzz itself (``process.cdist`` with a score
   cutoff), and the decision compares rapidfuzz's own float score with
   ``>= threshold``, exactly as the brute-force loop does.

Samples go through in blocks of a few thousand: each block is checked against
the kept samples of earlier blocks and against itself, then resolved in input
order, so a sample dropped earlier can never cause a later drop.

``run_jobs`` is the only parallel part: a list of independent verification jobs
(probe texts × member texts). The local engine runs them on a thread pool
(rapidfuzz releases the GIL); the Dask engine (pipeline/dedupe_dask.py) sends
the same jobs to a cluster. Both give identical output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel

# A sample joins the nearest leader's cluster when indel/(len_a+len_b) <= RHO
# (fuzz.ratio >= 60): wide enough that one generator pattern is one cluster,
# narrow enough that different patterns are far from each other's leaders.
RHO = 0.45
# A pivot is the first PIVOT_CHARS characters of its leader. Any string works as
# a pivot for the triangle inequality; rapidfuzz scores many strings of up to 64
# characters at once with SIMD, which makes these distances ~6x cheaper.
PIVOT_CHARS = 64
# Every sample is compared with every leader, so leaders cost O(n * leaders);
# past this many, samples join their nearest leader however far (still exact).
MAX_LEADERS = 384
BLOCK = 4096
# Probes per verification job: small enough for both cores to share a cluster's
# work, large enough that rapidfuzz's per-call cost is amortised.
JOB_PROBES = 256
# Verification asks rapidfuzz for scores a hair below the threshold, then keeps
# score >= threshold itself: rapidfuzz's own cutoff test works on a normalised
# similarity with its own rounding, and must not decide a boundary case.
_CUTOFF_MARGIN = 1e-3


def max_indel(total_len: np.ndarray | int, threshold: float) -> np.ndarray:
    """Largest indel distance at which two strings of total length L can still score >= threshold.

    From ``100 * (1 - d / L) >= t``: ``d <= L * (100 - t) / 100``. The slack
    (1e-6 per character) is far above any float rounding in rapidfuzz's score,
    so a filter using this bound can never miss a pair rapidfuzz scores >= t;
    at worst it lets through a pair that verification then rejects.
    """
    total = np.asarray(total_len, dtype=np.float64)
    return np.floor(total * (100.0 - threshold) / 100.0 + 1e-6 * total + 1e-6).astype(np.int64)


@dataclass
class Verdicts:
    """Per sample: ``matched`` is -1 if kept, else the index of the kept sample it matched."""

    matched: np.ndarray
    score: np.ndarray
    exact: np.ndarray  # dropped as an identical copy (after default_process)
    pairs_verified: int = 0


# ---------------------------------------------------------------- verification jobs


def verify_job(probes: Sequence[str], members: Sequence[str], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact scores for probe × member pairs; returns (probe row, member col, score) where score >= threshold.

    Module-level and pure so that a Dask worker can run it as it is.
    """
    cutoff = max(0.0, threshold - _CUTOFF_MARGIN)
    scores = process.cdist(probes, members, scorer=fuzz.ratio, processor=None, score_cutoff=cutoff,
                           dtype=np.float64, workers=1)
    rows, cols = np.nonzero(scores >= threshold)
    return rows.astype(np.int64), cols.astype(np.int64), scores[rows, cols]


Job = tuple[list[str], list[str], float]
JobRunner = Callable[[list[Job]], list[tuple[np.ndarray, np.ndarray, np.ndarray]]]


def thread_runner(workers: int = 0) -> tuple[JobRunner, Callable[[], None]]:
    """(run_jobs, close) on a local thread pool; rapidfuzz releases the GIL while it scores."""
    from concurrent.futures import ThreadPoolExecutor

    n = workers or os.cpu_count() or 1
    if n == 1:
        return (lambda jobs: [verify_job(*job) for job in jobs]), (lambda: None)
    pool = ThreadPoolExecutor(n, thread_name_prefix="dedupe")

    def run(jobs: list[Job]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if len(jobs) <= 1:
            return [verify_job(*job) for job in jobs]
        return list(pool.map(lambda job: verify_job(*job), jobs))

    return run, pool.shutdown


# ---------------------------------------------------------------- clusters


@dataclass
class _Cluster:
    """Kept members of one leader's cluster, bucketed by their distance to the leader."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    ids: dict[int, list[int]] = field(default_factory=dict)
    r_min: int = 1 << 60
    r_max: int = -1
    len_min: int = 1 << 60
    len_max: int = -1

    def add(self, r: int, text: str, idx: int) -> None:
        self.texts.setdefault(r, []).append(text)
        self.ids.setdefault(r, []).append(idx)
        self.r_min, self.r_max = min(self.r_min, r), max(self.r_max, r)
        n = len(text)
        self.len_min, self.len_max = min(self.len_min, n), max(self.len_max, n)

    def window(self, lo: int, hi: int) -> tuple[list[str], list[int]]:
        """Members whose distance to the leader lies in [lo, hi]."""
        texts: list[str] = []
        ids: list[int] = []
        lo, hi = max(lo, self.r_min), min(hi, self.r_max)
        if hi - lo + 1 > len(self.texts):
            keys = sorted(r for r in self.texts if lo <= r <= hi)
        else:
            keys = [r for r in range(lo, hi + 1) if r in self.texts]
        for r in keys:
            texts += self.texts[r]
            ids += self.ids[r]
        return texts, ids


# ---------------------------------------------------------------- the engine


def dedupe_processed(
    texts: Sequence[str],
    threshold: float,
    n_fixed: int = 0,
    *,
    run_jobs: JobRunner | None = None,
    workers: int = 0,
    block: int = BLOCK,
    progress: Callable[[int, int], None] | None = None,
) -> Verdicts:
    """Dedupe already-``default_process``ed texts; the first ``n_fixed`` are always kept.

    ``progress(samples_done, pairs_verified_so_far)`` is called after each block.
    """
    if not 0 <= threshold <= 100:
        raise ValueError(f"threshold {threshold} outside 0-100")
    close = lambda: None  # noqa: E731
    if run_jobs is None:
        run_jobs, close = thread_runner(workers)
    try:
        return _dedupe(texts, float(threshold), n_fixed, run_jobs, workers, block, progress)
    finally:
        close()


def _dedupe(texts, threshold, n_fixed, run_jobs, workers, block, progress) -> Verdicts:
    n = len(texts)
    matched = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n, dtype=np.float64)
    exact = np.zeros(n, dtype=bool)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=n)
    first: dict[str, int] = {}
    leaders: list[str] = []
    leader_len = np.zeros(0, dtype=np.int64)
    clusters: list[_Cluster] = []
    pairs = 0
    cd_workers = workers or -1

    for start in range(0, n, block):
        end = min(n, start + block)
        # 1. exact copies of a sample kept in an earlier block: hash lookup, no scoring
        active: list[int] = []
        for i in range(start, end):
            j = first.setdefault(texts[i], i)
            if j < start and i >= n_fixed and matched[j] < 0:
                matched[i], score[i], exact[i] = j, 100.0, True
            else:
                active.append(i)
        if not active:
            if progress:
                progress(end, pairs)
            continue
        act = np.asarray(active, dtype=np.int64)
        act_texts = [texts[i] for i in active]
        act_len = lengths[act]

        # 2. distances to leaders; samples far from every leader found new clusters
        D = np.zeros((len(active), MAX_LEADERS), dtype=np.int64)
        if leaders:
            D[:, : len(leaders)] = process.cdist(leaders, act_texts, scorer=Indel.distance, processor=None,
                                                 dtype=np.int32, workers=cd_workers).T
        A = len(active)
        best = np.full(A, np.inf)
        assign = np.zeros(A, dtype=np.int64)
        if leaders:
            norm = D[:, : len(leaders)] / np.maximum(act_len[:, None] + leader_len[None, :], 1)
            assign = norm.argmin(axis=1)
            best = norm[np.arange(A), assign]
        row = 0
        while len(leaders) < MAX_LEADERS:
            far = np.flatnonzero(best[row:] > RHO)
            if not len(far):
                break
            row += int(far[0])  # the first sample no leader covers becomes one
            P = len(leaders)
            pivot = act_texts[row][:PIVOT_CHARS]
            leaders.append(pivot)
            leader_len = np.append(leader_len, len(pivot))
            clusters.append(_Cluster())
            # every row needs its distance to the new pivot: the bounds use it
            D[:, P] = process.cdist([pivot], act_texts, scorer=Indel.distance, processor=None,
                                    dtype=np.int32, workers=1)[0]
            nrm = D[:, P] / np.maximum(act_len + len(pivot), 1)
            better = nrm < best
            best[better], assign[better] = nrm[better], P
            row += 1
        P = len(leaders)
        D = D[:, :P]
        r_self = D[np.arange(len(active)), assign]

        # 3. which clusters can hold a match for each probe (bounds over the
        #    cluster's kept members and this block's members together)
        r_min = np.array([c.r_min for c in clusters], dtype=np.int64)
        r_max = np.array([c.r_max for c in clusters], dtype=np.int64)
        l_min = np.array([c.len_min for c in clusters], dtype=np.int64)
        l_max = np.array([c.len_max for c in clusters], dtype=np.int64)
        for k in np.unique(assign):
            sel = assign == k
            r_min[k] = min(r_min[k], r_self[sel].min())
            r_max[k] = max(r_max[k], r_self[sel].max())
            l_min[k] = min(l_min[k], act_len[sel].min())
            l_max[k] = max(l_max[k], act_len[sel].max())
        is_probe = act >= n_fixed
        probe_rows = np.nonzero(is_probe)[0]
        jobs: list[Job] = []
        owners: list[tuple[np.ndarray, np.ndarray]] = []  # global ids of each job's probes and members
        if len(probe_rows):
            pl = act_len[probe_rows][:, None]
            dmx = max_indel(pl + l_max[None, :], threshold)  # a bound for every member of the cluster
            Dp = D[probe_rows]
            ok = ((Dp - r_max[None, :] <= dmx) & (r_min[None, :] - Dp <= dmx)
                  & (pl - l_max[None, :] <= dmx) & (l_min[None, :] - pl <= dmx))
            block_members: dict[int, np.ndarray] = {}
            for k in np.nonzero(ok.any(axis=0))[0]:
                rows = probe_rows[ok[:, k]]
                # earlier blocks: members in the window [D - dmx, D + dmx], probes sorted by D so
                # that each job's window stays narrow
                order = rows[np.argsort(D[rows, k], kind="stable")]
                cl = clusters[k]
                for s in range(0, len(order), JOB_PROBES):
                    chunk = order[s:s + JOB_PROBES]
                    if cl.r_max < 0:
                        break
                    dk = D[chunk, k]
                    w = int(max_indel(act_len[chunk].max() + cl.len_max, threshold))
                    m_texts, m_ids = cl.window(int(dk.min()) - w, int(dk.max()) + w)
                    if m_texts:
                        jobs.append(([act_texts[r] for r in chunk], m_texts, threshold))
                        owners.append((act[chunk], np.asarray(m_ids, dtype=np.int64)))
                # this block: its members of cluster k that come before the probe
                bm = block_members.get(k)
                if bm is None:
                    bm = block_members[k] = np.nonzero(assign == k)[0]
                for s in range(0, len(rows), JOB_PROBES):
                    chunk = rows[s:s + JOB_PROBES]
                    mem = bm[bm < chunk.max()]
                    if len(mem):
                        jobs.append(([act_texts[r] for r in chunk], [act_texts[r] for r in mem], threshold))
                        owners.append((act[chunk], act[mem]))
        pairs += sum(len(j[0]) * len(j[1]) for j in jobs)
        results = run_jobs(jobs) if jobs else []

        # 4. resolve in input order: only kept samples can cause a drop
        if results:
            mi = np.concatenate([owners[x][0][r] for x, (r, _, _) in enumerate(results)])
            mj = np.concatenate([owners[x][1][c] for x, (_, c, _) in enumerate(results)])
            ms = np.concatenate([s for _, _, s in results])
            keep = mj < mi
            mi, mj, ms = mi[keep], mj[keep], ms[keep]
            order = np.lexsort((mj, -ms, mi))  # by probe, then best score, then earliest
            mi, mj, ms = mi[order], mj[order], ms[order]
            bounds = np.flatnonzero(np.diff(mi)) + 1
            starts = np.concatenate(([0], bounds))
            stops = np.concatenate((bounds, [len(mi)]))
            for a, b in zip(starts.tolist(), stops.tolist()):
                i = int(mi[a])
                for x in range(a, b):
                    j = int(mj[x])
                    if matched[j] < 0:  # kept (earlier blocks hold only kept members)
                        matched[i], score[i] = j, float(ms[x])
                        exact[i] = texts[i] == texts[j]
                        break
        for row, i in enumerate(active):
            if matched[i] < 0:
                clusters[int(assign[row])].add(int(r_self[row]), act_texts[row], i)
        if progress:
            progress(end, pairs)
    return Verdicts(matched, score, exact, pairs)


def brute_force(texts: Sequence[str], threshold: float, n_fixed: int = 0) -> Verdicts:
    """The contract, pair by pair: the reference for tests and the benchmark's check."""
    n = len(texts)
    matched = np.full(n, -1, dtype=np.int64)
    score = np.zeros(n)
    exact = np.zeros(n, dtype=bool)
    kept: list[int] = []
    for i, t in enumerate(texts):
        best = None
        if i >= n_fixed:
            for j in kept:
                s = fuzz.ratio(t, texts[j])
                if s >= threshold and (best is None or s > best[1]):
                    best = (j, s)
        if best is None:
            kept.append(i)
        else:
            matched[i], score[i], exact[i] = best[0], best[1], t == texts[best[0]]
    return Verdicts(matched, score, exact, n * (n - 1) // 2)


def iter_chunks(items: Iterable, size: int):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
