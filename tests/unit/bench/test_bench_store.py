"""bench_store: its exit status when a bar fails, --set, and the confusion table's truth labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import bench.bench_store as bench_store
from bench.run import BARS_MISSED


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


class _Walker:
    """A person walking in from the pavement (y < 0), 10 s in the store, and out again."""

    t = np.array([0.0, 5.0, 15.0, 20.0])
    x = np.array([5.0, 5.0, 5.0, 5.0])
    y = np.array([-2.0, 1.0, 1.0, -2.0])

    def position(self, ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(ts, self.t, self.x), np.interp(ts, self.t, self.y)


def test_truth_splits_the_pavement_into_before_and_after_the_visit() -> None:
    def zones(xy: np.ndarray) -> list[str | None]:
        return ["pavement" if y < 0 else "shop" for y in xy[:, 1]]

    ts = np.array([-1.0, 1.0, 10.0, 19.0, 25.0])
    assert bench_store._truth_zones(zones, _Walker(), ts, frozenset({"pavement"})) == [
        "gone",
        "pavement<in",
        "shop",
        "pavement>out",
        "gone",
    ]
    assert bench_store._truth_zones(zones, _Walker(), ts) == ["gone", "pavement", "shop", "pavement", "gone"]


def test_leaving_trace_dates_fixes_from_the_last_crossing_and_measures_depth() -> None:
    """The walker crosses the glass (y = 0) on the way out at t = 15 + 5/3 s; fixes that stay at
    y = 0.5 (in the door) while the person is on the pavement read as 0.5 m short of it."""

    def zones(xy: np.ndarray) -> list[str | None]:
        return ["pavement" if y < 0 else "door" for y in xy[:, 1]]

    pavement = [np.array([[0.0, -4.0], [10.0, -4.0], [10.0, 0.0], [0.0, 0.0]])]
    ts = np.arange(10.0, 20.0, 1.0)
    tz = bench_store._truth_zones(zones, _Walker(), ts, frozenset({"pavement"}))
    fixes = [("door", 5.0, 0.5)] * len(ts)
    rows = bench_store._leaving_trace(
        zones, _Walker(), ts, tz, fixes, frozenset({"pavement"}), {"door"}, {"door"}, pavement
    )
    crossing = 15.0 + 5.0 / 3.0
    assert [r[0] for r in rows] == [int(np.floor(t - crossing)) for t in ts if crossing - 2 <= t < crossing + 13]
    by_k = {r[0]: r for r in rows}
    assert by_k[2][1] == pytest.approx(1.4)  # t = 19 s: y = 1 - 3 * 4 / 5 = -1.4, 1.4 m onto the pavement
    assert all(r[2] == pytest.approx(-0.5) and r[3] for r in rows)
    # no crossing out (the person never left): nothing
    assert (
        bench_store._leaving_trace(
            zones, _Walker(), ts[:3], tz[:3], fixes[:3], frozenset({"pavement"}), {"door"}, {"door"}, pavement
        )
        == []
    )
