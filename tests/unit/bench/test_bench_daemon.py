"""bench_daemon runs the daemon with the shipped unit's environment (what a box runs), or without."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_daemon import TUNABLES, UNIT, env, unit_environment


def test_the_unit_environment_is_read_from_the_shipped_unit(tmp_path: Path) -> None:
    unit = tmp_path / "x.service"
    unit.write_text("[Service]\nEnvironment=A=1 B=two\n# Environment=C=3\nEnvironment=MALLOC_ARENA_MAX=2\n")
    assert unit_environment(unit) == {"A": "1", "B": "two", "MALLOC_ARENA_MAX": "2"}
    shipped = unit_environment(UNIT)
    assert shipped["MALLOC_ARENA_MAX"] == "2"
    assert shipped["OPENBLAS_NUM_THREADS"] == "1"


def test_the_daemon_gets_the_units_tunables_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "7")  # the caller's own setting never leaks into either mode
    unit = env("unit")
    assert {k: v for k, v in unit.items() if k.startswith(TUNABLES)} == {
        k: v for k, v in unit_environment().items() if k.startswith(TUNABLES)
    }
    assert not [k for k in env("default") if k.startswith(TUNABLES)]
    assert env()["MALLOC_ARENA_MAX"] == "7"  # other children (simulator, probes): untouched


def test_daemon_set_goes_on_top_of_the_units_environment_in_the_daemon_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import bench_daemon

    monkeypatch.setattr(bench_daemon, "DAEMON_SET", {"MALLOC_ARENA_MAX": "1", "MALLOC_TOP_PAD_": "0"})
    assert env("unit")["MALLOC_ARENA_MAX"] == "1" and env("unit")["MALLOC_TOP_PAD_"] == "0"
    assert env("default")["MALLOC_ARENA_MAX"] == "1"
    assert "MALLOC_TOP_PAD_" not in env()  # the simulator and the probes: not the daemon's settings


def _day_state(layout: str, visitors: int) -> dict[str, float]:
    import json
    import subprocess
    import sys

    from bench.bench_daemon import REPO

    cmd = [sys.executable, "-m", "bench.bench_daemon", "--day-state-child", layout, str(visitors)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env("unit"), cwd=REPO, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_day_state_packed_gives_the_rotation_back() -> None:
    """The day's subjects held packed go back to the system at the rotation; as dicts (the layout
    before) they kept the arenas they were scattered through (issue 22)."""
    packed, dicts = _day_state("packed", 20_000), _day_state("dicts", 20_000)
    assert dicts["night_arenas"] - dicts["start_arenas"] >= 4  # the reference keeps its arenas
    assert packed["night_arenas"] - packed["start_arenas"] <= 2
    assert packed["night_mb"] - packed["start_mb"] < dicts["night_mb"] - dicts["start_mb"] - 3.0


def test_stack_sampler_finds_the_busy_function(tmp_path: Path) -> None:
    import threading
    import time

    from bench.bench_daemon import StackSampler

    def busy_loop_for_the_sampler() -> None:
        end = time.thread_time() + 0.3
        while time.thread_time() < end:
            sum(range(1000))

    s = StackSampler(tmp_path / "cpu.txt", 0.002, 0.0)
    t = threading.Thread(target=busy_loop_for_the_sampler, name="busy")
    t.start()
    t.join(30)
    s.stop()
    text = (tmp_path / "cpu.txt").read_text()
    assert "busy_loop_for_the_sampler" in text
    assert "'busy'" in text.splitlines()[0]


def test_stack_sampler_profiles_with_a_short_switch_interval_and_gives_it_back(tmp_path: Path) -> None:
    # a sample lands where a busy thread lets the GIL go and is charged with the CPU since the
    # previous one: Python's 5 ms switch interval charged the tail of every pipeline job to the
    # socket write that hands its result to the loop (a "handoff cost" that was not there)
    import sys

    from bench.bench_daemon import StackSampler

    before = sys.getswitchinterval()
    s = StackSampler(tmp_path / "cpu.txt", 0.002, 0.0, 0.0005)
    try:
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        s.stop()
    assert sys.getswitchinterval() == pytest.approx(before)
    assert "switch interval 0.5 ms" in (tmp_path / "cpu.txt").read_text().splitlines()[0]


def test_stack_sampler_switch_interval_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from bench.bench_daemon import StackSampler

    before = sys.getswitchinterval()
    monkeypatch.setenv("BENCH_CPU_PROFILE", str(tmp_path / "cpu.txt"))
    monkeypatch.setenv("BENCH_CPU_SWITCH_MS", "0")  # 0: Python's own interval, untouched
    s = StackSampler.from_env()
    assert s is not None
    assert sys.getswitchinterval() == before
    s.stop()
    monkeypatch.delenv("BENCH_CPU_SWITCH_MS")
    s = StackSampler.from_env()
    assert s is not None
    assert sys.getswitchinterval() == pytest.approx(0.0005)  # the default while profiling
    s.stop()
    assert sys.getswitchinterval() == before
