"""Outbox: durable seqs, ordering, acks, eviction policy, disk-full handling (real SQLite files)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from gateway.models import (
    EVENT_ADAPTER,
    ActivationReport,
    Aggregate,
    EventBase,
    Heartbeat,
    PositionFix,
    UplinkEvent,
    ZoneEntered,
)
from gateway.uplink.outbox import Outbox, OutboxError
from gateway.uplink.outbox_sql import envelope_bytes

GW = "gw-test"


def fix(i: int) -> PositionFix:
    return PositionFix(ts=1000.0 + i, store_id="s1", subject=f"p{i % 7}", x=1.5, y=2.25, sigma_m=1.0)


def zone(i: int) -> ZoneEntered:
    return ZoneEntered(ts=1000.0 + i, store_id="s1", subject=f"p{i % 7}", zone="entrance")


def agg(i: int) -> Aggregate:
    return Aggregate(ts=1000.0 + i, store_id="s1", interval_start=900.0, interval_s=900, visitors=5, passers_by=2)


def act(i: int) -> ActivationReport:
    return ActivationReport(
        ts=1000.0 + i, store_id="s1", campaign_id="c", content_id="k", actor_id="screen1", subject="p", result="shown"
    )


async def test_append_assigns_contiguous_seqs_and_canonical_payload(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", GW)
    evs: list[EventBase] = [zone(i) for i in range(5)]
    assert await ob.append(evs) == [1, 2, 3, 4, 5]
    more: list[EventBase] = [fix(9), act(3)]
    assert await ob.append(more) == [6, 7]
    rows = await ob.pending(100)
    assert [r.seq for r in rows] == list(range(1, 8))
    for r, ev in zip(rows, [*evs, *more], strict=True):
        # The stored bytes are exactly what pydantic would produce for the envelope.
        expected = UplinkEvent(gateway_id=GW, seq=r.seq, event=EVENT_ADAPTER.validate_python(ev)).model_dump_json()
        assert r.payload == expected.encode()
        assert r.event_id == ev.event_id
        parsed = UplinkEvent.model_validate_json(r.payload)
        assert parsed.seq == r.seq
        assert parsed.gateway_id == GW
    assert [r.priority.name for r in rows[-2:]] == ["FIX", "ACTIVATION"]
    st = ob.stats()
    assert (st.backlog, st.last_seq, st.oldest_ts) == (7, 7, 1000.0)
    assert st.bytes > 0
    await ob.close()


async def test_envelope_escapes_gateway_id() -> None:
    ev = Heartbeat(ts=1.0, store_id="s")
    gid = 'we"ird\\id'
    raw = envelope_bytes(json.dumps(gid).encode(), 3, ev.model_dump_json().encode())
    assert raw == UplinkEvent(gateway_id=gid, seq=3, event=ev).model_dump_json().encode()


async def test_seqs_survive_restart_ack_and_are_never_reused(tmp_path: Path) -> None:
    p = tmp_path / "o.db"
    ob = await Outbox.open(p, GW)
    await ob.append([zone(i) for i in range(10)])
    await ob.ack(list(range(1, 11)))  # everything acknowledged: table empty
    assert ob.stats().backlog == 0
    await ob.close()
    ob = await Outbox.open(p, GW)
    assert ob.stats().last_seq == 10
    assert await ob.append([zone(1)]) == [11]
    await ob.close()


async def test_pending_after_seq_and_partial_ack(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", GW)
    await ob.append([zone(i) for i in range(20)])
    assert [r.seq for r in await ob.pending(5, after_seq=7)] == [8, 9, 10, 11, 12]
    await ob.ack([1, 2, 3, 5, 9, 10, 11])
    assert [r.seq for r in await ob.pending(5)] == [4, 6, 7, 8, 12]
    st = ob.stats()
    assert st.backlog == 13
    assert st.acked == 7
    assert st.oldest_ts == 1003.0
    await ob.ack([1, 2])  # acking twice is harmless
    assert ob.stats().backlog == 13
    await ob.close()


async def test_refuses_another_gateways_file_and_non_wire_events(tmp_path: Path) -> None:
    p = tmp_path / "o.db"
    ob = await Outbox.open(p, GW)
    with pytest.raises(TypeError, match="not a wire event"):
        await ob.append([EventBase(ts=1.0, store_id="s")])
    assert ob.stats().last_seq == 0
    await ob.close()
    with pytest.raises(OutboxError, match="holds the outbox of gateway 'gw-test'"):
        await Outbox.open(p, "other-gw")


async def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    p = tmp_path / "o.db"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OutboxError, match="cannot use outbox"):
        await Outbox.open(p, GW)


async def test_wait_for_data(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", GW)
    assert await ob.wait_for_data(0.01) is False
    await ob.append([zone(1)])
    assert await ob.wait_for_data(0.01) is True
    assert await ob.wait_for_data(0.01) is False
    await ob.close()


async def test_eviction_lowest_priority_then_oldest(tmp_path: Path) -> None:
    """Fill past max_bytes: fixes go first (oldest first), then aggregates; presence stays."""
    ob = await Outbox.open(tmp_path / "o.db", GW, max_bytes=400 * 1024)
    await ob.append([act(i) for i in range(50)])
    await ob.append([zone(i) for i in range(200)])
    await ob.append([agg(i) for i in range(200)])
    for k in range(40):
        await ob.append([fix(1000 * k + i) for i in range(50)])
    st = ob.stats()
    assert st.last_seq == 50 + 200 + 200 + 40 * 50
    assert st.evicted.get("size", 0) > 0
    assert st.bytes <= 400 * 1024
    assert set(st.evicted_by_priority) <= {"fix", "aggregate"}
    rows = await ob.pending(10_000)
    kinds = {r.type for r in rows}
    assert "activation" in kinds
    assert "zone.entered" in kinds
    assert sum(1 for r in rows if r.type == "activation") == 50
    assert sum(1 for r in rows if r.type == "zone.entered") == 200
    fixes = [r.seq for r in rows if r.type == "fix"]
    if fixes:  # the survivors are the newest fixes: everything older was evicted
        assert fixes == list(range(fixes[0], st.last_seq + 1))
    assert st.backlog == len(rows) == st.last_seq - st.evicted_total
    await ob.close()
    # Counters persist across a restart.
    ob = await Outbox.open(tmp_path / "o.db", GW, max_bytes=400 * 1024)
    assert ob.stats().evicted == st.evicted
    assert ob.stats().backlog == st.backlog
    await ob.close()


async def test_disk_full_evicts_and_retries(tmp_path: Path) -> None:
    """A page cap (a tiny 'disk'): the disk-derived cap evicts low priority first, no crash."""
    ob = await Outbox.open(tmp_path / "o.db", GW)  # size cap far above the page cap
    await ob.append([act(i) for i in range(20)])
    await ob.set_page_cap(60)  # ~240 KiB with 4 KiB pages
    appended = 20
    for k in range(60):
        seqs = await ob.append([fix(100 * k + i) for i in range(40)])
        assert seqs == list(range(appended + 1, appended + 41))
        appended += 40
    st = ob.stats()
    assert st.evicted.get("disk", 0) > 0
    assert st.disk_state == "limited"
    assert st.last_seq == appended
    rows = await ob.pending(100_000)
    assert sum(1 for r in rows if r.type == "activation") == 20
    assert len(rows) == st.backlog == appended - st.evicted_total
    await ob.close()


async def test_batch_larger_than_the_cap_keeps_what_fits_and_counts_the_rest(tmp_path: Path) -> None:
    """The batch's own rows are eviction candidates (the newest of their priority): a batch of
    fixes bigger than the whole cap keeps the stored activation reports and as many of its own
    newest fixes as fit; the rest consume their seqs and are counted as evicted."""
    ob = await Outbox.open(tmp_path / "o.db", GW)
    await ob.append([act(i) for i in range(5)])
    await ob.set_page_cap(30)  # ~90 KiB of live pages, the schema's included
    assert await ob.append([fix(i) for i in range(2000)]) == list(range(6, 2006))
    st = ob.stats()
    rows = await ob.pending(10_000)
    assert [r.type for r in rows[:5]] == ["activation"] * 5
    assert 0 < len(rows) - 5 < 2000
    assert st.evicted_by_priority == {"fix": 2000 - (len(rows) - 5)}
    assert st.last_seq == 2005 == st.backlog + st.evicted_total
    # the fixes kept are the newest ones
    assert [r.seq for r in rows[5:]] == list(range(2006 - (len(rows) - 5), 2006))
    await ob.set_page_cap(100_000)
    assert await ob.append([zone(1)]) == [2006]
    await ob.close()


async def test_dead_letter_keeps_rows(tmp_path: Path) -> None:
    ob = await Outbox.open(tmp_path / "o.db", GW)
    await ob.append([zone(i) for i in range(5)])
    n = await ob.dead_letter([2, 3], "PUBACK Payload format invalid (0x99)", 0x99)
    assert n == 2
    assert [r.seq for r in await ob.pending(10)] == [1, 4, 5]
    dl = await ob.dead_letters()
    assert [(e.seq, code) for e, code, _ in dl] == [(2, 0x99), (3, 0x99)]
    assert ob.stats().dead_letters == 2
    await ob.close()


async def test_wal_and_full_sync(tmp_path: Path) -> None:
    p = tmp_path / "o.db"
    ob = await Outbox.open(p, GW)
    await ob.append([zone(1)])
    # A second, independent reader sees the committed row (durable on commit, not at close).
    con = sqlite3.connect(p)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    finally:
        con.close()
    await ob.close()


async def test_batch_envelope_is_pydantics_uplinkbatch(tmp_path: Path) -> None:
    """The uplink's concatenated batch bytes are exactly UplinkBatch's JSON (ids and seqs kept)."""
    from gateway.models import UplinkBatch
    from gateway.uplink.link import batch_payload

    ob = await Outbox.open(tmp_path / "o.db", GW)
    await ob.append([zone(1), fix(2), act(3), agg(4)])
    rows = await ob.pending(10)
    raw = batch_payload(json.dumps(GW).encode(), rows)
    parsed = UplinkBatch.model_validate_json(raw)
    assert [e.seq for e in parsed.batch] == [1, 2, 3, 4]
    assert [e.event.event_id for e in parsed.batch] == [r.event_id for r in rows]
    assert parsed.model_dump_json().encode() == raw
    await ob.close()
