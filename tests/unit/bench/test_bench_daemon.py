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
