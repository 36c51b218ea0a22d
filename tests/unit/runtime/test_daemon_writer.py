"""The daemon's outbox writer when the disk refuses appends: events wait in RAM (bounded, lowest
priority dropped first and counted), the writer retries, nothing stops; and the accounting of
every event the daemon produced adds up (docs/storage.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.config import load_settings
from gateway.models import ActivationReport, EventBase, PositionFix, ZoneEntered
from gateway.runtime.daemon import Daemon, PendingEvents, load_store_layout
from gateway.uplink.outbox import Outbox
from tests.smallfs import MIB, fill, small_filesystem


def fix(i: int) -> PositionFix:
    return PositionFix(ts=1000.0 + i, store_id="s", subject="p", x=1.0, y=1.0, sigma_m=1.0)


def zone(i: int) -> ZoneEntered:
    return ZoneEntered(ts=1000.0 + i, store_id="s", subject="p", zone="z")


def act(i: int) -> ActivationReport:
    return ActivationReport(
        ts=1000.0 + i, store_id="s", campaign_id="c", content_id="k", actor_id="a", subject="p", result="shown"
    )


def test_pending_events_drop_lowest_priority_oldest_first_and_count() -> None:
    p = PendingEvents()
    p.extend([fix(0), zone(1), fix(2), act(3), fix(4), zone(5)])
    p.append(fix(6))
    assert p.added == 7
    assert p.drop_to(3) == {"fix": 4}
    assert [e.ts for e in p] == [1001.0, 1003.0, 1005.0]  # order kept
    assert p.drop_to(1) == {"presence": 2}
    assert p.dropped == {"fix": 4, "presence": 2}
    assert [e.type for e in p] == ["activation"]
    assert p.drop_to(5) == {} and p.added == 7


async def test_writer_holds_events_while_the_disk_refuses_then_commits_them(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "fs", 2 * MIB) as d:
        settings = load_settings(
            paths={"state_dir": str(d)},
            outbox={"flush_interval_s": 0.02, "ram_max_events": 300},
            status={"enabled": False},
        )
        daemon = Daemon(settings, load_store_layout(settings))
        await daemon.presence.open(1000.0)  # (its key file exists before the disk fills)
        # a disk with no room at all and no reserve left: the outbox refuses every append
        ob = await Outbox.open(settings.outbox_path, settings.gateway.id)
        await ob.append([zone(i) for i in range(10)])
        await ob.close()
        settings.outbox_path.with_name("outbox.sqlite3.reserve").unlink()
        filler = d / "other-process.log"
        fill(filler)
        daemon.outbox = await Outbox.open(settings.outbox_path, settings.gateway.id)
        writer = asyncio.create_task(daemon._run_writer())
        try:
            events: list[EventBase] = [fix(i) if i % 4 else zone(i) for i in range(1000)]
            daemon.pending.extend(events)
            for _ in range(200):
                if daemon.outbox_refusing is not None and len(daemon.pending) <= 300:
                    break
                await asyncio.sleep(0.02)
            assert daemon.outbox_refusing is not None
            assert len(daemon.pending) == 300
            assert daemon.pending.dropped == {"fix": 700}  # fixes went first; 250 zone events kept
            assert not writer.done()  # the writer task is alive: the daemon keeps collecting
            filler.unlink()
            for _ in range(300):
                if not daemon.pending and daemon.outbox_refusing is None:
                    break
                await asyncio.sleep(0.02)
            assert daemon.outbox_refusing is None and not daemon.pending
            acc = daemon.accounting()
            assert acc["added"] == 1000
            assert acc["added"] == acc["committed"] + sum(acc["dropped_in_ram"].values()) + acc["pending"]
            assert acc["committed"] == 300
            assert acc["outbox"]["last_seq"] == 310
            types = [r.type for r in await daemon.outbox.pending(1000)]
            assert types.count("zone.entered") == 10 + 250
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await daemon.outbox.close()
            await daemon.presence.close()
