"""IEEE 802.11 management-frame parser: probe requests (and beacons / association requests).

Pure and bounds-checked: every length is checked before it is used and a bad frame raises
:class:`Ieee80211Error` naming the problem and its byte offset (callers count and skip it).

The **fingerprint** identifies a device *model / driver*, not a device: Vanhoef et al., "Why MAC
Address Randomization is not Enough" (AsiaCCS 2016) show the ordered list of information elements
(IEs) and the content of the capability IEs survive MAC randomization and differ between models.
It is 16 hex digits: the first 8 are the model's *family* (:func:`family_of`: rates, HT and VHT
capabilities - what a phone keeps in every probe; an Android 13 phone sends other elements in its
directed scans than in its wildcard ones), the last 8 hash, in order:

* the ordered IE ids (and the extension id of element-id extensions),
* supported and extended supported rates,
* HT capabilities (with the SM power-save bits masked: they change with the power state),
  VHT capabilities, HE capabilities,
* extended capabilities, interworking (access network type only),
* vendor-specific OUIs with their type byte.

It never includes the SSID (user data, changes with the network searched for), the DS parameter
set (the channel), the sequence number or the MAC, so it is stable across MAC rotations.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

__all__ = [
    "Ieee80211Error",
    "MgmtFrame",
    "family_of",
    "is_locally_administered",
    "parse_mgmt",
]

# frame control: type 0 = management
SUBTYPE_ASSOC_REQ = 0
SUBTYPE_REASSOC_REQ = 2
SUBTYPE_PROBE_REQ = 4
SUBTYPE_PROBE_RESP = 5
SUBTYPE_BEACON = 8

IE_SSID = 0
IE_RATES = 1
IE_DS = 3
IE_HT_CAPS = 45
IE_EXT_RATES = 50
IE_INTERWORKING = 107
IE_EXT_CAPS = 127
IE_VHT_CAPS = 191
IE_VENDOR = 221
IE_EXTENSION = 255
EXT_HE_CAPS = 35

# fixed fields before the IEs, by management subtype
_FIXED_LEN = {
    SUBTYPE_ASSOC_REQ: 4,
    SUBTYPE_REASSOC_REQ: 10,
    SUBTYPE_PROBE_REQ: 0,
    SUBTYPE_PROBE_RESP: 12,
    SUBTYPE_BEACON: 12,
}

_FC_SEQ = struct.Struct("<H")
_MGMT_HDR_LEN = 24


class Ieee80211Error(ValueError):
    """A frame that cannot be parsed; ``offset`` is the byte offset within the 802.11 frame."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"802.11: {reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


class MgmtFrame(NamedTuple):
    """A parsed management frame. ``src`` is the transmitter MAC as ``aa:bb:..`` (RAM only).

    A NamedTuple: built once per frame, and tuple construction is cheap.
    """

    subtype: int
    src: str
    randomized: bool
    seq: int
    ssid: bytes | None
    ssid_hidden: bool  # wildcard (empty) or blanked (all NUL) SSID, or no SSID element
    ds_channel: int | None
    rates: bytes
    ie_ids: bytes  # element ids in order (255 for every element-id extension)
    vendor_ouis: tuple[int, ...]
    fingerprint: str

    @property
    def is_probe_request(self) -> bool:
        return self.subtype == SUBTYPE_PROBE_REQ


def family_of(fingerprint: str) -> str:
    """The family part of a fingerprint (see the module docstring)."""
    return fingerprint[:8]


def is_locally_administered(mac: bytes | str) -> bool:
    """True for a locally administered (typically randomized) unicast address."""
    first = mac[0] if isinstance(mac, bytes | bytearray) else int(mac[:2], 16)
    return bool(first & 0x02)


def parse_mgmt(frame: bytes | memoryview, *, fcs_at_end: bool = False, offset: int = 0) -> MgmtFrame | None:
    """Parse a management frame; ``None`` if it is not a management frame of a subtype we read.

    ``fcs_at_end``: the capture kept the 4-byte FCS (radiotap flag 0x10); it is not an IE.
    ``offset``: where the 802.11 frame starts in ``frame`` (after radiotap) - saves a copy.
    Error offsets are relative to the 802.11 frame.
    """
    b = frame if type(frame) is bytes else bytes(frame)
    return parse_mgmt_at(b, offset, len(b) - (4 if fcs_at_end else 0))


def parse_mgmt_at(b: bytes, o: int, end: int) -> MgmtFrame | None:
    """:func:`parse_mgmt` of ``b[o:end]`` without copying (positional: the hot path calls it)."""
    n = end - o
    if n >= 24:
        fc, sc = _FC_SC.unpack_from(b, o)
        if fc == 0x0040:  # the common case: a plain probe request, no flags
            subtype = SUBTYPE_PROBE_REQ
            i = o + 24
        else:
            subtype, i = _mgmt_header(fc, n, o)
            if subtype < 0:
                return None
    else:
        if n < 2:
            raise Ieee80211Error(f"frame of {max(n, 0)} bytes has no frame control", 0)
        subtype, i = _mgmt_header(_FC_SEQ.unpack_from(b, o)[0], n, o)
        if subtype < 0:
            return None
        raise Ieee80211Error(f"management header needs 24 bytes, have {n}", 0)
    if i > end:
        raise Ieee80211Error(f"fixed fields need {i - o - 24} bytes after the header", 24)
    body = b[i:end]
    r = _ie_cache.get(body)
    if r is None:
        r = _parse_ies(b, i, end, o)
        if len(_ie_cache) >= _IE_CACHE_MAX:
            _ie_cache.clear()
        _ie_cache[body] = r
    src_b = b[o + 10 : o + 16]
    mac = _mac_cache.get(src_b)
    if mac is None:
        if len(_mac_cache) >= _MAC_CACHE_MAX:
            _mac_cache.clear()
        mac = _mac_cache[src_b] = (src_b.hex(":"), bool(src_b[0] & 0x02))
    return _new_frame(MgmtFrame, (subtype, *mac, sc >> 4, *r))


def _mgmt_header(fc: int, n: int, o: int) -> tuple[int, int]:
    """Check a frame control field: (subtype, start of the elements) or (-1, 0) if not ours."""
    if fc & 0x3:
        raise Ieee80211Error(f"protocol version {fc & 3} is not 0", 0)
    if fc & 0xC:
        return -1, 0  # control or data frame
    subtype = (fc >> 4) & 0xF
    fixed = _FIXED_LEN.get(subtype)
    if fixed is None or fc & 0x4000:
        return -1, 0  # a subtype we do not read, or a protected (encrypted) management frame
    hdr = _MGMT_HDR_LEN + (4 if fc & 0x8000 else 0)  # +HTC/order: HT control field
    if n < hdr:
        raise Ieee80211Error(f"management header needs {hdr} bytes, have {n}", 0)
    return subtype, o + hdr + fixed


_FC_SC = struct.Struct("<H20xH")
# transmitter address -> (text, randomized): a MAC sends many frames
_mac_cache: dict[bytes, tuple[str, bool]] = {}
_MAC_CACHE_MAX = 65536
_IEs = tuple[bytes | None, bool, int | None, bytes, bytes, tuple[int, ...], str]
# The element region of one device model's probe requests is byte-identical from frame to frame
# (only the MAC and sequence number, in the header, change), so parsing is memoized on it.
_ie_cache: dict[bytes, _IEs] = {}
_IE_CACHE_MAX = 16384
_new_frame = tuple.__new__


def _parse_ies(b: bytes, i: int, n: int, o: int) -> _IEs:
    """Walk the information elements of ``b[i:n]``; errors give offsets relative to ``o``."""
    ids = bytearray()
    parts: list[bytes] = []
    vendor: list[int] = []
    ssid: bytes | None = None
    ds: int | None = None
    rates = b""
    ht = b""
    vht = b""
    while i < n:
        if i + 2 > n:
            raise Ieee80211Error("truncated information element header", i - o)
        eid = b[i]
        end = i + 2 + b[i + 1]
        if end > n:
            raise Ieee80211Error(f"element {eid} length {b[i + 1]} runs past the frame end {n - o}", i - o)
        ids.append(eid)
        if eid == IE_SSID:
            if ssid is None:
                if end - i > 34:
                    raise Ieee80211Error(f"SSID length {end - i - 2} > 32", i - o)
                ssid = b[i + 2 : end]
        elif eid in (1, 50):  # supported / extended supported rates
            rates += b[i + 2 : end]
            parts.append(b[i:end])
        elif eid == IE_DS:
            if end > i + 2:
                ds = b[i + 2]
        elif eid == IE_HT_CAPS:
            ht = b[i:end]
        elif eid == IE_VENDOR:
            if end - i >= 5:
                vendor.append(int.from_bytes(b[i + 2 : i + 5], "big"))
                parts.append(b[i + 2 : i + 6])
        elif eid == IE_EXTENSION:
            if end - i < 3:
                raise Ieee80211Error("element extension without an extension id", i - o)
            # HE capabilities (ext 35): whole body; other extensions: just the extension id
            parts.append(b[i:end] if b[i + 2] == EXT_HE_CAPS else b[i : i + 3])
        elif eid == IE_EXT_CAPS:
            parts.append(b[i:end])
        elif eid == IE_VHT_CAPS:
            vht = b[i:end]
            parts.append(vht)
        elif eid == IE_INTERWORKING and end > i + 2:
            parts.append(bytes((IE_INTERWORKING, b[i + 2] & 0x0F)))  # access network type only
        i = end

    if len(ht) >= 4:
        # mask the SM power save bits (2-3 of HT capability info): they follow the power state
        ht = ht[:2] + bytes((ht[2] & 0xF3,)) + ht[3:]
        parts.append(ht)
    # family (first 8 hex digits): what a phone keeps in every probe it sends - rates, HT and VHT
    # capabilities; the rest (element order, extended/HE capabilities, vendor elements) can differ
    # between its wildcard and directed scans (seen from an Android 13 phone)
    family = hashlib.blake2b(rates + b"|" + ht + b"|" + vht, digest_size=4).hexdigest()
    fp = family + hashlib.blake2b(bytes(ids) + b"|" + b"|".join(parts), digest_size=4).hexdigest()
    hidden = ssid is None or not ssid.strip(b"\x00")
    return (ssid, hidden, ds, rates, bytes(ids), tuple(vendor), fp)


def build_probe_request(
    src: bytes,
    seq: int,
    ies: list[tuple[int, bytes]],
    *,
    dst: bytes = b"\xff" * 6,
    bssid: bytes = b"\xff" * 6,
) -> bytes:
    """Build a probe request (tests, fixtures, crowd generator)."""
    hdr = struct.pack("<HH", SUBTYPE_PROBE_REQ << 4, 0) + dst + src + bssid + struct.pack("<H", (seq & 0xFFF) << 4)
    return hdr + b"".join(bytes((eid, len(body))) + body for eid, body in ies)
