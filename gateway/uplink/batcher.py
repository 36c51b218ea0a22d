"""Which stored events go out together, as what bytes (pure: no I/O, no clock).

Below ``batch_threshold`` pending events every event is its own MQTT message (its stored
``UplinkEvent`` bytes as they are). Above it, up to ``batch_max`` consecutive events share one
``UplinkBatch`` message, as long as it stays under the payload limit (``max_payload``: the
configured ``batch_max_bytes``, lowered to what the broker announced it accepts). Events up to
``no_batch_until`` are always sent alone: a batch the broker refused as too large, or one it
dropped the link on again and again, is re-sent event by event so the culprit can be found.
"""

from __future__ import annotations

from collections import deque

from gateway.uplink.outbox_sql import StoredEvent

MIN_PAYLOAD = 1024
HEADER_ALLOWANCE = 64  # bytes of PUBLISH framing and properties beside the topic and the payload


def batch_payload(gateway_id_json: bytes, rows: list[StoredEvent]) -> bytes:
    """``UplinkBatch`` JSON from stored ``UplinkEvent`` bytes (byte-identical to pydantic's dump)."""
    return b'{"v":1,"gateway_id":%s,"batch":[%s]}' % (gateway_id_json, b",".join(r.payload for r in rows))


def max_payload(batch_max_bytes: int, broker_max_packet: int | None, topic: str) -> int:
    """Largest batch payload for this connection: the configured one, within the broker's limit."""
    limit = batch_max_bytes
    if broker_max_packet:
        limit = min(limit, broker_max_packet - len(topic) - HEADER_ALLOWANCE)
    return max(MIN_PAYLOAD, limit)


class Batcher:
    def __init__(self, gateway_id_json: bytes, batch_threshold: int, batch_max: int) -> None:
        self.gateway_id_json = gateway_id_json
        self.batch_threshold = batch_threshold
        self.batch_max = batch_max
        self.no_batch_until = 0  # events with seq <= this go out alone

    def unbatch_until(self, seq: int) -> None:
        """Send every event up to ``seq`` alone from now on."""
        self.no_batch_until = max(self.no_batch_until, seq)

    def next_message(
        self, buffer: deque[StoredEvent], backlog: int, max_payload: int
    ) -> tuple[list[StoredEvent], bytes]:
        """Take the next message's rows off the front of ``buffer`` (not empty); its payload."""
        first = buffer.popleft()
        if backlog <= self.batch_threshold or not buffer or first.seq <= self.no_batch_until:
            return [first], first.payload
        rows = [first]
        size = HEADER_ALLOWANCE + len(first.payload)
        while buffer and len(rows) < self.batch_max:
            nxt = buffer[0]
            if size + len(nxt.payload) + 1 > max_payload or nxt.seq <= self.no_batch_until:
                break
            rows.append(buffer.popleft())
            size += len(nxt.payload) + 1
        if len(rows) == 1:
            return rows, first.payload
        return rows, batch_payload(self.gateway_id_json, rows)
