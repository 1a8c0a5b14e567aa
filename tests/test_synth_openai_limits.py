"""Pacing, backoff and budget arithmetic (pure functions: no server, no clock)."""

from __future__ import annotations

import random

import pytest

from pipeline.core.params import validate
from pipeline.engines.synthesis.openai_client.cost import Budget, price_for
from pipeline.engines.synthesis.openai_client.limits import Pacer, backoff, retry_after


def test_pacer_allows_one_second_of_burst_then_spaces_requests():
    pacer = Pacer(per_minute=600)  # 10 a second
    waits = [pacer.delay_for(1, now=100.0) for _ in range(15)]
    assert waits[:11] == [0.0] * 11  # one second of burst (10) plus the first slot
    assert waits[11:] == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_pacer_tokens_and_credit():
    pacer = Pacer(per_minute=60_000)  # 1000 tokens a second
    assert pacer.delay_for(3000, now=0.0) == 0.0
    assert pacer.delay_for(500, now=0.0) == pytest.approx(2.0)  # 3 s of tokens booked, 1 s burst
    pacer.credit(2000)  # the first request used 1000 tokens, not 3000
    assert pacer.delay_for(1, now=0.0) == pytest.approx(0.5)


def test_unlimited_pacer_never_waits():
    assert Pacer(None).delay_for(10**9, now=0.0) == 0.0


def test_backoff_grows_is_capped_and_jittered():
    rng = random.Random(0)
    delays = [backoff(a, 0.5, 8.0, None, rng) for a in range(8)]
    for attempt, d in enumerate(delays):
        full = min(8.0, 0.5 * 2 ** attempt)
        assert full / 2 <= d <= full
    assert len({round(d, 6) for d in delays[5:]}) == 3  # capped, yet not all equal: jitter


def test_retry_after_wins_when_longer():
    rng = random.Random(0)
    assert 5.0 <= backoff(0, 0.5, 60, 5.0, rng) <= 5.5
    assert retry_after({"retry-after": "2"}) == 2.0
    assert retry_after({"retry-after-ms": "250", "retry-after": "1"}) == 0.25
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) is None
    assert retry_after({}) is None


def test_price_lookup_by_longest_prefix():
    cfg = validate({"synthesize": {"model": "gpt-4o-mini-2024-07-18"}}).synthesize
    assert price_for(cfg).input_per_mtok == 0.15
    assert price_for(validate({"synthesize": {"model": "llama3"}}).synthesize) is None


def test_budget_reserves_worst_case_and_settles_real_cost():
    cfg = validate({"synthesize": {"model": "gpt-4o", "max_tokens": 1000, "max_cost_usd": 0.03}}).synthesize
    budget = Budget(cfg)
    worst = budget.worst_case(1000)  # 1000 in at $2.5/M + 1000 out at $10/M
    assert worst == pytest.approx(0.0125)
    first, second = budget.reserve(1000), budget.reserve(1000)
    assert first and second and budget.reserve(1000) is None and budget.stopped_by == "max_cost_usd"
    budget.settle(first, 0.002)
    assert budget.reserve(1000) is not None  # the real cost left room
    assert budget.spent + budget.reserved <= 0.03


def test_max_requests_counts_requests():
    budget = Budget(validate({"synthesize": {"max_requests": 2}}).synthesize)
    assert budget.reserve(10) is not None and budget.reserve(10) is not None
    assert budget.reserve(10) is None and budget.stopped_by == "max_requests"
