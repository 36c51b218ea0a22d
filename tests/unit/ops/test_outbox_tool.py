"""`gateway outbox stats` reads an outbox without writing: beside a running outbox, and on a full
disk, where it must not take the reserve file that is the daemon's room to recover."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from gateway.models import PositionFix, ZoneEntered
from gateway.ops.outbox_tool import read_stats
from gateway.uplink.outbox import Outbox
from tests.conftest import REPO
from tests.smallfs import MIB, fill, small_filesystem


def listing(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in d.iterdir()}


def stats_cli(db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "outbox", "stats", str(db)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


async def filled(path: Path) -> Outbox:
    ob = await Outbox.open(path, "gw-t")
    await ob.append([ZoneEntered(ts=1.0 + i, store_id="s", subject="p", zone="z") for i in range(30)])
    await ob.append([PositionFix(ts=50.0 + i, store_id="s", subject="p", x=1, y=1, sigma_m=1) for i in range(20)])
    await ob.ack([1, 2, 3])
    return ob


async def test_stats_beside_a_running_outbox_change_nothing(tmp_path: Path) -> None:
    db = tmp_path / "outbox.sqlite3"
    ob = await filled(db)
    try:
        before = listing(tmp_path)
        st = read_stats(db)
        assert (st["gateway_id"], st["backlog"], st["last_seq"]) == ("gw-t", 47, 50)
        assert st["backlog_by_type"] == {"fix": 20, "zone.entered": 27}
        assert st["oldest_ts"] == 4.0 and st["reserve_bytes"] == ob.stats().reserve_bytes > 0
        assert listing(tmp_path) == before
        await ob.append([ZoneEntered(ts=99.0, store_id="s", subject="p", zone="z")])  # the owner is not blocked
    finally:
        await ob.close()


async def test_stats_on_a_full_disk_leave_the_reserve_alone(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 2 * MIB) as d:
        db = d / "outbox.sqlite3"
        ob = await filled(db)
        await ob.close()
        reserve = db.with_name("outbox.sqlite3.reserve")
        size = reserve.stat().st_size
        fill(d / "other-process.bin")
        out = await asyncio.to_thread(stats_cli, db)
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert (st["backlog"], st["last_seq"], st["fs_free_bytes"]) == (47, 50, 0)
        assert reserve.stat().st_size == size == st["reserve_bytes"]
        assert sorted(p.name for p in d.iterdir()) == ["other-process.bin", "outbox.sqlite3", "outbox.sqlite3.reserve"]
