"""MQTT framing (``gateway.mqtt.framing.split_packets``): known vectors, and a fuzz of random, valid and
mutated byte streams, each read whole, cut at every offset and fed one byte at a time.

The fuzz runs ``GATEWAY_FUZZ_STREAMS`` streams (default 5 000, a few seconds; the issue's 10^6 is
``GATEWAY_FUZZ_STREAMS=1000000``, ten minutes or so on a shared core). Properties, per stream:

* ``split_packets`` never raises, and ``used`` stays within the buffer;
* a reader that keeps ``buf[used:]`` and appends the next read (what ``data_received`` does) gets
  exactly what a whole-stream read gets - messages, retained messages, acks, control packets,
  bad topics, the error and where it stopped - however the stream is cut: at any one offset, or
  at every byte;
* a valid stream's messages are the ones that were encoded.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from gateway.mqtt.framing import (
    MAX_PACKET,
    Frames,
    encode_packet,
    publish_packet,
    split_packets,
)

STREAMS = int(os.environ.get("GATEWAY_FUZZ_STREAMS", "5000"))
Result = tuple[list[object], int, str | None, int]  # (items in order, bad topics, error, bytes consumed)


def read(chunks: list[bytes]) -> Result:
    """What a connection reading these chunks one after another gets (it stops at an error)."""
    buf = bytearray()
    items: list[object] = []
    bad = consumed = 0
    for chunk in chunks:
        buf += chunk
        f = split_packets(buf)
        assert 0 <= f.used <= len(buf)
        items += [("m", *m) for m in f.messages] + [("r", *m) for m in f.retained]
        items += [("a", pid) for pid in f.to_ack] + [("c", *c) for c in f.control]
        bad += f.bad_topics
        consumed += f.used
        del buf[: f.used]
        if f.error is not None:
            return items, bad, f.error, consumed
    return items, bad, None, consumed


def canonical(r: Result) -> Result:
    """Order within one read is per list; across reads it is the stream's. Compare per kind."""
    items, bad, err, consumed = r
    by_kind = sorted(items, key=lambda x: str(x[0]))  # type: ignore[index]
    return by_kind, bad, err, consumed


# -- known vectors ---------------------------------------------------------------------------


def test_complete_packets_and_the_rest() -> None:
    p1 = publish_packet("a/b", b"one")
    p2 = publish_packet("a/c", b"x" * 300, qos=1, packet_id=0x1234, retain=True)
    ack = b"\x90\x03\x00\x01\x00"
    stream = p1 + ack + p2 + publish_packet("a/\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), b"z")
    f = split_packets(stream[:-3])
    assert f.messages == [("a/b", b"one")] and f.retained == [("a/c", b"x" * 300)]
    assert f.to_ack == [0x1234] and f.control == [(0x90, b"\x00\x01\x00")]
    assert f.used == len(p1 + ack + p2) and f.error is None
    assert split_packets(b"") == Frames() and split_packets(b"\x30") == Frames()


def test_non_utf8_topics_are_counted_and_acknowledged() -> None:
    body = b"\x00\x02\xff\xfe" + b"\x00\x09" + b"payload"
    f = split_packets(encode_packet(0x32, body))
    assert f.messages == [] and f.bad_topics == 1 and f.to_ack == [9] and f.error is None


@pytest.mark.parametrize(
    ("stream", "error"),
    [
        (b"\x30\x00", "malformed PUBLISH: 0 byte(s), no topic length"),
        (b"\x30\x01\x00", "malformed PUBLISH: 1 byte(s), no topic length"),
        (b"\x32\x03\x00\x00\x01", "malformed PUBLISH: topic longer than the packet"),
        (b"\x30\x03\x00\x05a", "malformed PUBLISH: topic longer than the packet"),
        (b"\x34\x02\x00\x00", "malformed PUBLISH: QoS above 1"),
        (b"\x36\x02\x00\x00", "malformed PUBLISH: QoS above 1"),
        (b"\x30\xff\xff\xff\xff\x01", "bad remaining length (more than 4 bytes)"),
        (b"\x30\xff\xff\xff\x7f", f"a {(1 << 28) - 1}-byte packet (more than {MAX_PACKET})"),
    ],
)
def test_broken_streams_stop_with_a_reason_after_the_good_packets(stream: bytes, error: str) -> None:
    good = publish_packet("t", b"ok")
    f = split_packets(good + stream + good)
    assert f.messages == [("t", b"ok")] and f.error == error and f.used == len(good)


def test_a_header_still_arriving_is_not_an_error() -> None:
    assert split_packets(b"\x30\xff\xff").error is None
    assert split_packets(b"\x30\xff\xff\xff").error is None  # the 4th length byte may still end it
    assert split_packets(b"\x30\xff\xff\xff\xff").error is not None


# -- fuzz ------------------------------------------------------------------------------------


def topic(rng: random.Random) -> bytes:
    if rng.random() < 0.1:
        return rng.randbytes(rng.randint(0, 6))  # often not UTF-8
    return "".join(rng.choice("ab/+#é") for _ in range(rng.randint(0, 8))).encode()


def valid_stream(rng: random.Random) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Packets a broker sends, and the live messages among them."""
    out = bytearray()
    sent: list[tuple[str, bytes]] = []
    for _ in range(rng.randint(1, 6)):
        kind = rng.random()
        if kind < 0.7:
            t = topic(rng)
            payload = rng.randbytes(300 if rng.random() < 0.02 else rng.choice((0, 1, 5, 20, 130)))
            qos = rng.randint(0, 1)
            retain = rng.random() < 0.2
            body = len(t).to_bytes(2, "big") + t + (rng.randint(1, 65535).to_bytes(2, "big") if qos else b"") + payload
            out += encode_packet(0x30 | (qos << 1) | retain, body)
            try:
                if not retain:
                    sent.append((t.decode(), payload))
            except UnicodeDecodeError:
                pass
        elif kind < 0.8:
            out += b"\x20\x02\x00" + bytes([rng.randint(0, 5)])
        elif kind < 0.9:
            out += b"\x90\x03" + rng.randint(1, 65535).to_bytes(2, "big") + b"\x00"  # SUBACK
        else:
            out += rng.choice((b"\xd0\x00", b"\x40\x02\x00\x07", b"\xb0\x02\x00\x01"))
    return bytes(out), sent


def mutate(rng: random.Random, s: bytes) -> bytes:
    b = bytearray(s)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        i = rng.randrange(len(b) + 1)
        if op == 0 and b and i < len(b):
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i:i] = rng.randbytes(rng.randint(1, 3))
        elif op == 2 and b and i < len(b):
            del b[i : i + rng.randint(1, 3)]
        elif op == 3:
            del b[i:]
        else:
            b[i:i] = b[rng.randrange(len(b) + 1) :][: rng.randint(1, 8)]
    return bytes(b)


def check(s: bytes, expect: list[tuple[str, bytes]] | None) -> None:
    whole = read([s])
    if expect is not None:
        assert [x[1:] for x in whole[0] if x[0] == "m"] == expect  # type: ignore[index]
        assert whole[2] is None and whole[3] == len(s)
    want = canonical(whole)
    for k in range(1, len(s)):
        assert canonical(read([s[:k], s[k:]])) == want, k
    assert canonical(read([s[i : i + 1] for i in range(len(s))])) == want


@pytest.mark.timeout(300 + STREAMS // 300)  # 10^6 streams take ~15 min on a shared core
def test_fuzz_random_valid_and_mutated_streams_cut_anywhere() -> None:
    rng = random.Random(20261206)
    t0 = time.monotonic()
    kinds = {"random": 0, "valid": 0, "mutated": 0, "errors": 0, "bytes": 0}
    for n in range(STREAMS):
        r = n % 3
        if r == 0:
            s, expect = rng.randbytes(rng.randint(0, 48)), None
            if rng.random() < 0.5 and s:  # mostly PUBLISH-looking first bytes: deeper paths
                s = bytes([0x30 | rng.randrange(16)]) + s[1:]
            kinds["random"] += 1
        elif r == 1:
            s, sent = valid_stream(rng)
            expect = sent
            kinds["valid"] += 1
        else:
            s, expect = mutate(rng, valid_stream(rng)[0]), None
            kinds["mutated"] += 1
        check(s, expect)
        kinds["bytes"] += len(s)
        kinds["errors"] += split_packets(s).error is not None
    print(f"framing fuzz: {STREAMS} streams {kinds} in {time.monotonic() - t0:.1f} s")
    assert kinds["errors"] > STREAMS // 20  # the broken-stream paths were exercised
