"""The one retry timing: exponential, capped, jittered three ways, and what each user had before."""

from __future__ import annotations

import random

import pytest

from gateway.backoff import Backoff


def test_full_jitter_is_exponential_capped_and_spread_over_the_window() -> None:
    b = Backoff(0.5, 60.0, "full", random.Random(1))
    for retry in range(1, 40):
        d = [b.delay(retry) for _ in range(50)]
        assert all(0.5 <= x <= min(60.0, 0.5 * 2**retry) for x in d)
    late = [b.delay(20) for _ in range(200)]
    assert max(late) > 30  # spread over the whole window (full jitter), not a fixed step
    assert min(late) < 30
    assert b.delay(0) == 0.5


def test_full_jitter_draws_exactly_what_the_uplink_drew_before() -> None:
    """The uplink's former backoff_delay(attempt, lo, hi, rng), draw for draw."""

    def before(attempt: int, lo: float, hi: float, rng: random.Random) -> float:
        cap = min(hi, lo * (2 ** min(attempt, 30)))
        return rng.uniform(lo, max(lo, cap))

    a, b = random.Random(7), random.Random(7)
    new = Backoff(0.5, 60.0, "full", b)
    assert [before(k, 0.5, 60.0, a) for k in range(45)] == [new.delay(k) for k in range(45)]


def test_no_jitter_is_the_supervisors_and_webhooks_doubling() -> None:
    sup = Backoff(0.01, 0.05)
    assert [sup.next_delay() for _ in range(5)] == [0.01, 0.02, 0.04, 0.05, 0.05]
    sup.reset()
    assert sup.next_delay() == 0.01
    hook = Backoff(0.2)  # no cap: the retry count bounds it
    assert [hook.next_delay() for _ in range(4)] == [0.2, 0.4, 0.8, 1.6]


def test_spread_is_within_20_percent_of_the_step() -> None:
    b = Backoff(0.2, 10.0, "spread", random.Random(3))
    for retry in range(12):
        step = min(10.0, 0.2 * 2**retry)
        d = [b.delay(retry) for _ in range(100)]
        assert all(0.8 * step <= x <= 1.2 * step for x in d)
        assert max(d) > step > min(d)


def test_bad_delays_are_refused() -> None:
    with pytest.raises(ValueError, match="first_s"):
        Backoff(-1.0)
    with pytest.raises(ValueError, match="max_s"):
        Backoff(1.0, float("nan"))
