"""The exact, fast engine behind ``tenny dedupe`` (the contract is in shared/DESIGN.md).

The result is the brute-force one: walking the samples in order, a sample is
dropped iff ``fuzz.ratio`` against some earlier *kept* sample is >= threshold,
and it is reported against the best such sample (highest score, earliest on a
tie). Only the work is smaller. ``fuzz.ratio = 100 * (1 - indel / (len_a +
len_b))`` with the indel distance (a metric), so a pair can only reach the
threshold when ``indel <= max_indel(len_a + len_b)``; every step below either
proves a pair's indel distance is larger, and skips it, or passes it on:

1. **Exact copies** of a kept sample (same ``default_process`` text): a hash
   lookup, score 100.
2. **Pivots.** Samples are grouped around *leaders*: a sample farther than
   ``RHO`` from every leader becomes one. Each leader has a pivot string ``p``:
   its whole text, or for inputs up to ``SKELETON_MAX`` samples its skeleton
   (what it shares with another sample of its pattern, at most 64 characters,
   several times cheaper to score against). Every sample's indel distance to
   every pivot is computed once; by the triangle inequality
   ``indel(a, b) >= |indel(a, p) - indel(b, p)|`` for any string ``p``. Kept
   samples are indexed by (own leader, distance to its pivot), so a probe only meets,
   in each other cluster, the members in the window
   ``[indel(a, p) - max_indel, indel(a, p) + max_indel]`` (a table lookup, no
   scan), and of those only the ones that also pass the same test on the
   probe's *own* leader and the length bound ``indel >= |len_a - len_b|``.
   Generators repeat patterns, so clusters are mostly one pattern each and a
   probe meets few members of other clusters.
3. **Bag bound.** The LCS can use at most ``min(count_a(c), count_b(c))`` copies
   of a character ``c``, so ``indel(a, b) >= sum_c |count_a(c) - count_b(c)|``
   (also with characters folded into classes). With each class count written
   as a thermometer code (count k: k ones), ``sum_c min(...)`` is a dot
   product, and a probe group × a whole cluster is one float32 matrix product;
   this rules out nearly all pairs within a pattern that differ in their slot
   fillers.
4. **Verification.** The pairs left are scored by rapidfuzz itself
   (``process.cpdist`` with ``fuzz.ratio``), and the decision compares
   rapidfuzz's own float score with ``>= threshold``, exactly as the
   brute-force loop does.

Samples go through in blocks: each block is checked against the kept samples
of earlier blocks and against itself, then resolved in input order, so a
sample dropped earlier can never cause a later drop. Distances to leaders
depend on no verdict, so the next block's are scored in the background while
a block is searched.

``run_jobs`` is the only parallel part: a list of independent verification
jobs (aligned lists of probe and member texts). The local engine runs them on
a thread pool (rapidfuzz releases the GIL); the Dask engine
(pipeline/engines/dedupe_dask.py) sends the same jobs to a cluster. Both give identical
output.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from rapidfuzz import fuzz, process
from rapidfuzz.distance import Indel, LCSseq

# A sample joins the nearest leader when indel / (len_a + len_p) <= RHO
# (fuzz.ratio >= 55): samples of one generator pattern then share a leader,
# while different patterns sit ~0.55 apart. (0.4 made more leaders from
# variants of a pattern: 20% slower at 20k and 100k on the benchmark corpus.)
RHO = 0.45
# Every sample is scored against every leader, so leaders cost n * leaders full
# scores; past the cap (n / LEADER_EVERY, at most MAX_LEADERS) samples join the
# nearest leader however far (still exact, only less pruning).
MAX_LEADERS = 448
LEADER_EVERY = 67
LEADER_BATCH = 64
# Up to this many samples a leader's pivot is its *skeleton* (see skeleton()): what it
# shares with one other sample of its cluster that differs from it by more than
# PARTNER_MIN (a near-twin would keep the fillers in), cut to PIVOT_LEN characters, the
# most rapidfuzz packs into SIMD lanes: distances to it are ~5x cheaper. Its windows
# are tight while clusters are small and widen as they grow (a distance to a short
# pivot tracks the sample's length), so bigger inputs take the whole leader text.
# Measured, paired in one process: 1.34x faster at 20k, 1.30x at 50k, 0.96x at
# 100k, 0.72x at 200k; hostile corpus the same at 20k.
SKELETON_MAX = 50_000
PARTNER_SCAN = 4096  # samples searched for a partner, from the first new leader on
PARTNER_MIN = 0.2
PIVOT_LEN = 64
SKELETON_PAIRS = 1 << 22  # LCSseq.opcodes keeps a bit matrix of len_a x len_b
BLOCK = 16384
MIN_BLOCK = 2048
# Pivot distances are stored clipped to a byte: |clip(x) - clip(y)| <= |x - y|,
# so every bound stays valid, only weaker for long strings.
CLIP = 255
# Characters fold into at most this many classes for the bag bound.
CLASSES = 64
# A group whose thermometer codes would be wider than this (very long samples)
# skips the bag bound and goes straight to verification.
MAX_CODE = 1024
# A bag bound call with at most this many pairs sums min(a_c, b_c) directly: for a
# few pairs the thermometer codes cost more than the product saves.
DIRECT_PAIRS = 1 << 15
# Pairs per verification job and per candidate-expansion chunk.
JOB_PAIRS = 65536
EXPAND_PAIRS = 1 << 22
AHEAD_CHUNK = 2048  # samples per background pivot job (one core each)
SERIAL_PAIRS = 1 << 20  # pivot scoring on the main thread smaller than this: one thread while they run
THREADED_BLOCK = 32768  # blocks at least this big search on threads
# Clusters with at most this many probe x member pairs are bag-bounded BUCKET at a time.
SMALL_CLUSTER = 1 << 14
BUCKET = 32
CLUSTERS_PER_TASK = 64  # same-cluster work per search task (big blocks search on threads)
# Niceness of the background pivot threads: the search on the main thread is
# what everything waits for, so it gets a core first and they take the rest.
BACKGROUND_NICE = 10
CHUNK = 1024  # probes per window matrix: small enough to stay in cache
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
    pairs_verified: int = 0  # candidate pairs scored in full by rapidfuzz
    pairs_bounded: int = 0  # pairs the pivot windows left, each checked with the bag bound
    leaders: int = 0


# ---------------------------------------------------------------- verification jobs

Job = tuple[list[str], list[str], float]
JobResult = tuple[np.ndarray, np.ndarray]
JobRunner = Callable[[list[Job]], list[JobResult]]


def verify_job(probes: Sequence[str], members: Sequence[str], threshold: float) -> JobResult:
    """Exact scores of aligned pairs ``probes[x]`` × ``members[x]``: (x, score) where score >= threshold.

    Module-level and pure so that a Dask worker can run it as it is.
    """
    cutoff = max(0.0, threshold - _CUTOFF_MARGIN)
    scores = process.cpdist(probes, members, scorer=fuzz.ratio, processor=None, score_cutoff=cutoff,
                            dtype=np.float64, workers=1)
    hit = np.flatnonzero(scores >= threshold)
    return hit, scores[hit]


def thread_runner(workers: int = 0) -> tuple[JobRunner, Callable[[], None]]:
    """(run_jobs, close) on a local thread pool; rapidfuzz releases the GIL while it scores."""
    n = workers or os.cpu_count() or 1
    if n == 1:
        return (lambda jobs: [verify_job(*job) for job in jobs]), (lambda: None)
    pool = ThreadPoolExecutor(n, thread_name_prefix="dedupe")

    def run(jobs: list[Job]) -> list[JobResult]:
        if len(jobs) <= 1:
            return [verify_job(*job) for job in jobs]
        return list(pool.map(lambda job: verify_job(*job), jobs))

    return run, pool.shutdown


# ---------------------------------------------------------------- character classes


def _lengths(texts: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))


class _Classes:
    """Folds characters into at most CLASSES classes and counts them per string.

    A character keeps the class it first gets, so counts of different blocks
    are comparable; past CLASSES distinct characters a new one joins the class
    with the fewest characters so far. Folding only merges counts, and
    ``sum |a - b|`` over merged classes is <= the sum over characters, so the
    bag bound stays valid.
    """

    def __init__(self) -> None:
        self.table: dict[int, str] = {}
        self.weight = np.zeros(CLASSES, dtype=np.int64)

    def counts(self, texts: Sequence[str]) -> np.ndarray:
        joined = "".join(texts)
        for ch in set(joined):
            if ord(ch) not in self.table:
                used = len(self.table)
                c = used if used < CLASSES else int(self.weight.argmin())
                self.table[ord(ch)] = chr(c)
                self.weight[c] += 1
        codes = np.frombuffer(joined.translate(self.table).encode("latin-1"), dtype=np.uint8)
        lengths = _lengths(texts)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        flat = np.bincount(rows * CLASSES + codes, minlength=len(texts) * CLASSES)
        return flat.reshape(len(texts), CLASSES)  # exact; the engine's store picks the width


def _codes(counts: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Thermometer codes: class c's count k becomes k ones in a field of width[c]."""
    cols = np.repeat(np.arange(len(width)), width)
    # in the counts' own dtype: int64 steps would widen every count first (twice as slow)
    steps = (np.arange(int(width.sum())) - np.repeat(np.cumsum(width) - width, width)).astype(counts.dtype)
    return (counts[:, cols] > steps).astype(np.float32)


def bag_overlaps(counts_a: np.ndarray, counts_b: np.ndarray, batch: int = 0) -> np.ndarray | None:
    """``sum_c min(a_c, b_c)`` for every row pair, or None if the codes would be too wide.

    The bag distance, a lower bound of indel, is ``len_a + len_b - 2 * overlap``.
    Exact in float32: a sum of 0/1 products far below 2**24. With ``batch``, both
    sides are that many equal groups of rows, and only pairs within a group are
    scored (batch × rows_a × rows_b).
    """
    groups = batch or 1
    if len(counts_a) * len(counts_b) // groups <= DIRECT_PAIRS:
        a = counts_a.reshape(groups, len(counts_a) // groups, 1, counts_a.shape[1])
        b = counts_b.reshape(groups, 1, len(counts_b) // groups, counts_b.shape[1])
        overlap = np.minimum(a, b).sum(axis=-1, dtype=np.int64)
        return overlap if batch else overlap[0]
    both = np.concatenate((counts_a, counts_b))
    width = both.max(axis=0, initial=0).astype(np.int64)
    if width.sum() > MAX_CODE:
        return None
    codes = _codes(both, width)  # one call for both sides: this runs once per cluster and block
    a, b = codes[: len(counts_a)], codes[len(counts_a):]
    if not batch:
        return a @ b.T
    w = a.shape[1]  # may be 0 (empty strings): shapes are spelled out, not inferred
    return np.matmul(a.reshape(batch, len(a) // batch, w), b.reshape(batch, len(b) // batch, w).transpose(0, 2, 1))


# ---------------------------------------------------------------- member index


def _nearest(dist: np.ndarray, len_a: np.ndarray, len_p: np.ndarray, k0: int, spread: np.ndarray,
             own: np.ndarray) -> None:
    """Folds leader columns ``k0..`` into each row's nearest leader so far (``spread``: the
    smallest distance / total length, ``own``: its column; the first column wins a tie)."""
    denom = len_a.astype(np.float32)[:, None] + len_p.astype(np.float32)[None, :]
    np.maximum(denom, 1, out=denom)
    ratio = np.divide(dist, denom, out=denom, dtype=np.float32)
    best = ratio.argmin(axis=1)
    low = ratio[np.arange(len(ratio)), best]
    closer = low < spread
    spread[closer] = low[closer]
    own[closer] = best[closer] + k0


def _widen_ranges(amin: np.ndarray, amax: np.ndarray, own: np.ndarray, values: np.ndarray, cols: slice) -> None:
    """Widens each cluster's [amin, amax] (columns ``cols``) to cover its rows of ``values``."""
    if not len(own):
        return
    order = np.argsort(own, kind="stable")
    own_sorted, values = own[order], values[order]
    starts = np.flatnonzero(np.diff(own_sorted, prepend=-1))
    ks = own_sorted[starts]
    amin[ks, cols] = np.minimum(amin[ks, cols], np.minimum.reduceat(values, starts, axis=0))
    amax[ks, cols] = np.maximum(amax[ks, cols], np.maximum.reduceat(values, starts, axis=0))


class _Members:
    """Samples indexed by (own leader, clipped distance to it): a cluster's members in a
    distance window are one contiguous slice, found by two table lookups."""

    def __init__(self, ids: np.ndarray, own: np.ndarray, r: np.ndarray, lengths: np.ndarray, n_leaders: int,
                 amin: np.ndarray, amax: np.ndarray):
        # leader-major copies: a probe gathers its own leader's row, contiguous
        self.amin_t = np.ascontiguousarray(amin[:n_leaders, :n_leaders].T).astype(np.int16)
        self.amax_t = np.ascontiguousarray(amax[:n_leaders, :n_leaders].T).astype(np.int16)
        key = own[ids].astype(np.int64) * (CLIP + 1) + r[ids]
        order = np.argsort(key, kind="stable")
        self.ids = ids[order]
        self.r = r[self.ids].astype(np.int32)
        self.lengths = lengths[self.ids].astype(np.int32)
        self.n_leaders = n_leaders
        self.cum = np.concatenate(([0], np.cumsum(np.bincount(key, minlength=n_leaders * (CLIP + 1))))).astype(np.int32)
        self.len_max = np.full(n_leaders, -1, dtype=np.int64)
        if len(ids):
            np.maximum.at(self.len_max, own[ids], lengths[ids])

    def cluster(self, k: int) -> slice:
        return slice(int(self.cum[k * (CLIP + 1)]), int(self.cum[(k + 1) * (CLIP + 1)]))


# ---------------------------------------------------------------- the engine


def dedupe_processed(
    texts: Sequence[str],
    threshold: float,
    n_fixed: int = 0,
    *,
    run_jobs: JobRunner | None = None,
    workers: int = 0,
    block: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Verdicts:
    """Dedupe already-``default_process``ed texts; the first ``n_fixed`` are always kept.

    ``progress(samples_done, pairs_verified_so_far)`` is called after each block.
    ``block`` fixes the block size (tests use tiny ones); by default it adapts.
    """
    if not 0 <= threshold <= 100:
        raise ValueError(f"threshold {threshold} outside 0-100")
    close = lambda: None  # noqa: E731
    if run_jobs is None:
        run_jobs, close = thread_runner(workers)
    try:
        return _Engine(texts, float(threshold), n_fixed, run_jobs, workers, block, progress).run()
    finally:
        close()


def indel_matrix(a: Sequence[str], b: Sequence[str], workers: int) -> np.ndarray:
    """Exact indel distances of every ``a`` × ``b`` pair (int32): the pivot distances.

    When every ``b`` has at most 64 characters (skeleton pivots) they are
    rapidfuzz's queries: it packs such queries into SIMD lanes, several times
    faster than one long query at a time.
    """
    if b and max(map(len, b)) <= PIVOT_LEN:
        return np.ascontiguousarray(process.cdist(b, a, scorer=Indel.distance, processor=None, dtype=np.int32,
                                                  workers=workers).T)
    return process.cdist(a, b, scorer=Indel.distance, processor=None, dtype=np.int32, workers=workers)


def skeleton(seed: str, partner: str | None) -> str:
    """A pivot for ``seed``'s cluster: what it has in common with another sample of its pattern.

    The longest common subsequence of two samples built from one pattern with
    different slot fillers is roughly the pattern's fixed text. As a pivot it
    sits about as far from every sample of the pattern and far from other
    patterns, like the whole sample would, and it is short, so distances to it
    are several times cheaper. Any string is a valid pivot; this is only a good
    one. Without a partner (or when the pair is too big to align) it is the
    seed's prefix.
    """
    common = seed
    if partner is not None and len(seed) * len(partner) <= SKELETON_PAIRS:
        common = "".join(seed[o.src_start:o.src_end] for o in LCSseq.opcodes(seed, partner) if o.tag == "equal")
    return common[:PIVOT_LEN]


def _lower_priority() -> None:
    """Runs in each background pivot thread: on Linux a thread has its own niceness."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except (AttributeError, OSError):  # not Linux, or not allowed: only slower
        pass


class _Engine:
    def __init__(self, texts, threshold, n_fixed, run_jobs, workers, block, progress):
        self.texts, self.threshold, self.n_fixed = texts, threshold, n_fixed
        self.run_jobs, self.fixed_block, self.progress = run_jobs, block, progress
        self.cd_workers = workers or -1
        n_threads = workers or os.cpu_count() or 1
        # searches of big blocks, and the next block's pivots in the background
        self.pool = ThreadPoolExecutor(n_threads, thread_name_prefix="dedupe-search") if n_threads > 1 else None
        self.ahead_pool = ThreadPoolExecutor(n_threads, thread_name_prefix="dedupe-pivots", initializer=_lower_priority) if n_threads > 1 else None
        self.first: dict[str, int] = {}  # text -> its first index
        # prefetched text -> (its job's future, row in it, leaders it was scored against); a
        # job's rows are freed with the last entry that refers to it
        self.ahead: dict[str, tuple[Future, int, int]] = {}
        self.last_ahead: Future | None = None
        self.ahead_end = 0  # samples before this were prefetched (or are past)
        n = self.n = len(texts)
        self.matched = np.full(n, -1, dtype=np.int64)
        self.score = np.zeros(n, dtype=np.float64)
        self.exact = np.zeros(n, dtype=bool)
        self.lengths = _lengths(texts)
        longest = int(self.lengths.max()) if n else 0
        table = max_indel(np.arange(2 * longest + 2), threshold)  # by total length L
        self.table32 = table.astype(np.int32)
        self.table16 = np.minimum(table, 1 << 14).astype(np.int16)  # windows are clipped to CLIP anyway
        self.need32 = (np.arange(len(table)) - table).astype(np.float32)  # L - max_indel(L)
        self.cap = max(1, min(MAX_LEADERS, max(16, n // LEADER_EVERY)))
        # bigger blocks at scale: per-block work (index, member codes) is paid per block
        self.max_block = max(BLOCK, n // 16)
        # clipped distance of every sample to every leader, leader-major: the search reads one
        # leader's row for many members, which stays in cache where a sample-major table would not
        self.dist = np.zeros((self.cap, n), dtype=np.uint8)
        self.own = np.zeros(n, dtype=np.int64)
        self.r = np.zeros(n, dtype=np.uint8)  # clipped distance to the own leader
        # uint16 halves the memory, but 65,536 copies of one class would wrap around, and a
        # wrapped count makes the bag bound larger than indel
        self.counts = np.zeros((n, CLASSES), dtype=np.uint16 if longest < 1 << 16 else np.uint32)
        self.classes = _Classes()
        self.leaders: list[int] = []
        self.skeletons = n <= SKELETON_MAX
        self.pivots: list[str] = []  # per leader: the string distances are taken to
        self.kept = np.zeros(0, dtype=np.int64)  # kept samples of earlier blocks, in input order
        # per cluster and leader: the smallest and largest clipped distance of a kept member
        # to that leader, so a probe skips clusters whose members are all too far from its own
        self.amin = np.full((self.cap, self.cap), CLIP, dtype=np.uint8)
        self.amax = np.zeros((self.cap, self.cap), dtype=np.uint8)
        self.pairs_verified = 0
        self.pairs_bounded = 0

    # -- pivots

    def _cdist(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        # while background jobs hold the cores, more threads for a small call only compete
        # with them; a big one (new leaders' distances for a large kept set) still needs them
        busy = self.last_ahead is not None and not self.last_ahead.done() and len(a) * len(b) < SERIAL_PAIRS
        return indel_matrix(a, b, 1 if busy else self.cd_workers)

    def _pivots(self, act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances of this block's samples to every leader (new leaders included), exact int32,
        and each sample's own leader (the nearest, relative to the pair's total length).

        The rule is sequential (the first sample farther than RHO from every
        leader becomes one), but a single leader's column scores on one core
        only, so up to LEADER_BATCH far samples are sifted among themselves
        first and the new leaders' columns are computed together: the same
        leaders as one at a time. With skeleton pivots, a distance to a short
        pivot mostly tracks the sample's length, so being far from every pivot
        only nominates a sample; it founds a leader if it is also far from
        every leader's whole text.
        """
        texts, lengths = self.texts, self.lengths
        act_texts = [texts[i] for i in act.tolist()]
        act_len = lengths[act]
        A = len(act)
        full = np.zeros((A, self.cap), dtype=np.int32)
        P = len(self.leaders)
        spread = np.full(A, np.inf, dtype=np.float32)
        own = np.zeros(A, dtype=np.int64)
        if P:
            full[:, :P] = self._ahead_rows(act_texts)
            _nearest(full[:, :P], act_len, _lengths(self.pivots), 0, spread, own)
        row = 0
        while len(self.leaders) < self.cap:
            far = np.flatnonzero(spread[row:] > RHO)[:LEADER_BATCH] + row
            if not len(far):
                break
            if self.skeletons and self.leaders:  # far from every pivot; is it far from every leader's whole text?
                whole = self._cdist([act_texts[x] for x in far.tolist()], [texts[p] for p in self.leaders])
                lone = (whole / np.maximum(act_len[far][:, None] + lengths[self.leaders][None, :], 1)).min(axis=1) > RHO
                if not lone.any():
                    row = int(far[-1]) + 1
                    continue
                far = far[lone]
            among = self._cdist([act_texts[x] for x in far.tolist()], [act_texts[x] for x in far.tolist()])
            among = among / np.maximum(act_len[far][:, None] + act_len[far][None, :], 1)
            chosen: list[int] = []
            for x in range(len(far)):
                if len(self.leaders) + len(chosen) >= self.cap:
                    break
                if all(among[x, y] > RHO for y in chosen):
                    chosen.append(x)
            if not chosen:
                break
            new = far[chosen]
            k0 = len(self.leaders)
            self.leaders.extend(act[new].tolist())
            pivots = self._new_pivots(act_texts, act_len, new)
            self.pivots.extend(pivots)
            cols = self._cdist(act_texts, pivots)
            full[:, k0:k0 + len(new)] = cols
            _nearest(cols, act_len, _lengths(pivots), k0, spread, own)
            if len(self.kept):  # earlier members need them too: the probe-side bound reads them
                back = np.minimum(self._cdist([texts[i] for i in self.kept.tolist()], pivots), CLIP)
                self.dist[k0:k0 + len(new), self.kept] = back.T
                _widen_ranges(self.amin, self.amax, self.own[self.kept], back, slice(k0, k0 + len(new)))
            # a far sample of the batch that was not chosen is within RHO of a new leader,
            # so the walk goes on after the last one chosen, as it would one at a time
            row = int(far[chosen[-1]]) + 1
        return full[:, : len(self.leaders)], own

    def _new_pivots(self, act_texts: list[str], act_len: np.ndarray, new: np.ndarray) -> list[str]:
        """Pivots of new leaders (rows ``new`` of the block): their whole texts, or each one's
        skeleton with its closest partner in this block that is within RHO but not a near-twin."""
        seeds = [act_texts[x] for x in new.tolist()]
        if not self.skeletons:
            return seeds
        scan = slice(int(new[0]), int(new[0]) + PARTNER_SCAN)  # bounded work per new leader
        ratio = self._cdist(act_texts[scan], seeds) / np.maximum(act_len[scan, None] + act_len[new][None, :], 1)
        ratio[(ratio <= PARTNER_MIN) | (ratio > RHO)] = np.inf  # near-twins share the fillers too
        best = ratio.argmin(axis=0)  # the closest: the most likely to be the seed's own pattern
        return [skeleton(seed, act_texts[scan.start + b] if np.isfinite(ratio[b, j]) else None)
                for j, (seed, b) in enumerate(zip(seeds, best.tolist()))]

    def _prefetch(self, start: int, end: int) -> None:
        """Starts scoring samples ``start..end`` against the current leaders in the background.

        The coming blocks' distances to the leaders known so far are most of
        their pivot work and do not depend on any verdict, so they run (one
        core per job, at a lower priority) while this block is searched, which
        is mostly single-threaded numpy. Only a cache: a block is what it would
        be anyway, and whatever it misses (leaders founded since) is scored
        when it starts.
        """
        start = max(start, self.ahead_end)
        if self.ahead_pool is None or not self.leaders or start >= end:
            return
        self.ahead_end = end
        texts, seen, ahead = self.texts, self.first, self.ahead
        cand = list(dict.fromkeys(t for t in texts[start:end] if t not in seen and t not in ahead))
        pivots = list(self.pivots)
        for a in range(0, len(cand), AHEAD_CHUNK):
            part = cand[a:a + AHEAD_CHUNK]
            fut = self.last_ahead = self.ahead_pool.submit(indel_matrix, part, pivots, 1)
            ahead.update((t, (fut, row, len(pivots))) for row, t in enumerate(part))

    def _ahead_rows(self, act_texts: list[str]) -> np.ndarray:
        """Distances of these samples to the current pivots, from the prefetch where it has them."""
        P, pivots = len(self.pivots), self.pivots
        out = np.empty((len(act_texts), P), dtype=np.int32)
        missing: dict[int, list[int]] = {}  # first leader column a row lacks -> rows
        for x, t in enumerate(act_texts):
            hit = self.ahead.get(t)
            p0 = 0 if hit is None else hit[2]
            if hit is not None:
                out[x, :p0] = hit[0].result()[hit[1]]
            if p0 < P:  # not prefetched, or leaders founded since
                missing.setdefault(p0, []).append(x)
        for p0, rows in missing.items():
            out[rows, p0:] = self._cdist([act_texts[x] for x in rows], pivots[p0:])
        for t in act_texts:  # after the loop above: a text twice in a block reads its row twice
            self.ahead.pop(t, None)
        return out

    # -- candidates

    def _same_clusters(self, pairs: list[tuple[np.ndarray, np.ndarray]], out: list) -> None:
        """Probes × members of their own cluster, for many clusters: the bag bound densely, as
        matrix products, then the length bound, the pivot window and order on the few pairs it
        leaves. Small clusters go BUCKET at a time, padded into one batched product: a call per
        cluster costs more than its product when clusters are small."""
        pairs = [(p, m) for p, m in pairs if len(p) and len(m)]
        big = [[pm] for pm in pairs if len(pm[0]) * len(pm[1]) > SMALL_CLUSTER]
        small = sorted((pm for pm in pairs if len(pm[0]) * len(pm[1]) <= SMALL_CLUSTER),
                       key=lambda pm: (len(pm[1]), len(pm[0])))  # similar shapes: little padding
        for bucket in big + [small[b:b + BUCKET] for b in range(0, len(small), BUCKET)]:
            self._bound_bucket(bucket, out)

    def _bound_bucket(self, bucket: list[tuple[np.ndarray, np.ndarray]], out: list) -> None:
        n_p = np.array([len(p) for p, _ in bucket])
        n_m = np.array([len(m) for _, m in bucket])
        # padded with each group's first row (a real sample, so the code widths stay its own)
        pi = np.empty((len(bucket), n_p.max()), dtype=np.int64)
        mi = np.empty((len(bucket), n_m.max()), dtype=np.int64)
        for g, (p, m) in enumerate(bucket):
            pi[g], mi[g] = p[0], m[0]
            pi[g, :len(p)], mi[g, :len(m)] = p, m
        overlap = bag_overlaps(self.counts[pi.ravel()], self.counts[mi.ravel()], batch=len(bucket))
        if overlap is None and len(bucket) > 1:  # one very long sample made the codes too wide
            for pm in bucket:
                self._bound_bucket([pm], out)
            return
        if overlap is None:  # very long samples: the bag bound would cost more than it saves
            hit = np.ones((len(bucket), pi.shape[1], mi.shape[1]), dtype=bool)
        else:  # bag <= tau  <=>  2 * overlap >= L - tau(L)
            lp, lm = self.lengths[pi].astype(np.int32), self.lengths[mi].astype(np.int32)
            hit = 2 * overlap >= self.need32[lp[:, :, None] + lm[:, None, :]]
        hit &= (np.arange(pi.shape[1]) < n_p[:, None])[:, :, None]  # not padding
        hit &= (np.arange(mi.shape[1]) < n_m[:, None])[:, None, :]
        g, x, y = np.nonzero(hit)
        p, m = pi[g, x], mi[g, y]
        la, lb = self.lengths[p], self.lengths[m]
        tau = self.table32[la + lb]
        ok = (m < p) & (np.abs(la - lb) <= tau)
        ok &= np.abs(self.r[p].astype(np.int32) - self.r[m]) <= tau
        out.append((p[ok], m[ok], int(n_p @ n_m)))

    def _windows(self, probes: np.ndarray, pdist: np.ndarray, len_max: np.ndarray) -> tuple:
        """The pivot window of every probe × cluster, shared by both member sets.

        ``len_max`` is the longest member of each cluster (either set), so the
        window half-width is max_indel for the longest pair the probe can form.
        """
        K = pdist.shape[1]
        lp = self.lengths[probes].astype(np.int32)
        dp = np.minimum(pdist, CLIP).astype(np.int16)
        own = self.own[probes]
        w = self.table16[lp[:, None] + np.maximum(len_max[None, :K], 0)]
        lo = dp - w
        np.maximum(lo, 0, out=lo)
        hi = dp + w
        np.minimum(hi, CLIP, out=hi)
        base = (np.arange(K, dtype=np.int32) * (CLIP + 1))[None, :]
        da = dp[np.arange(len(probes)), own][:, None]
        return probes, lp, dp, own, da, base + lo, base + hi + 1, da + w, da - w

    def _other_clusters(self, win: tuple, mem: _Members, out: list) -> None:
        """Probes × members of every *other* cluster, through the pivot windows (no scan of the rest).

        Three tests, each a triangle inequality that no pair within the
        threshold can fail: the member's distance to its own leader must lie
        within max_indel of the probe's distance to that leader (a slice of the
        index, found by table lookups); and for the probe's own leader, first
        the cluster's whole range of member distances to it, then each
        member's own distance, must lie within max_indel of the probe's.
        """
        probes, lp, dp, own, da, at_lo, at_hi, da_hi, da_lo = win
        if not len(mem.ids) or not len(probes):
            return
        start = np.take(mem.cum, at_lo)  # np.take: several times faster than fancy indexing here
        count = np.take(mem.cum, at_hi)
        count -= start
        count *= (da_hi >= np.take(mem.amin_t, own, axis=0)) & (da_lo <= np.take(mem.amax_t, own, axis=0))
        count[np.arange(len(probes)), own] = 0  # the own cluster is done densely
        rows, ks = np.nonzero(count != 0)  # on a bool array: twice as fast
        if not len(rows):
            return
        cnt = count[rows, ks]
        starts = start[rows, ks]
        # expand in chunks of about EXPAND_PAIRS pairs
        ends = np.cumsum(cnt)
        cut = np.searchsorted(ends, np.arange(EXPAND_PAIRS, int(ends[-1]), EXPAND_PAIRS), side="right")
        for a, b in zip(np.concatenate(([0], cut)).tolist(), np.concatenate((cut, [len(cnt)])).tolist()):
            if a >= b:
                continue
            c = cnt[a:b]
            first = np.cumsum(c) - c
            pos = np.repeat(starts[a:b] - first, c) + np.arange(int(c.sum()), dtype=np.int32)
            pr = np.repeat(rows[a:b], c)
            # the tests that read the index in its own order first; the member ids (random
            # rows of the distance table) only for the pairs they leave
            la, lb = lp[pr], mem.lengths[pos]
            tau = self.table32[la + lb]
            ok = (np.abs(np.repeat(dp[rows[a:b], ks[a:b]], c) - mem.r[pos]) <= tau) & (np.abs(la - lb) <= tau)
            pos, pr, tau = pos[ok], pr[ok], tau[ok]
            m = mem.ids[pos]
            ok = (m < probes[pr]) & (np.abs(da[pr, 0] - self.dist[own[pr], m]) <= tau)
            pr, m, tau = pr[ok], m[ok], tau[ok]
            if not len(m):
                continue
            p = probes[pr]
            bag = np.abs(self.counts[p].astype(np.int32) - self.counts[m]).sum(axis=1)  # few pairs: directly
            ok = bag <= tau
            out.append((p[ok], m[ok], len(p)))

    def _run(self, tasks: list[tuple], size: int) -> None:
        """Candidate searches of a block of ``size`` samples, on the thread pool when it is big.

        numpy and BLAS release the GIL on big arrays only; a small block's many
        small calls hold it, and threads then only slow the background pivot
        scoring down (measured: 8% slower at 20k, 40% faster at 1M).
        """
        if self.pool is None or len(tasks) < 2 or size < THREADED_BLOCK:
            for fn, *args in tasks:
                fn(*args)
            return
        for _ in self.pool.map(lambda t: t[0](*t[1:]), tasks):
            pass

    def _same_tasks(self, pairs: list, found: list) -> list[tuple]:
        """Own-cluster work as search tasks, CLUSTERS_PER_TASK clusters each."""
        return [(self._same_clusters, pairs[s:s + CLUSTERS_PER_TASK], found) for s in range(0, len(pairs), CLUSTERS_PER_TASK)]

    def _groups(self, probes: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Probes by own leader: (leader, probes in input order)."""
        if not len(probes):
            return []
        order = np.argsort(self.own[probes], kind="stable")
        cuts = np.flatnonzero(np.diff(self.own[probes][order])) + 1
        return [(int(self.own[probes[g[0]]]), probes[g]) for g in np.split(order, cuts)]

    def _verify(self, found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Scores candidate pairs with rapidfuzz: (probe, member, score) for those >= threshold."""
        texts = self.texts
        self.pairs_bounded += sum(f[2] for f in found)
        mi = np.concatenate([f[0] for f in found]) if found else np.zeros(0, dtype=np.int64)
        mj = np.concatenate([f[1] for f in found]) if found else np.zeros(0, dtype=np.int64)
        self.pairs_verified += len(mi)
        jobs = [([texts[i] for i in mi[s:s + JOB_PAIRS].tolist()], [texts[j] for j in mj[s:s + JOB_PAIRS].tolist()],
                 self.threshold) for s in range(0, len(mi), JOB_PAIRS)]
        results = self.run_jobs(jobs) if jobs else []
        hit = np.concatenate([r[0] + s * JOB_PAIRS for s, r in enumerate(results)]) if results else np.zeros(0, dtype=np.int64)
        ms = np.concatenate([r[1] for r in results]) if results else np.zeros(0)
        return mi[hit], mj[hit], ms

    # -- the walk

    def run(self) -> Verdicts:
        try:
            self._walk()
        finally:  # also when a progress callback aborts: no background scoring left behind
            for pool in (self.pool, self.ahead_pool):
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
        return Verdicts(self.matched, self.score, self.exact, self.pairs_verified, self.pairs_bounded, len(self.leaders))

    def _walk(self) -> None:
        texts, n, first = self.texts, self.n, self.first
        start = 0
        while start < n:
            end = min(n, start + self._block_size(start))
            # 1. exact copies of a sample kept in an earlier block: hash lookup, no scoring
            active: list[int] = []
            for i in range(start, end):
                j = first.setdefault(texts[i], i)
                if j < start and i >= self.n_fixed and self.matched[j] < 0:
                    self.matched[i], self.score[i], self.exact[i] = j, 100.0, True
                else:
                    active.append(i)
            if active:
                self._block(np.asarray(active, dtype=np.int64))
            if self.progress:
                self.progress(end, self.pairs_verified)
            start = end

    def _block_size(self, start: int) -> int:
        """About four times as many samples as are kept so far (within bounds).

        A block meets the kept samples of earlier blocks and itself; when most
        samples are dropped (a generator stuck on a few patterns) the kept set
        stays small, and a big block would be mostly pairs within the block,
        among samples the kept ones would have dropped first.
        """
        if self.fixed_block:
            return max(1, self.fixed_block)
        size = int(min(self.max_block, max(MIN_BLOCK, 4 * len(self.kept))))
        # at most half of what is left: the last block's search has no background work to
        # overlap with, so it had better be small
        return min(size, max(MIN_BLOCK, -(-(self.n - start) // 2)))

    def _block(self, act: np.ndarray) -> None:
        texts = self.texts
        self.counts[act] = self.classes.counts([texts[i] for i in act.tolist()])
        full, own = self._pivots(act)
        P = full.shape[1]
        end = int(act[-1]) + 1
        # two big blocks ahead: the cores never run dry, and memory stays bounded (int32 rows)
        self._prefetch(end, min(self.n, end + 2 * self.max_block))
        self.own[act] = own
        clipped = np.minimum(full, CLIP).astype(np.uint8)
        self.dist[:P, act] = clipped.T
        self.r[act] = clipped[np.arange(len(act)), own]

        # 2. candidates of probes (not the fixed samples). Other clusters: one pass over the
        #    kept members of earlier blocks and this block together (a block member that is
        #    dropped later only costs a few pairs there). The own cluster is dense, so it meets
        #    the earlier members first: a probe that matches one is dropped for sure and
        #    never needs to be a member for the rest of this block.
        is_probe = act >= self.n_fixed
        probes, pdist = act[is_probe], full[is_probe]
        amin, amax = self.amin[:P, :P].copy(), self.amax[:P, :P].copy()
        _widen_ranges(amin, amax, self.own[act], clipped, slice(0, P))
        both = _Members(np.concatenate((self.kept, act)), self.own, self.r, self.lengths, P, amin, amax)
        groups = self._groups(probes)
        found: list[tuple[np.ndarray, np.ndarray, int]] = []
        own_kept = []
        for k, pk in groups:
            cluster = both.ids[both.cluster(k)]
            own_kept.append((pk, cluster[cluster < act[0]]))  # kept earlier: all before the block
        tasks = self._same_tasks(own_kept, found)
        # chunks of probes that share their own leader read the same row of the distance table
        by_own = np.argsort(self.own[probes], kind="stable")
        tasks += [(self._other_clusters, self._windows(probes[c], pdist[c], both.len_max), both, found)
                  for c in (by_own[s:s + CHUNK] for s in range(0, len(probes), CHUNK))]
        self._run(tasks, len(act))
        hits = self._verify(found)
        sure = hits[0][hits[1] < act[0]]  # matched a kept sample of an earlier block (a block member may yet be dropped)
        members = act if not len(sure) else act[~np.isin(act, sure)]
        left = dict(self._groups(members))
        found = []
        pairs = [(pk, left[k][left[k] < pk.max()]) for k, pk in groups if k in left]
        self._run(self._same_tasks(pairs, found), len(act))
        more = self._verify(found)
        mi, mj, ms = (np.concatenate((x, y)) for x, y in zip(hits, more))

        # 3. resolve in input order: only kept samples can cause a drop
        if len(mi):
            order = np.lexsort((mj, -ms, mi))  # by probe, then best score, then earliest
            mi, mj, ms = mi[order], mj[order], ms[order]
            cuts = np.flatnonzero(np.diff(mi)) + 1
            for a, b in zip(np.concatenate(([0], cuts)).tolist(), np.concatenate((cuts, [len(mi)])).tolist()):
                i = int(mi[a])
                for x in range(a, b):
                    j = int(mj[x])
                    if self.matched[j] < 0:  # kept (earlier blocks hold only kept members)
                        self.matched[i], self.score[i] = j, float(ms[x])
                        self.exact[i] = texts[i] == texts[j]
                        break
        is_kept = self.matched[act] < 0
        new = act[is_kept]
        self.kept = np.concatenate((self.kept, new))
        _widen_ranges(self.amin, self.amax, self.own[new], clipped[is_kept], slice(0, P))


# ---------------------------------------------------------------- one sample at a time


class Incremental:
    """The same verdicts as :func:`dedupe_processed`, for samples that arrive one at a time.

    ``add(text)`` answers whether the (already ``default_process``ed) sample is
    kept, that is, no earlier *kept* sample scores >= threshold against it, and
    remembers it if so. Synthesis asks this as answers arrive, to see the
    generator saturate (``synthesize.stop_when_novelty_below``) with the very
    rule dedupe applies later. Exact copies are a hash lookup; then the bag
    bound (step 3 above) against every kept sample at once, one numpy pass over
    their class counts, leaves the few kept samples a probe could match, and
    ``process.extractOne`` scores those. Still linear in the kept samples per
    call (about 1 ms at 20,000 kept), which a synthesis run can afford; the
    block engine above is the one for whole files.
    """

    def __init__(self, threshold: float):
        if not 0 <= threshold <= 100:
            raise ValueError(f"threshold {threshold} outside 0-100")
        self.threshold = float(threshold)
        self.kept: list[str] = []
        self._exact: set[str] = set()
        self._classes = _Classes()
        self._counts = np.zeros((64, CLASSES), dtype=np.int32)  # rows of kept samples; grows by doubling
        self._lengths = np.zeros(64, dtype=np.int64)

    def add(self, text: str) -> bool:
        if text in self._exact:
            return False
        counts = self._classes.counts([text])[0].astype(np.int32)
        n = len(self.kept)
        if n:
            total = self._lengths[:n] + len(text)
            # bag distance = total - 2 * overlap, a lower bound of indel: past max_indel, no match
            overlap = np.minimum(self._counts[:n], counts).sum(axis=1)
            near = np.flatnonzero(total - 2 * overlap <= max_indel(total, self.threshold))
            if len(near):
                # the margin as in verify_job: rapidfuzz's own cutoff test must not decide a boundary case
                best = process.extractOne(text, [self.kept[i] for i in near.tolist()], scorer=fuzz.ratio,
                                          processor=None, score_cutoff=max(0.0, self.threshold - _CUTOFF_MARGIN))
                if best is not None and best[1] >= self.threshold:
                    return False
        if n == len(self._lengths):
            self._counts = np.concatenate((self._counts, np.zeros_like(self._counts)))
            self._lengths = np.concatenate((self._lengths, np.zeros_like(self._lengths)))
        self._counts[n], self._lengths[n] = counts, len(text)
        self.kept.append(text)
        self._exact.add(text)
        return True
