"""Run every benchmark (bench/bench_*.py), each in its own process, and print its figures.

    python -m bench.run [--quick] [NAME ...]

Each benchmark prints lines ``name: value unit (reference ..., ratio ...)``; a reference measured
in the same run sits beside every figure because this machine is shared and noisy.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# benchmarks that run the whole daemon for a while: their own time limits (quick, full), seconds
TIMEOUTS = {"bench_daemon": (900, 7200), "bench_content": (600, 1800)}


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    mods = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if names:
        mods = [m for m in mods if any(n in m for n in names)]
    failed = []
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
        print(f"-- {m}: exit {rc}, {time.monotonic() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(m)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
