"""The benchmark runner tells a benchmark that missed a bar from one that crashed; bench_store's exit."""

from __future__ import annotations

from typing import Any

import pytest

import bench.bench_store as bench_store
from bench.run import BARS_MISSED, outcome, summary


def test_missed_bars_and_failures_are_listed_apart_and_both_fail_the_run() -> None:
    lines, status = summary({"bench_a": 0, "bench_store": BARS_MISSED, "bench_b": 1, "bench_c": -1})
    assert lines == ["bars missed: bench_store", "failed: bench_b, bench_c"]
    assert status == 1
    assert summary({"bench_a": 0, "bench_b": 0}) == ([], 0)
    assert outcome(BARS_MISSED) == " (bars missed)"
    assert outcome(1) == " (failed)"  # a traceback exits 1
    assert outcome(0) == ""


@pytest.mark.parametrize(("visitors", "status"), [(100, 0), (150, BARS_MISSED)])
def test_bench_store_exits_non_zero_when_a_bar_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], visitors: int, status: int
) -> None:
    def fake_run(*_a: Any, **_k: Any) -> tuple[bench_store.RunResult, dict[str, float]]:
        r = bench_store.RunResult(visitors, 50, {"entrance": 100.0}, 10, 0, 100, 1, 1.0, 1000)
        return r, {"visitors": 100, "passers": 50, "invisible": 0, "dwell.entrance": 100.0}

    monkeypatch.setattr(bench_store, "run", fake_run)
    assert bench_store.main(["--layouts", "demo-store.toml", "--seeds", "1", "--modes", "linker"]) == status
    out = capsys.readouterr().out
    assert ("RESULT PASS" if status == 0 else "RESULT FAIL") in out


def test_bench_store_set_names_a_bad_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        bench_store.main(["--set", "presence.zone_smooth_s=soon"])
    assert e.value.code == 2
    assert "presence.zone_smooth_s" in capsys.readouterr().err
