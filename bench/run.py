"""Run every benchmark (bench/bench_*.py), each in its own process, and print its figures.

    python -m bench.run [--quick] [NAME ...]

Each benchmark prints lines ``name: value unit (reference ..., ratio ...)``; a reference measured
in the same run sits beside every figure because this machine is shared and noisy. A benchmark that
judges bars and misses one exits ``BARS_MISSED`` (3): it ran, it is listed under "bars missed"; any
other non-zero exit (a traceback exits 1, a timeout) is listed under "failed". Every benchmark runs
either way, and the runner exits non-zero when any missed a bar or failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# benchmarks that run the whole daemon or simulated store days: their own time limits (quick, full), seconds
TIMEOUTS = {"bench_daemon": (900, 7200), "bench_content": (600, 1800), "bench_store": (900, 7200)}
BARS_MISSED = 3  # exit status of a benchmark that ran to the end and missed a bar (not a crash)


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    mods = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        mods = [m for m in mods if any(n in m for n in names)]
    results: dict[str, int] = {}
    for m in mods:
        print(f"== {m}{' (quick)' if quick else ''}", flush=True)
        t0 = time.monotonic()
        cmd = [sys.executable, "-m", f"bench.{m}"] + (["--quick"] if quick else [])
        quick_s, full_s = TIMEOUTS.get(m, (300, 1800))
        try:
            rc = subprocess.run(cmd, cwd=HERE.parent, timeout=quick_s if quick else full_s).returncode
        except subprocess.TimeoutExpired:
            rc = -1
            print(f"{m}: timed out", flush=True)
        results[m] = rc
        print(f"-- {m}: exit {rc}{outcome(rc)}, {time.monotonic() - t0:.1f} s", flush=True)
    lines, status = summary(results)
    for line in lines:
        print(line)
    return status


def outcome(rc: int) -> str:
    """How an exit status reads: bars missed (it ran), failed (a traceback, a timeout), or nothing."""
    return " (bars missed)" if rc == BARS_MISSED else (" (failed)" if rc else "")


def summary(results: dict[str, int]) -> tuple[list[str], int]:
    """The closing lines for benchmark -> exit status, and the runner's own exit status."""
    missed = [m for m, rc in results.items() if rc == BARS_MISSED]
    failed = [m for m, rc in results.items() if rc not in (0, BARS_MISSED)]
    lines = []
    if missed:
        lines.append(f"bars missed: {', '.join(missed)}")
    if failed:
        lines.append(f"failed: {', '.join(failed)}")
    return lines, 1 if missed or failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
