"""The relay -> daemon message format (pure; no privileges, no I/O).

The privileged relay (:mod:`gateway.capture.relay`) sends one message per captured frame, unparsed,
and a status message about once a second, over a Unix ``SOCK_SEQPACKET`` connection to the daemon's
socket (``wifi.capture_socket``, ``/run/gateway/capture.sock`` under the shipped units; message
boundaries are kept, as with datagrams). Header, network byte order::

    magic    4s  b"GWCF"
    version  B   2
    flags    B   bit 0: the frame was truncated to MAX_FRAME; bit 1: a status message
    link     H   DLT link type of the payload (127 radiotap, 105 bare 802.11, 1 Ethernet, 0 unknown)
    ts_ns    Q   capture time, Unix nanoseconds
    channel  H   the channel the relay had tuned the radio to (0: not known)
    reserved H   0

A frame's payload is the raw frame; a status message's payload is a JSON object (the relay's
:class:`RelayStatus`), so the daemon can say on its status page whether the relay runs, what it
captures on, whether it hops and what it dropped - and notice a relay that went away or restarted.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "FLAG_STATUS",
    "FLAG_TRUNCATED",
    "HEADER",
    "MAGIC",
    "MAX_FRAME",
    "VERSION",
    "CapturedFrame",
    "FrameError",
    "RelayStatus",
    "decode",
    "encode_frame",
    "encode_status",
]

MAGIC = b"GWCF"
VERSION = 2
HEADER = struct.Struct("!4sBBHQHH")
MAX_FRAME = 8192
MAX_STATUS = 4096  # a status JSON longer than this is refused (it is a few hundred bytes)
FLAG_TRUNCATED = 0x01
FLAG_STATUS = 0x02
LINKTYPE_UNKNOWN = 0  # the daemon drops link types it has no parser for
LINKTYPE_ETHERNET = 1
LINKTYPE_IEEE802_11 = 105
LINKTYPE_RADIOTAP = 127
DATAGRAM_MAX = HEADER.size + MAX_FRAME


class FrameError(ValueError):
    """A message that is not a relay message (short, wrong magic or version, bad status)."""


@dataclass(frozen=True, slots=True)
class CapturedFrame:
    ts: float
    linktype: int
    data: bytes
    truncated: bool = False
    channel: int | None = None


@dataclass(slots=True)
class RelayStatus:
    """What the relay says about itself in every status message."""

    instance: str  # random per relay process: a new value means the relay restarted
    started: float  # Unix time the relay process started
    interface: str
    state: str  # "capturing", "waiting: ...", "failed: ..."
    linktype: str | None = None  # radiotap / ieee80211 once capturing
    hopping: str = "off"
    monitor: str = "not asked"
    kernel_filter: str = "off"
    channel: int | None = None
    counts: dict[str, int] = field(default_factory=dict)  # received, forwarded, dropped_*, truncated

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RelayStatus:
        try:
            d: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise FrameError(f"status payload is not JSON: {e}") from None
        if not isinstance(d, dict):
            raise FrameError("status payload is not a JSON object")
        try:
            counts = d.get("counts") or {}
            st = cls(
                instance=str(d["instance"]),
                started=float(d["started"]),
                interface=str(d["interface"]),
                state=str(d["state"]),
                linktype=None if d.get("linktype") is None else str(d["linktype"]),
                hopping=str(d.get("hopping", "off")),
                monitor=str(d.get("monitor", "not asked")),
                kernel_filter=str(d.get("kernel_filter", "off")),
                channel=None if d.get("channel") is None else int(d["channel"]),
                counts={str(k): int(v) for k, v in counts.items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise FrameError(f"status payload field missing or of the wrong type: {e}") from None
        return st


def encode_frame(data: bytes, ts_ns: int, linktype: int, channel: int | None = None) -> bytes:
    """Frame one captured packet for the socket; oversized packets are truncated and flagged."""
    flags = 0
    if len(data) > MAX_FRAME:
        data = data[:MAX_FRAME]
        flags |= FLAG_TRUNCATED
    return HEADER.pack(MAGIC, VERSION, flags, linktype, ts_ns, channel or 0, 0) + data


def encode_status(status: RelayStatus, ts_ns: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, FLAG_STATUS, LINKTYPE_UNKNOWN, ts_ns, status.channel or 0, 0) + status.to_json()


def decode(dgram: bytes) -> CapturedFrame | RelayStatus:
    """One message: a frame, or the relay's status. Raises :class:`FrameError` naming what is wrong."""
    if len(dgram) < HEADER.size:
        raise FrameError(f"message of {len(dgram)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, flags, linktype, ts_ns, channel, _reserved = HEADER.unpack_from(dgram)
    if magic != MAGIC:
        raise FrameError(f"bad magic {magic!r} at offset 0")
    if version != VERSION:
        raise FrameError(f"unsupported relay version {version} at offset 4 (this daemon reads {VERSION})")
    payload = bytes(dgram[HEADER.size :])
    if flags & FLAG_STATUS:
        if len(payload) > MAX_STATUS:
            raise FrameError(f"status payload of {len(payload)} bytes is over {MAX_STATUS}")
        return RelayStatus.from_json(payload)
    return CapturedFrame(ts_ns / 1e9, linktype, payload, bool(flags & FLAG_TRUNCATED), channel or None)
