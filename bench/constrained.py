"""Store-like CPU conditions for a benchmark: beside a busy sibling, or inside a CPU quota.

The store boxes (``hardware/boards/``: Raspberry Pi 4/5 class, CM4) are slower than the x86 cores
benchmarks run on, and the gateway shares them with the store-local broker and whatever else runs
there. Two stand-ins, each printed beside the unconstrained figure of the same run:

* ``sibling``: a busy sibling process (a pure-Python spin loop) runs beside the process for the
  whole measurement, so one more runnable process competes for the machine's CPUs and the gateway
  must win a CPU back at every wake-up. ``pin=True`` pins the process (and every process it starts
  later: broker, receivers) to one CPU together with the sibling: about half of that core at most.
* ``quota``: the process moves into a cgroup limited to ``share`` of one core (default 25 %) with a
  short period (default 10 ms: 2.5 ms of CPU every 10 ms), so a burst of work is throttled for at
  most 7.5 ms at a time rather than for most of a 100 ms default period. cgroup v1 (the ``cpu``
  controller's ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) or v2 (``cpu.max``), whichever has the
  cpu controller; children started afterwards are in the cgroup too, unless taken out with
  ``Condition.release(pid)`` (a process standing for another device, like a screen).

``free`` is the machine as it is. Entering a condition needs root for ``quota`` (cgroup files);
``ConditionError`` says in one line what is missing. Every condition ends with the process (and any
remaining child) back in its original cgroup / affinity, the cgroup removed and the sibling stopped.

As a library::

    with condition("quota") as cond:      # this process (and its later children) constrained
        ...measure...
    print(cond.describe())                # "25 % of one core (cgroup v1, 2.5 ms / 10 ms), throttled ..."

As a command (runs COMMAND under the condition, prints the cgroup's throttling at the end)::

    python -m bench.constrained quota [--share 0.25] [--period-ms 10] -- COMMAND ...
    python -m bench.constrained sibling [--pin] -- COMMAND ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

Kind = Literal["free", "sibling", "quota"]
KINDS: tuple[Kind, ...] = ("free", "sibling", "quota")

SPIN = "while True:\n    pass\n"


class ConditionError(RuntimeError):
    """A condition cannot be set up here (no cgroup cpu controller, not root ...): one line why."""


# -- cgroups ------------------------------------------------------------------------------------------


@dataclass
class CpuCgroup:
    """Where a child cgroup with a CPU quota can be made: the cpu controller's mount and our place in it."""

    version: Literal[1, 2]
    parent: Path  # the cgroup this process is in (the new one is made under it)

    @staticmethod
    def find() -> CpuCgroup:
        """The cgroup (v1 ``cpu`` controller, else v2 with ``cpu`` available) this process is in."""
        mounts = Path("/proc/self/mounts").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
        for line in mounts:
            parts = line.split()
            if len(parts) >= 4 and parts[2] == "cgroup" and "cpu" in parts[3].split(","):
                for entry in own:  # "1:cpu:/path" (the controller list may be "cpu,cpuacct")
                    _, ctrls, path = entry.split(":", 2)
                    if "cpu" in ctrls.split(","):
                        return CpuCgroup(1, Path(parts[1]) / path.lstrip("/"))
        for line in mounts:
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "cgroup2":
                path = next((e.split(":", 2)[2] for e in own if e.startswith("0::")), "/")
                parent = Path(parts[1]) / path.lstrip("/")
                ctrls = (
                    (parent / "cgroup.controllers").read_text().split()
                    if (parent / "cgroup.controllers").exists()
                    else []
                )
                if "cpu" in ctrls:
                    return CpuCgroup(2, parent)
        raise ConditionError("no cgroup with the cpu controller is mounted (v1 'cpu' or v2 with 'cpu' available)")

    def make(self, name: str, share: float, period_us: int) -> Path:
        """A child cgroup limited to ``share`` of one core per ``period_us``; its directory."""
        quota_us = max(1000, round(share * period_us))  # the kernel's minimum quota is 1 ms
        path = self.parent / name
        try:
            path.mkdir(exist_ok=True)
            if self.version == 1:
                (path / "cpu.cfs_period_us").write_text(str(period_us))
                (path / "cpu.cfs_quota_us").write_text(str(quota_us))
            else:
                with contextlib.suppress(OSError):  # already enabled, or not allowed here (cpu.max says)
                    (self.parent / "cgroup.subtree_control").write_text("+cpu")
                (path / "cpu.max").write_text(f"{quota_us} {period_us}")
        except OSError as e:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise ConditionError(f"cannot make a CPU-quota cgroup under {self.parent}: {e.strerror or e}") from e
        return path

    @staticmethod
    def enter(path: Path, pid: int) -> None:
        (path / "cgroup.procs").write_text(str(pid))

    def remove(self, path: Path) -> None:
        """Move whatever is still inside back to the parent, then remove the cgroup."""
        for _ in range(50):  # bounded: processes exiting while we move them
            try:
                pids = [p for p in (path / "cgroup.procs").read_text().split() if p]
            except OSError:
                return
            if not pids:
                break
            for p in pids:
                with contextlib.suppress(OSError):
                    (self.parent / "cgroup.procs").write_text(p)
        for _ in range(50):
            try:
                path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)

    @staticmethod
    def throttling(path: Path) -> dict[str, float]:
        """``periods``, ``throttled`` (periods) and ``throttled_s`` from ``cpu.stat`` (v1 and v2 names)."""
        out: dict[str, float] = {}
        with contextlib.suppress(OSError):
            for line in (path / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "nr_periods":
                    out["periods"] = float(v)
                elif k == "nr_throttled":
                    out["throttled"] = float(v)
                elif k == "throttled_time":  # v1: ns
                    out["throttled_s"] = float(v) / 1e9
                elif k == "throttled_usec":  # v2
                    out["throttled_s"] = float(v) / 1e6
        return out


# -- conditions ---------------------------------------------------------------------------------------


@dataclass
class Condition:
    kind: Kind
    share: float = 0.25
    period_us: int = 10_000
    cpu: int | None = None  # sibling, pinned: the CPU shared with the busy process
    cgroup_version: int | None = None
    stats: dict[str, float] = field(default_factory=dict)  # quota: throttling over the condition
    _release: Callable[[int], None] | None = field(default=None, repr=False)

    def release(self, pid: int) -> None:
        """Take ``pid``, a process started inside the block, out of the condition again: back to the
        parent cgroup (quota) or to the CPUs it had (pinned sibling). For a process that stands for
        another device than the store's box (the screen an activation goes to), not for the box."""
        if self._release is not None:
            self._release(pid)

    def describe(self) -> str:
        if self.kind == "free":
            return "unconstrained"
        if self.kind == "sibling":
            where = f"pinned to CPU {self.cpu} with it" if self.cpu is not None else f"{os.cpu_count()} CPUs shared"
            return f"beside a busy sibling process (pure-Python spin loop; {where})"
        q = self.share * self.period_us / 1000
        per = self.period_us / 1000
        s = f"{self.share * 100:.0f} % of one core (cgroup v{self.cgroup_version}, {q:g} ms per {per:g} ms)"
        if self.stats.get("periods"):
            s += (
                f", throttled in {self.stats.get('throttled', 0) / self.stats['periods'] * 100:.0f} % of "
                f"{self.stats['periods']:.0f} periods"
            )
        return s


def start_sibling(cpu: int | None = None) -> subprocess.Popen[bytes]:
    """A process that keeps a CPU busy (pure-Python spin), until terminated; pinned to ``cpu`` if given."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL)
    if cpu is not None:
        os.sched_setaffinity(proc.pid, {cpu})
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def condition(
    kind: Kind, *, share: float = 0.25, period_ms: float = 10.0, pin: bool = False, pid: int | None = None
) -> Iterator[Condition]:
    """Constrain this process (or ``pid``), and every process it starts inside the block."""
    if kind not in KINDS:
        raise ConditionError(f"condition {kind!r}: must be one of {', '.join(KINDS)}")
    if not 0.01 <= share <= 64:
        raise ConditionError(f"--share {share}: must be between 0.01 and 64 (cores)")
    if not 1.0 <= period_ms <= 1000:
        raise ConditionError(f"--period-ms {period_ms}: must be between 1 and 1000")
    target = pid or os.getpid()
    cond = Condition(kind, share=share, period_us=round(period_ms * 1000))
    if kind == "free":
        yield cond
        return
    if kind == "sibling":
        before = os.sched_getaffinity(target)
        cond.cpu = max(before) if pin else None
        sibling = start_sibling(cond.cpu)
        if cond.cpu is not None:
            os.sched_setaffinity(target, {cond.cpu})
            cond._release = lambda p: os.sched_setaffinity(p, before)
        try:
            yield cond
        finally:
            stop_process(sibling)
            os.sched_setaffinity(target, before)
        return
    cg = CpuCgroup.find()
    cond.cgroup_version = cg.version
    path = cg.make(f"bench-quota-{target}", share, cond.period_us)
    try:
        try:
            cg.enter(path, target)
        except OSError as e:
            raise ConditionError(f"cannot move pid {target} into {path}: {e.strerror or e}") from e

        def release(p: int) -> None:
            (cg.parent / "cgroup.procs").write_text(str(p))

        cond._release = release
        yield cond
    finally:
        cond.stats = cg.throttling(path)
        with contextlib.suppress(OSError):
            (cg.parent / "cgroup.procs").write_text(str(target))
        cg.remove(path)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.constrained", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--share", type=float, default=0.25, help="quota: cores allowed (default 0.25)")
    p.add_argument("--period-ms", type=float, default=10.0, help="quota: CFS period (default 10 ms)")
    p.add_argument("--pin", action="store_true", help="sibling: pin the command and the sibling to one CPU")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        print("python -m bench.constrained: no command given (after --)", file=sys.stderr)
        return 2
    try:
        with condition(args.kind, share=args.share, period_ms=args.period_ms, pin=args.pin) as cond:
            rc = subprocess.run(cmd).returncode
    except ConditionError as e:
        print(f"python -m bench.constrained: {e}", file=sys.stderr)
        return 2
    print(f"condition: {cond.describe()}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
