"""The benchmark runner tells a benchmark that missed a bar from one that crashed."""

from __future__ import annotations

from bench.run import BARS_MISSED, outcome, summary


def test_missed_bars_and_failures_are_listed_apart_and_both_fail_the_run() -> None:
    lines, status = summary({"bench_a": 0, "bench_store": BARS_MISSED, "bench_b": 1, "bench_c": -1})
    assert lines == ["bars missed: bench_store", "failed: bench_b, bench_c"]
    assert status == 1
    assert summary({"bench_a": 0, "bench_b": 0}) == ([], 0)
    assert outcome(BARS_MISSED) == " (bars missed)"
    assert outcome(1) == " (failed)"  # a traceback exits 1
    assert outcome(0) == ""
