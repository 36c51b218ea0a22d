"""MQTT 3.1.1 framing as pure functions: bytes in -> packets + how many bytes they used; packets out.

``split_packets(buf)`` reads every *complete* packet at the start of ``buf`` and says how many
bytes they took; ``buf[used:]`` is the start of a packet still arriving (keep it, append the next
read, call again). It never raises on input: a stream that cannot be MQTT (a remaining length of
five bytes or more than ``max_packet``, a PUBLISH shorter than its own topic, QoS 3) ends the
result with ``error`` set, after the packets that came before it. It is fuzzed with random and
mutated streams cut at every offset (``tests/unit/mqtt/test_framing.py``).

The encoders build the few packets a client sends (CONNECT, SUBSCRIBE, PUBLISH, PUBACK, PINGREQ,
DISCONNECT). Nothing here does I/O; ``gateway/mqtt/local.py`` drives it from an asyncio Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PACKET = 1 << 20  # a sensor-node message is < 16 kB; anything near 1 MB is a broken stream

CONNECT, CONNACK, PUBLISH, PUBACK = 0x10, 0x20, 0x30, 0x40
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 0x80, 0x90, 0xC0, 0xD0, 0xE0
PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


@dataclass(slots=True)
class Frames:
    """What one call to ``split_packets`` found, in stream order within each list."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)  # PUBLISH (topic, payload), RETAIN clear
    retained: list[tuple[str, bytes]] = field(default_factory=list)  # PUBLISH with RETAIN set (replayed state)
    to_ack: list[int] = field(default_factory=list)  # packet ids of QoS 1 PUBLISHes (answer PUBACK)
    control: list[tuple[int, bytes]] = field(default_factory=list)  # other packets: (type << 4, body)
    bad_topics: int = 0  # PUBLISHes whose topic is not UTF-8 (skipped, acknowledged if QoS 1)
    used: int = 0  # bytes taken by the packets above
    error: str | None = None  # the stream is broken at ``used``: nothing after it can be read


def split_packets(buf: bytes | bytearray, max_packet: int = MAX_PACKET) -> Frames:
    """Every complete packet at the start of ``buf`` (see the module docstring)."""
    out = Frames()
    messages, retained = out.messages, out.retained
    n = len(buf)
    pos = 0
    while n - pos >= 2:
        first = buf[pos]
        # remaining length: 1-4 bytes, 7 bits each, least significant first
        rem = 0
        shift = 0
        i = pos + 1
        while True:
            if i >= n:
                out.used = pos
                return out  # the header is not all here yet
            b = buf[i]
            i += 1
            rem |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            if i - pos > 4:
                out.used, out.error = pos, "bad remaining length (more than 4 bytes)"
                return out
            shift += 7
        if rem > max_packet:
            out.used, out.error = pos, f"a {rem}-byte packet (more than {max_packet})"
            return out
        end = i + rem
        if end > n:
            break
        if first & 0xF0 == PUBLISH:
            qos = (first >> 1) & 3
            if rem < 2 or qos > 1:
                out.used = pos
                out.error = "malformed PUBLISH: " + ("QoS above 1" if qos > 1 else f"{rem} byte(s), no topic length")
                return out
            p0 = i + 2 + ((buf[i] << 8) | buf[i + 1])  # payload starts after the topic ...
            if qos:
                p0 += 2  # ... and the packet id
            if p0 > end:
                out.used, out.error = pos, "malformed PUBLISH: topic longer than the packet"
                return out
            if qos:
                out.to_ack.append((buf[p0 - 2] << 8) | buf[p0 - 1])
            try:
                topic = buf[i + 2 : p0 - 2 if qos else p0].decode()
            except UnicodeDecodeError:
                out.bad_topics += 1
            else:
                if first & 0x01:  # RETAIN: a stored message replayed on subscribe, not a live one
                    retained.append((topic, bytes(buf[p0:end])))
                else:
                    messages.append((topic, bytes(buf[p0:end])))
        else:
            out.control.append((first & 0xF0, bytes(buf[i:end])))
        pos = end
    out.used = pos
    return out


def encode_packet(first: int, body: bytes) -> bytes:
    """Fixed header (type and flags in ``first``, remaining length) + ``body``."""
    n = len(body)
    rem = bytearray()
    while True:
        d, n = n % 128, n // 128
        rem.append(d | (0x80 if n else 0))
        if not n:
            return bytes([first]) + bytes(rem) + body


def encode_str(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def connect_packet(client_id: str, keepalive: int, username: str | None = None, password: str | None = None) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session (no state is kept across connections)."""
    flags = 0x02
    payload = encode_str(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += encode_str(username.encode())
        if password is not None:
            flags |= 0x40
            payload += encode_str(password.encode())
    return encode_packet(CONNECT, encode_str(b"MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + payload)


def subscribe_packet(packet_id: int, filters: list[str], qos: int) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(encode_str(f.encode()) + bytes([qos]) for f in filters)
    return encode_packet(SUBSCRIBE | 0x02, body)


def publish_packet(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False) -> bytes:
    first = PUBLISH | (qos << 1) | (0x01 if retain else 0)
    body = encode_str(topic.encode()) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return encode_packet(first, body)


def puback_packet(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")
