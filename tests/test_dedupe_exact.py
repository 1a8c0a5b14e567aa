"""The dedupe engine equals the brute-force contract (shared/DESIGN.md) on any input.

The reference below compares every pair with ``fuzz.ratio`` and the plain
``>=`` a reader of the contract would write; the engine must agree on which
samples are dropped, which kept sample each matched and the score.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

import pipeline.engines.dedupe_index as engine_module
from pipeline.engines.dedupe_index import dedupe_processed, max_indel


@pytest.fixture(autouse=True, scope="module", params=["skeleton", "whole"])
def pivot_kind(request):
    """Every test runs with both kinds of pivot: skeletons (inputs up to SKELETON_MAX
    samples) and whole leader texts (bigger inputs). They change speed, never the result."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_module, "SKELETON_MAX", 10**12 if request.param == "skeleton" else -1)
        yield request.param


def reference(texts: list[str], threshold: float, n_fixed: int = 0) -> list[tuple[int, float] | None]:
    kept: list[int] = []
    out: list[tuple[int, float] | None] = []
    for i, t in enumerate(texts):
        best = None
        if i >= n_fixed:
            for j in kept:
                s = fuzz.ratio(t, texts[j])
                if s >= threshold and (best is None or s > best[1]):
                    best = (j, s)
        out.append(best)
        if best is None:
            kept.append(i)
    return out


def engine(texts: list[str], threshold: float, n_fixed: int = 0, **kw) -> list[tuple[int, float] | None]:
    v = dedupe_processed(texts, threshold, n_fixed, **kw)
    return [None if j < 0 else (int(j), float(s)) for j, s in zip(v.matched, v.score)]


def assert_same(texts, threshold, n_fixed=0, **kw):
    want = reference(texts, threshold, n_fixed)
    got = engine(texts, threshold, n_fixed, **kw)
    assert got == want


# ---------------------------------------------------------------- corpora

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "never", "ever", "again", "gym",
         "airport", "smart", "fridge", "wedding", "speech", "queue"]


@st.composite
def template_corpus(draw):
    """Patterns with slot fillers plus near-twins: the shape of generator output."""
    rng = random.Random(draw(st.integers(0, 10**9)))
    patterns = [[rng.choice(WORDS) for _ in range(rng.randint(3, 9))] for _ in range(draw(st.integers(1, 4)))]
    out: list[str] = []
    for _ in range(draw(st.integers(0, 60))):
        if out and rng.random() < 0.3:
            t = list(rng.choice(out))
            if t:
                k = rng.randrange(len(t))
                op = rng.randrange(3)
                if op == 0:
                    t[k] = rng.choice("abcxyz ")
                elif op == 1:
                    del t[k]
                else:
                    t.insert(k, rng.choice("abc"))
            out.append("".join(t))
        else:
            p = list(rng.choice(patterns))
            p[rng.randrange(len(p))] = rng.choice(WORDS)
            out.append(" ".join(p))
    return out


@st.composite
def adversarial_corpus(draw):
    """Many texts sharing 70-85% of their characters with a base: scores around the threshold."""
    rng = random.Random(draw(st.integers(0, 10**9)))
    base = "".join(rng.choice("abcdefgh ") for _ in range(draw(st.integers(10, 60))))
    out = []
    for _ in range(draw(st.integers(0, 50))):
        t = list(base)
        for _ in range(int(len(t) * rng.uniform(0.05, 0.3))):
            k = rng.randrange(len(t)) if t else 0
            op = rng.randrange(3)
            if op == 0 and t:
                t[k] = rng.choice("abcdefgh ")
            elif op == 1 and t:
                del t[k]
            else:
                t.insert(k, rng.choice("abcdefgh"))
        out.append("".join(t))
    return out


random_corpus = st.lists(st.text(alphabet="ab c", max_size=12), max_size=40)
thresholds = st.one_of(st.sampled_from([0.0, 50.0, 70.0, 80.0, 85.0, 90.0, 95.0, 100.0]),
                       st.floats(0, 100, allow_nan=False))
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(random_corpus, thresholds, st.integers(0, 5), st.sampled_from([3, 16, 4096]))
def test_random_corpus_equals_brute_force(texts, threshold, n_fixed, block):
    assume(n_fixed <= len(texts))
    assert_same(texts, threshold, n_fixed, block=block, workers=1)


@FAST
@given(template_corpus(), thresholds, st.sampled_from([5, 4096]))
def test_template_corpus_equals_brute_force(texts, threshold, block):
    texts = [default_process(t) for t in texts]
    assert_same(texts, threshold, block=block, workers=2)


@FAST
@given(adversarial_corpus(), st.sampled_from([70.0, 75.0, 80.0, 85.0, 90.0]), st.sampled_from([4, 4096]))
def test_adversarial_corpus_equals_brute_force(texts, threshold, block):
    assert_same(texts, threshold, block=block, workers=2)


def test_bench_corpora_equal_brute_force(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))  # bench/ is not a package on the path
    from bench.corpus import make_corpus

    for kind in ("realistic", "hostile"):
        texts = [default_process(t) for t in make_corpus(600, kind, seed=3)]
        for threshold in (90.0, 80.0):
            assert_same(texts, threshold, block=128)


@pytest.mark.parametrize("kind,threaded", [("realistic", False), ("hostile", False), ("realistic", True)])
def test_default_blocks_and_new_leaders_equal_brute_force(monkeypatch, kind, threaded):
    # Several adaptive blocks, leaders founded in later blocks (their distances
    # filled in for earlier kept samples, and for rows prefetched before them),
    # the probe-side cluster ranges and both member sets: all on the default
    # path, against every pair scored; once with the search on threads, as
    # blocks of a million-sample run are.
    if threaded:
        monkeypatch.setattr(engine_module, "THREADED_BLOCK", 1)
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench.bench_dedupe import brute_force  # every pair scored with cdist, then the contract in order
    from bench.corpus import make_corpus

    texts = [default_process(t) for t in make_corpus(5000, kind, seed=11)]
    v = dedupe_processed(texts, 90.0)
    matched, best = brute_force(texts, 90.0)
    assert (v.matched == matched).all()
    assert (v.score == best).all()
    assert 0 < (matched >= 0).sum() < len(texts)


def test_leader_cap_and_tight_clusters_stay_exact(monkeypatch):
    # Past MAX_LEADERS samples join a far leader; with a tiny RHO nearly every
    # sample wants its own cluster. Both only change speed, never the result.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench.corpus import make_corpus

    texts = [default_process(t) for t in make_corpus(400, "realistic", seed=5)]
    for cap, rho in ((3, 0.45), (50, 0.05), (384, 0.9)):
        monkeypatch.setattr(engine_module, "MAX_LEADERS", cap)
        monkeypatch.setattr(engine_module, "RHO", rho)
        assert_same(texts, 85.0, block=64)


# ---------------------------------------------------------------- the threshold boundary


def boundary_pairs():
    """Pairs whose fuzz.ratio lands exactly on, or one float step around, a round number."""
    for la in range(1, 21):
        for lb in range(max(1, la - 3), la + 4):
            for common in range(0, min(la, lb) + 1):
                a = "x" * common + "a" * (la - common)
                b = "x" * common + "b" * (lb - common)
                yield a, b


def test_max_indel_never_below_what_rapidfuzz_accepts():
    for a, b in boundary_pairs():
        s = fuzz.ratio(a, b)
        d = len(a) + len(b) - 2 * sum(1 for x, y in zip(a, b) if x == y == "x")
        assert d <= max_indel(len(a) + len(b), s), (a, b, s)


def test_threshold_exactly_at_the_score_drops_and_one_step_above_keeps():
    seen = 0
    for a, b in boundary_pairs():
        s = fuzz.ratio(a, b)
        if s in (0.0, 100.0):
            continue
        for t in (s, np.nextafter(s, 0), np.nextafter(s, 101)):
            t = float(t)
            if 0 <= t <= 100:
                assert engine([a, b], t, workers=1) == reference([a, b], t)
        seen += 1
    assert seen > 500


def test_scores_that_are_not_round_in_float():
    # 100 * (1 - 71/100) is 28.999999999999996 in floating point: the contract
    # uses rapidfuzz's float, so threshold 29 keeps the pair.
    a, b = "x" * 29 + "a" * 21, "x" * 29 + "b" * 21
    s = fuzz.ratio(a, b)
    assert engine([a, b], 29.0) == reference([a, b], 29.0)
    assert engine([a, b], s) == [None, (0, s)]


# ---------------------------------------------------------------- semantics


def test_a_dropped_sample_cannot_drop_a_later_one():
    # b is close to a (dropped), c is close to b but not to a: c stays.
    a = "abcdefghij" * 3
    b = a[:-3] + "xyz"
    c = b[:-6] + "uvwxyz"
    assert fuzz.ratio(a, b) >= 85 and fuzz.ratio(b, c) >= 85 and fuzz.ratio(a, c) < 85
    assert engine([a, b, c], 85) == [None, (0, fuzz.ratio(a, b)), None]


def test_best_match_wins_and_earliest_on_a_tie():
    k0, k1 = "aaaaaaaaab", "aaaaaaaccc"  # 70 apart: both kept at 80
    best, tie = "aaaaaaabcc", "aaaaaaaac"
    assert fuzz.ratio(k0, k1) == 70.0
    assert (fuzz.ratio(best, k0), fuzz.ratio(best, k1)) == (80.0, 90.0)
    assert fuzz.ratio(tie, k0) == fuzz.ratio(tie, k1) > 80
    assert engine([k0, k1, best, tie], 80) == [None, None, (1, 90.0), (0, fuzz.ratio(tie, k0))]
    # an exact copy of a dropped sample matches the kept sample its original matched
    assert engine(["aaaaaaaaab", "aaaaaaaaac", "aaaaaaaaaa", "aaaaaaaaaa"], 90) == [None, (0, 90.0), (0, 90.0), (0, 90.0)]


def test_fixed_samples_are_never_dropped_or_compared_among_themselves():
    texts = ["same text", "same text", "same text!", "other"]
    assert engine(texts, 90, n_fixed=2) == [None, None, (0, fuzz.ratio("same text!", "same text")), None]


def test_exact_copies_and_empty_strings():
    texts = ["", "", "a", "", "a", "b"]
    assert_same(texts, 90)
    assert_same(texts, 0)
    v = dedupe_processed(texts, 90)
    assert v.exact.tolist() == [False, True, False, True, True, False]


@pytest.mark.parametrize("threshold", [-0.1, 100.5, float("nan")])
def test_threshold_outside_range_is_refused(threshold):
    with pytest.raises(ValueError):
        dedupe_processed(["a"], threshold)


def test_long_samples_and_other_scripts():
    rng = random.Random(1)
    big = "".join(rng.choice("абвгдеёжз 漢字かな😀") for _ in range(100_000))
    texts = [default_process(t) for t in (big, big[:-50] + "x" * 50, "Привет мир", "привет, мир!", "漢字かな", "😀😀", "🎉")]
    assert_same(texts, 90)


def test_more_than_65535_copies_of_a_character_still_match():
    # Character counts are 16-bit where they fit; a longer run must not wrap around and
    # make the bag bound rule out a pair that scores 99.
    texts = ["a" * 70_000, "a" * 69_000, "b" + "a" * 69_500]
    assert_same(texts, 90)
    assert (dedupe_processed(texts, 90).matched == [-1, 0, 0]).all()


@pytest.mark.parametrize("direct_pairs", [0, 1 << 20], ids=["thermometer-product", "direct-sum"])
def test_bag_bound_never_exceeds_indel_even_with_folded_classes(monkeypatch, direct_pairs):
    # More distinct characters than CLASSES fold together; the bound must stay below indel
    # for every pair, or the engine would skip a pair that can match. Both ways of summing
    # the overlaps (small calls directly, big ones as a matrix product) are checked.
    from rapidfuzz.distance import Indel

    from pipeline.engines.dedupe_index import CLASSES, _Classes, bag_overlaps

    monkeypatch.setattr(engine_module, "DIRECT_PAIRS", direct_pairs)

    rng = random.Random(7)
    alphabet = [chr(c) for c in range(0x400, 0x400 + 3 * CLASSES)]
    texts = ["".join(rng.choice(alphabet[: rng.randint(2, len(alphabet))]) for _ in range(rng.randint(0, 120)))
             for _ in range(150)]
    texts += [t[: len(t) // 2] + "x" + t[len(t) // 2:] for t in texts[:50]]  # near pairs too
    counts = _Classes().counts(texts)
    overlap = bag_overlaps(counts, counts)
    lengths = np.array([len(t) for t in texts])
    bag = lengths[:, None] + lengths[None, :] - 2 * overlap
    indel = np.array([[Indel.distance(a, b) for b in texts] for a in texts])
    assert (bag <= indel).all()
    assert (bag[np.arange(150, 200), np.arange(50)] == 1).all()  # one inserted character: bound is tight


def test_batched_bag_overlaps_equal_one_group_at_a_time():
    # Small clusters are bounded together in one batched product; each group's block must
    # be exactly what the group alone gives.
    from pipeline.engines.dedupe_index import _Classes, bag_overlaps

    rng = random.Random(3)
    texts = ["".join(rng.choice("abcdefgh ij") for _ in range(rng.randint(0, 60))) for _ in range(3 * (8 + 5))]
    counts = _Classes().counts(texts)
    probes = np.arange(24).reshape(3, 8)
    members = np.arange(24, 39).reshape(3, 5)
    together = bag_overlaps(counts[probes.ravel()], counts[members.ravel()], batch=3)
    assert together.shape == (3, 8, 5)
    for g in range(3):
        assert (together[g] == bag_overlaps(counts[probes[g]], counts[members[g]])).all()


def test_pivot_skeleton_is_short_and_common_to_seed_and_partner():
    # A leader's skeleton pivot is what it shares with another sample of its pattern: a
    # subsequence of both, at most PIVOT_LEN long (rapidfuzz's SIMD path), and the seed's
    # own prefix when it has no partner or the pair is too big to align.
    from rapidfuzz.distance import LCSseq

    from pipeline.engines.dedupe_index import PIVOT_LEN, skeleton

    seed = "the old lighthouse keeper told a joke about the sea and nobody laughed at all that night"
    partner = "the young baker told a joke about the bread and nobody laughed at all that morning"
    pivot = skeleton(seed, partner)
    assert 0 < len(pivot) <= PIVOT_LEN
    for text in (seed, partner):
        assert LCSseq.similarity(pivot, text) == len(pivot)
    assert "told a joke about the" in pivot
    assert skeleton(seed, None) == seed[:PIVOT_LEN]
    huge = "ab" * 50_000
    assert skeleton(huge, huge[1:]) == huge[:PIVOT_LEN]


def test_inputs_past_skeleton_max_take_whole_leader_texts(monkeypatch):
    # Which pivots an input gets follows its size (speed only): check both sides of the
    # line, through the leaders' pivots themselves.
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))
    from bench.corpus import make_corpus

    texts = [default_process(t) for t in make_corpus(600, "realistic", 3)]
    for limit, whole in ((len(texts), False), (len(texts) - 1, True)):
        monkeypatch.setattr(engine_module, "SKELETON_MAX", limit)
        eng = engine_module._Engine(texts, 90.0, 0, engine_module.thread_runner(1)[0], 1, None, None)
        eng.run()
        assert eng.pivots and len(eng.pivots) == len(eng.leaders)
        assert (eng.pivots == [texts[p] for p in eng.leaders]) is whole
        if not whole:
            assert max(map(len, eng.pivots)) <= engine_module.PIVOT_LEN
