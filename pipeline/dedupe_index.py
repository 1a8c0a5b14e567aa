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
3. Each candidate pair is checked with the part bound (1) below, a lower
   bound of the indel distance that costs a fraction of a full score.
4. What is left is scored by rapidfuzz itself (``process.cpdist`` with
   ``fuzz.ratio``), and the decision compares rapidfuzz's own float score with
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel

# Characters are split into PARTS disjoint classes balanced by frequency; a
# string's part c keeps only the characters of class c. For any alignment,
# each unmatched character is unmatched in exactly one part, so
#     indel(a, b) >= sum over c of indel(a_c, b_c)                      (1)
# and each part of a ~100-character sample has ~25 characters, which rapidfuzz
# scores many at a time with SIMD: the four parts cost ~1/8 of one full score.
PARTS = 4
# A sample joins the nearest leader's cluster when indel / (len_a + len_b) <=
# RHO (fuzz.ratio >= 55): one generator pattern is then mostly one cluster.
RHO = 0.45
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


def _spread(dist: np.ndarray, len_a: np.ndarray, len_p: np.ndarray | int) -> np.ndarray:
    """1 - fuzz.ratio/100: how far a sample is from a leader, for clustering only."""
    return dist / np.maximum(len_a + len_p, 1)


@dataclass
class Verdicts:
    """Per sample: ``matched`` is -1 if kept, else the index of the kept sample it matched."""

    matched: np.ndarray
    score: np.ndarray
    exact: np.ndarray  # dropped as an identical copy (after default_process)
    pairs_verified: int = 0  # candidate pairs left by the cluster bounds, each checked by the part bound
    pairs_scored: int = 0  # pairs the part bound let through, scored in full by rapidfuzz


# ---------------------------------------------------------------- verification jobs


def part_distances(queries: Sequence[Sequence[str]], choices: Sequence[Sequence[str]], cutoff: int | None = None) -> np.ndarray:
    """The sum in (1) for every query × choice: a lower bound of their indel distance.

    With ``cutoff``, a part distance above it is reported as cutoff + 1, still
    a lower bound (and cheaper to compute).
    """
    total = None
    for q, c in zip(queries, choices):
        d = process.cdist(q, c, scorer=Indel.distance, processor=None, score_cutoff=cutoff, dtype=np.int32, workers=1)
        total = d if total is None else total + d
    return total


def verify_job(probes: Sequence[str], probe_parts: Sequence[Sequence[str]],
               members: Sequence[str], member_parts: Sequence[Sequence[str]],
               threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Exact scores for probe × member pairs: (probe row, member col, score) where score >= threshold,
    and how many pairs were scored in full.

    The part bound (1) rules out nearly every pair that is not a near-duplicate
    at a fraction of the cost; the rest are scored in full by rapidfuzz.
    Module-level and pure so that a Dask worker can run it as it is.
    """
    la = np.fromiter(map(len, probes), dtype=np.int32, count=len(probes))
    lb = np.fromiter(map(len, members), dtype=np.int32, count=len(members))
    table = max_indel(np.arange(int(la.max()) + int(lb.max()) + 1), threshold).astype(np.int32)
    dmax = table[la[:, None] + lb[None, :]]
    rows, cols = np.nonzero(part_distances(probe_parts, member_parts, int(table[-1])) <= dmax)
    if not len(rows):
        return rows.astype(np.int64), cols.astype(np.int64), np.zeros(0), 0
    cutoff = max(0.0, threshold - _CUTOFF_MARGIN)
    scores = process.cpdist([probes[r] for r in rows.tolist()], [members[c] for c in cols.tolist()],
                            scorer=fuzz.ratio, processor=None, score_cutoff=cutoff, dtype=np.float64, workers=1)
    hit = scores >= threshold
    return rows[hit].astype(np.int64), cols[hit].astype(np.int64), scores[hit], len(rows)


Job = tuple[list[str], list[list[str]], list[str], list[list[str]], float]
JobRunner = Callable[[list[Job]], list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]]


class Splitter:
    """Assigns characters to PARTS classes and splits strings into their parts.

    Classes are balanced by character frequency so that parts are about equally
    long. A character first seen later goes to the lightest class; that is
    consistent because no string split earlier contains it.
    """

    def __init__(self, parts: int = PARTS) -> None:
        self.weight = [0] * parts
        self.cls: dict[str, int] = {}
        self.tables: list[dict[int, None]] = [{} for _ in range(parts)]

    def learn(self, texts: Sequence[str]) -> None:
        from collections import Counter

        counts: Counter = Counter()
        for t in texts:
            counts.update(t)
        for ch, n in counts.most_common():
            if ch in self.cls:
                continue
            c = self.weight.index(min(self.weight))
            self.cls[ch] = c
            self.weight[c] += n
            for other, table in enumerate(self.tables):
                if other != c:
                    table[ord(ch)] = None  # every other part drops this character

    def split(self, texts: Sequence[str]) -> list[list[str]]:
        return [[t.translate(table) for t in texts] for table in self.tables]


def thread_runner(workers: int = 0) -> tuple[JobRunner, Callable[[], None]]:
    """(run_jobs, close) on a local thread pool; rapidfuzz releases the GIL while it scores."""
    from concurrent.futures import ThreadPoolExecutor

    n = workers or os.cpu_count() or 1
    if n == 1:
        return (lambda jobs: [verify_job(*job) for job in jobs]), (lambda: None)
    pool = ThreadPoolExecutor(n, thread_name_prefix="dedupe")

    def run(jobs: list[Job]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        if len(jobs) <= 1:
            return [verify_job(*job) for job in jobs]
        return list(pool.map(lambda job: verify_job(*job), jobs))

    return run, pool.shutdown


# ---------------------------------------------------------------- clusters


@dataclass
class _Cluster:
    """Kept members of one leader's cluster, bucketed by their distance to the leader."""

    ids: dict[int, list[int]] = field(default_factory=dict)
    r_min: int = 1 << 60
    r_max: int = -1
    len_min: int = 1 << 60
    len_max: int = -1

    def add(self, r: int, length: int, idx: int) -> None:
        self.ids.setdefault(r, []).append(idx)
        self.r_min, self.r_max = min(self.r_min, r), max(self.r_max, r)
        self.len_min, self.len_max = min(self.len_min, length), max(self.len_max, length)

    def window(self, lo: int, hi: int) -> list[int]:
        """Members whose distance to the leader lies in [lo, hi]."""
        ids: list[int] = []
        lo, hi = max(lo, self.r_min), min(hi, self.r_max)
        if hi - lo + 1 > len(self.ids):
            keys = sorted(r for r in self.ids if lo <= r <= hi)
        else:
            keys = [r for r in range(lo, hi + 1) if r in self.ids]
        for r in keys:
            ids += self.ids[r]
        return ids


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
    splitter = Splitter()
    parts: list[list[str]] = [[""] * n for _ in range(PARTS)]

    def job(probe_ids: Sequence[int], member_ids: Sequence[int]) -> Job:
        return ([texts[i] for i in probe_ids], [[p[i] for i in probe_ids] for p in parts],
                [texts[j] for j in member_ids], [[p[j] for j in member_ids] for p in parts], threshold)

    pivots: list[str] = []  # the leaders' texts
    pivot_len = np.zeros(0, dtype=np.int64)
    clusters: list[_Cluster] = []
    pairs = 0
    scored = 0
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
        splitter.learn(act_texts)
        act_parts = splitter.split(act_texts)
        for p, ap in zip(parts, act_parts):
            for i, t in zip(active, ap):
                p[i] = t

        # 2. distances to the pivots (leader prefixes); a sample far from every
        #    pivot founds a new cluster and is its leader
        A = len(active)
        D = np.zeros((A, MAX_LEADERS), dtype=np.int64)
        best = np.full(A, np.inf)
        assign = np.zeros(A, dtype=np.int64)
        if len(pivot_len):
            D[:, : len(pivot_len)] = process.cdist(pivots, act_texts, scorer=Indel.distance, processor=None,
                                                   dtype=np.int32, workers=cd_workers).T
            spread = _spread(D[:, : len(pivot_len)], act_len[:, None], pivot_len[None, :])
            assign = spread.argmin(axis=1)
            best = spread[np.arange(A), assign]
        row = 0
        while len(pivot_len) < MAX_LEADERS:
            far = np.flatnonzero(best[row:] > RHO)
            if not len(far):
                break
            row += int(far[0])  # the first sample no leader covers becomes one
            P = len(pivot_len)
            pivots.append(act_texts[row])
            pivot_len = np.append(pivot_len, act_len[row])
            clusters.append(_Cluster())
            # every row needs its distance to the new pivot: the bounds use it
            D[:, P] = process.cdist([act_texts[row]], act_texts, scorer=Indel.distance, processor=None,
                                    dtype=np.int32, workers=cd_workers)[0]
            spread = _spread(D[:, P], act_len, act_len[row])
            better = spread < best
            best[better], assign[better] = spread[better], P
            row += 1
        P = len(pivot_len)
        D = D[:, :P]
        r_self = D[np.arange(A), assign]

        # 3. which clusters can hold a match for each probe: bounds over the
        #    cluster's kept members and this block's members together
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
        probe_rows = np.flatnonzero(act >= n_fixed)
        ok = np.zeros((A, P), dtype=bool)
        if len(probe_rows):
            pl = act_len[probe_rows][:, None]
            dmx = max_indel(pl + l_max[None, :], threshold)  # a bound for every member of the cluster
            Dp = D[probe_rows]
            ok[probe_rows] = ((Dp - r_max[None, :] <= dmx) & (r_min[None, :] - Dp <= dmx)
                              & (pl - l_max[None, :] <= dmx) & (l_min[None, :] - pl <= dmx))
        jobs: list[Job] = []
        owners: list[tuple[np.ndarray, np.ndarray]] = []  # global ids of each job's probes and members
        for k in np.flatnonzero(ok.any(axis=0)):
            cl = clusters[k]
            full = D[:, k]
            rows = np.flatnonzero(ok[:, k])
            if not len(rows):
                continue
            rows = rows[np.argsort(full[rows], kind="stable")]  # narrow windows per job
            bm = np.flatnonzero(assign == k)
            for s in range(0, len(rows), JOB_PROBES):
                chunk = rows[s:s + JOB_PROBES]
                lo, hi = int(full[chunk].min()), int(full[chunk].max())
                w = int(max_indel(act_len[chunk].max() + l_max[k], threshold))
                chunk_ids = act[chunk]
                if cl.r_max >= 0:  # kept members from earlier blocks
                    m_ids = cl.window(lo - w, hi + w)
                    if m_ids:
                        jobs.append(job(chunk_ids.tolist(), m_ids))
                        owners.append((chunk_ids, np.asarray(m_ids, dtype=np.int64)))
                # this block's members of the cluster that come before some probe of the chunk
                mem = bm[(bm < chunk.max()) & (full[bm] >= lo - w) & (full[bm] <= hi + w)]
                if len(mem):
                    jobs.append(job(chunk_ids.tolist(), act[mem].tolist()))
                    owners.append((chunk_ids, act[mem]))
        pairs += sum(len(j[0]) * len(j[2]) for j in jobs)
        results = run_jobs(jobs) if jobs else []

        # 4. resolve in input order: only kept samples can cause a drop
        if results:
            scored += sum(r[3] for r in results)
            mi = np.concatenate([owners[x][0][r[0]] for x, r in enumerate(results)])
            mj = np.concatenate([owners[x][1][r[1]] for x, r in enumerate(results)])
            ms = np.concatenate([r[2] for r in results])
            keep = mj < mi
            mi, mj, ms = mi[keep], mj[keep], ms[keep]
        if results and len(mi):
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
                clusters[int(assign[row])].add(int(r_self[row]), int(act_len[row]), i)
        if progress:
            progress(end, pairs)
    return Verdicts(matched, score, exact, pairs, scored)
