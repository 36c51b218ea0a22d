"""The uplink's batcher, without a broker: one event per message below the threshold, batches above
it within the payload limit, events set aside for unbatching always alone."""

from __future__ import annotations

import json
from collections import deque

from gateway.models import Priority, UplinkBatch
from gateway.uplink.batcher import Batcher, max_payload
from gateway.uplink.outbox_sql import StoredEvent


def rows(first: int, n: int, size: int = 100) -> deque[StoredEvent]:
    out: deque[StoredEvent] = deque()
    for seq in range(first, first + n):
        event = {"v": 1, "event_id": f"e{seq}", "ts": 1.0, "store_id": "s", "type": "heartbeat", "note": "x" * size}
        payload = json.dumps({"v": 1, "gateway_id": "gw", "seq": seq, "event": event}, separators=(",", ":"))
        out.append(
            StoredEvent(
                seq=seq,
                event_id=f"e{seq}",
                type="heartbeat",
                priority=Priority.PRESENCE,
                ts=1.0,
                payload=payload.encode(),
            )
        )
    return out


def test_alone_below_the_threshold_batched_above_it() -> None:
    b = Batcher(b'"gw"', batch_threshold=100, batch_max=10)
    buf = rows(1, 30)
    msg, payload = b.next_message(buf, backlog=30, max_payload=1 << 20)
    assert [r.seq for r in msg] == [1] and payload == msg[0].payload
    msg, payload = b.next_message(buf, backlog=500, max_payload=1 << 20)
    assert [r.seq for r in msg] == list(range(2, 12))
    batch = UplinkBatch.model_validate_json(payload)
    assert [e.seq for e in batch.batch] == list(range(2, 12)) and batch.gateway_id == "gw"


def test_the_payload_limit_and_unbatched_events_cut_a_batch() -> None:
    b = Batcher(b'"gw"', batch_threshold=0, batch_max=100)
    buf = rows(1, 40, size=200)
    one = len(buf[0].payload)
    msg, payload = b.next_message(buf, backlog=40, max_payload=64 + 3 * (one + 1))
    assert len(msg) == 3 and len(payload) <= 64 + 3 * (one + 1)
    b.unbatch_until(8)
    msg, _ = b.next_message(buf, backlog=40, max_payload=1 << 20)
    assert [r.seq for r in msg] == [4]  # 4 <= 8: alone
    while buf[0].seq <= 8:
        assert len(b.next_message(buf, backlog=40, max_payload=1 << 20)[0]) == 1
    assert [r.seq for r in b.next_message(buf, backlog=40, max_payload=1 << 20)[0]] == list(range(9, 41))
    b.unbatch_until(3)  # never lowered
    assert b.no_batch_until == 8


def test_max_payload_follows_the_brokers_limit() -> None:
    assert max_payload(256_000, None, "t/events") == 256_000
    assert max_payload(256_000, 10_000, "t/events") == 10_000 - len("t/events") - 64
    assert max_payload(256_000, 100, "t/events") == 1024
