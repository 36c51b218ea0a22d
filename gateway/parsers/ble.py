"""Pure parsers for BLE advertising data (AD structures) and the beacon frames carried in them.

Input is the raw advertising payload: the AD structures after the advertiser address, as in the
HCI LE Advertising Report (legacy: <= 31 bytes; extended: <= 1650 bytes). Everything is bounds
checked; the one exception type raised on bad bytes is :class:`AdvertParseError`, which names the
byte offset (into the payload) and the problem. Nothing else is raised for any input ``bytes``
(the fuzz job in ``bench/bench_ble.py`` checks that on 10^6 random and mutated payloads).

Frames understood (Bluetooth Core Supplement Part A, Apple iBeacon, Google Eddystone, AltBeacon):

* ``ibeacon``         Apple 0x004C manufacturer data ``02 15`` + UUID, major, minor, measured power
* ``altbeacon``       any company id, manufacturer data ``BE AC`` + 20-byte id, reference RSSI, reserved
* ``eddystone-uid``   service data 0xFEAA, frame 0x00: tx power @0 m, namespace (10), instance (6)
* ``eddystone-url``   frame 0x10: tx power @0 m, scheme prefix byte + URL with the expansion table
* ``eddystone-tlm``   frame 0x20: version 0 plain (battery mV, 8.8 °C, adv count, 0.1 s uptime) or
                      version 1 encrypted (ETLM 12 bytes, salt, MIC: told apart, not decrypted)
* ``eddystone-eid``   frame 0x30: tx power @0 m, 8-byte ephemeral id
* ``manufacturer`` / ``service-data``: everything else, by company id / UUID

Ranging data: iBeacon's measured power and AltBeacon's reference RSSI are RSSI at 1 m; Eddystone's
tx power is calibrated at 0 m, and Google's guidance is that 1 m is 41 dB weaker. Every frame with
ranging data exposes ``rssi_at_1m`` already normalised to 1 m.

Speed: the AD loop indexes ``bytes`` directly and decodes fixed fields with precompiled
``struct.Struct.unpack_from`` (no per-byte Python, no intermediate slices where an offset works);
string forms of UUIDs are cached because real traffic repeats the same few UUIDs.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

__all__ = [
    "EDDYSTONE_0M_TO_1M_DB",
    "MAX_ADVERT_LEN",
    "Advert",
    "AdvertParseError",
    "AltBeacon",
    "EddystoneEID",
    "EddystoneTLM",
    "EddystoneUID",
    "EddystoneURL",
    "Frame",
    "IBeacon",
    "ManufacturerData",
    "ServiceData",
    "decode_eddystone_url",
    "frame_to_dict",
    "parse_advert",
    "parse_advert_uncached",
    "parse_manufacturer_data",
    "parse_service_data",
    "rssi_at_1m_of",
    "uuid16_str",
]

EDDYSTONE_0M_TO_1M_DB = 41
"""Eddystone tx power is measured at 0 m; the signal at 1 m is this much weaker (Google's figure)."""

MAX_ADVERT_LEN = 1650
"""Longest advertising payload Bluetooth 5 allows (extended advertising, all fragments)."""

APPLE = 0x004C
EDDYSTONE_UUID16 = 0xFEAA
BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"

# AD types (Assigned Numbers, "Common Data Types").
AD_FLAGS = 0x01
AD_UUID16_INCOMPLETE = 0x02
AD_UUID16_COMPLETE = 0x03
AD_UUID32_INCOMPLETE = 0x04
AD_UUID32_COMPLETE = 0x05
AD_UUID128_INCOMPLETE = 0x06
AD_UUID128_COMPLETE = 0x07
AD_SHORT_NAME = 0x08
AD_COMPLETE_NAME = 0x09
AD_TX_POWER = 0x0A
AD_SERVICE_DATA16 = 0x16
AD_SERVICE_DATA32 = 0x20
AD_SERVICE_DATA128 = 0x21
AD_MANUFACTURER = 0xFF

_U16LE = struct.Struct("<H")
_U32LE = struct.Struct("<I")
# iBeacon after the company id: 02 15 | uuid(16) | major BE | minor BE | measured power i8
_IBEACON = struct.Struct(">2x16sHHb")
# AltBeacon after the company id: BE AC | beacon id(20) | reference rssi i8 | reserved u8
_ALTBEACON = struct.Struct(">2x20sbB")
# Eddystone UID: frame | tx i8 | namespace(10) | instance(6) [| rfu(2)]
_EDDY_UID = struct.Struct(">xb10s6s")
# Eddystone TLM v0: frame | version | vbatt BE | temp 8.8 BE signed | adv count BE | 0.1 s count BE
_EDDY_TLM = struct.Struct(">xxHhII")
_EDDY_EID = struct.Struct(">xb8s")
_I8 = struct.Struct("b")
_tuple_new = tuple.__new__  # builds a NamedTuple without its Python-level __new__ frame (2x faster)

EDDYSTONE_URL_SCHEMES = ("http://www.", "https://www.", "http://", "https://")
EDDYSTONE_URL_EXPANSIONS = (
    ".com/",
    ".org/",
    ".edu/",
    ".net/",
    ".info/",
    ".biz/",
    ".gov/",
    ".com",
    ".org",
    ".edu",
    ".net",
    ".info",
    ".biz",
    ".gov",
)


# Eddystone-URL bodies: 0x00-0x0D expand (table above), 0x21-0x7E are themselves, the rest is reserved.
_URL_PRINTABLE = bytes(range(0x21, 0x7F))


class AdvertParseError(ValueError):
    """The one error type for bad advertising bytes: ``offset`` into the payload and ``reason``."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(f"offset {offset}: {reason}")
        self.offset = offset
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.offset, self.reason))


# ---------------------------------------------------------------------------------------------
# Frames: immutable named tuples (cheap to build, safe to cache and share)
# ---------------------------------------------------------------------------------------------


class IBeacon(NamedTuple):
    uuid: str
    major: int
    minor: int
    measured_power: int  # RSSI at 1 m (dBm)
    company_id: int = APPLE

    @property
    def rssi_at_1m(self) -> float:
        return float(self.measured_power)


class AltBeacon(NamedTuple):
    company_id: int
    beacon_id: str  # 20 bytes, hex
    reference_rssi: int  # RSSI at 1 m (dBm)
    reserved: int

    @property
    def rssi_at_1m(self) -> float:
        return float(self.reference_rssi)


class EddystoneUID(NamedTuple):
    namespace: str  # 10 bytes, hex
    instance: str  # 6 bytes, hex
    tx_power: int  # at 0 m (dBm)

    @property
    def rssi_at_1m(self) -> float:
        return float(self.tx_power - EDDYSTONE_0M_TO_1M_DB)


class EddystoneURL(NamedTuple):
    url: str
    tx_power: int  # at 0 m (dBm)

    @property
    def rssi_at_1m(self) -> float:
        return float(self.tx_power - EDDYSTONE_0M_TO_1M_DB)


class EddystoneEID(NamedTuple):
    eid: str  # 8 bytes, hex
    tx_power: int

    @property
    def rssi_at_1m(self) -> float:
        return float(self.tx_power - EDDYSTONE_0M_TO_1M_DB)


class EddystoneTLM(NamedTuple):
    """Telemetry. ``encrypted`` frames (version 1) carry only ``etlm``/``salt``/``mic``."""

    encrypted: bool
    battery_mv: int | None = None  # None: not reported (0 on the air)
    temperature_c: float | None = None  # None: not supported (0x8000 on the air)
    adv_count: int | None = None
    uptime_s: float | None = None
    etlm: str | None = None
    salt: int | None = None
    mic: int | None = None

    @property
    def rssi_at_1m(self) -> None:
        return None


class ManufacturerData(NamedTuple):
    company_id: int
    data: bytes

    @property
    def rssi_at_1m(self) -> None:
        return None


class ServiceData(NamedTuple):
    uuid: str
    data: bytes

    @property
    def rssi_at_1m(self) -> None:
        return None


Frame = IBeacon | AltBeacon | EddystoneUID | EddystoneURL | EddystoneEID | EddystoneTLM | ManufacturerData | ServiceData

_FRAME_TYPE: dict[type, str] = {
    IBeacon: "ibeacon",
    AltBeacon: "altbeacon",
    EddystoneUID: "eddystone-uid",
    EddystoneURL: "eddystone-url",
    EddystoneEID: "eddystone-eid",
    EddystoneTLM: "eddystone-tlm",
    ManufacturerData: "manufacturer",
    ServiceData: "service-data",
}


def frame_to_dict(frame: Frame) -> dict[str, Any]:
    """JSON-ready form: ``type`` first, then the fields (bytes as hex), plus ``rssi_at_1m``."""
    out: dict[str, Any] = {"type": _FRAME_TYPE[type(frame)]}
    for k, v in frame._asdict().items():
        if isinstance(frame, EddystoneTLM) and v is None and k in ("etlm", "salt", "mic"):
            continue
        out[k] = v.hex() if isinstance(v, bytes) else v
    r = frame.rssi_at_1m
    if r is not None:
        out["rssi_at_1m"] = r
    return out


class Advert(NamedTuple):
    """Everything decoded from one advertising payload.

    Immutable and shared: :func:`parse_advert` caches results by payload, so treat the dicts as
    read-only.
    """

    flags: int | None
    local_name: str | None
    complete_name: bool
    tx_power: int | None
    service_uuids: tuple[str, ...]
    manufacturer_data: dict[int, bytes]
    service_data: dict[str, bytes]
    frames: tuple[Frame, ...]

    @property
    def rssi_at_1m(self) -> float | None:
        """The first frame's ranging data, normalised to 1 m (None when no frame carries any)."""
        for f in self.frames:
            r = f.rssi_at_1m
            if r is not None:
                return r
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "flags": self.flags,
            "local_name": self.local_name,
            "tx_power": self.tx_power,
            "service_uuids": list(self.service_uuids),
            "rssi_at_1m": self.rssi_at_1m,
            "frames": [frame_to_dict(f) for f in self.frames],
        }


# ---------------------------------------------------------------------------------------------
# UUID helpers (cached: the same few UUIDs dominate real traffic)
# ---------------------------------------------------------------------------------------------

_UUID_CACHE: dict[bytes, str] = {}
_UUID_CACHE_MAX = 4096


def _uuid_str(raw: bytes) -> str:
    """Canonical UUID text of 2, 4 (little-endian, over the Base UUID) or 16 bytes (as given)."""
    s = _UUID_CACHE.get(raw)
    if s is not None:
        return s
    n = len(raw)
    if n == 16:
        h = raw.hex()
        s = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    elif n == 2:
        s = f"0000{raw[1]:02x}{raw[0]:02x}{BASE_UUID_SUFFIX}"
    else:
        s = f"{_U32LE.unpack(raw)[0]:08x}{BASE_UUID_SUFFIX}"
    if len(_UUID_CACHE) >= _UUID_CACHE_MAX:
        _UUID_CACHE.clear()
    _UUID_CACHE[raw] = s
    return s


def uuid16_str(u: int) -> str:
    return f"0000{u:04x}{BASE_UUID_SUFFIX}"


EDDYSTONE_UUID = uuid16_str(EDDYSTONE_UUID16)


# ---------------------------------------------------------------------------------------------
# Frame parsers (usable on their own: bleak hands us manufacturer/service data already split)
# ---------------------------------------------------------------------------------------------


def parse_manufacturer_data(company_id: int, data: bytes, offset: int = 0) -> Frame:
    """Decode manufacturer data (``data`` after the 2-byte company id).

    ``offset`` is where ``data`` starts in the whole payload, so errors name absolute offsets.
    """
    n = len(data)
    if company_id == APPLE and n >= 2 and data[0] == 0x02 and data[1] == 0x15:
        if n < 23:
            raise AdvertParseError(offset, f"iBeacon frame is {n} bytes, needs 23")
        u, major, minor, power = _IBEACON.unpack_from(data)
        return _tuple_new(IBeacon, (_uuid_str(u), major, minor, power, APPLE))
    if n == 24 and data[0] == 0xBE and data[1] == 0xAC:
        bid, ref, reserved = _ALTBEACON.unpack_from(data)
        return _tuple_new(AltBeacon, (company_id, bid.hex(), ref, reserved))
    return _tuple_new(ManufacturerData, (company_id, bytes(data)))


def decode_eddystone_url(data: bytes, offset: int = 0) -> str:
    """Decode an Eddystone-URL body (scheme byte + encoded URL); ``offset`` is that scheme byte's."""
    if not data:
        raise AdvertParseError(offset, "Eddystone-URL frame has no URL scheme byte")
    scheme = data[0]
    if scheme >= len(EDDYSTONE_URL_SCHEMES):
        raise AdvertParseError(offset, f"Eddystone-URL scheme byte 0x{scheme:02x} is not defined (0x00-0x03)")
    body = data[1:]
    prefix = EDDYSTONE_URL_SCHEMES[scheme]
    special = body.translate(None, _URL_PRINTABLE)  # expansion codes and reserved bytes, in order
    if not special:
        return prefix + body.decode("ascii")
    out = [prefix]
    start = 0
    for b in special:
        j = body.index(b, start)
        if b >= len(EDDYSTONE_URL_EXPANSIONS):
            raise AdvertParseError(offset + 1 + j, f"Eddystone-URL byte 0x{b:02x} is reserved")
        out.append(body[start:j].decode("ascii"))
        out.append(EDDYSTONE_URL_EXPANSIONS[b])
        start = j + 1
    out.append(body[start:].decode("ascii"))
    return "".join(out)


def _parse_eddystone(data: bytes, offset: int) -> Frame:
    n = len(data)
    kind = data[0]
    if kind == 0x00:
        if n < 18:
            raise AdvertParseError(offset, f"Eddystone-UID frame is {n} bytes, needs 18")
        tx, ns, inst = _EDDY_UID.unpack_from(data)
        return _tuple_new(EddystoneUID, (ns.hex(), inst.hex(), tx))
    if kind == 0x10:
        if n < 3:
            raise AdvertParseError(offset, f"Eddystone-URL frame is {n} bytes, needs at least 3")
        if n > 20:
            raise AdvertParseError(offset, f"Eddystone-URL frame is {n} bytes, at most 20 allowed")
        tx = data[1]
        url = decode_eddystone_url(data[2:], offset + 2)
        return _tuple_new(EddystoneURL, (url, tx - 256 if tx > 127 else tx))
    if kind == 0x20:
        if n < 2:
            raise AdvertParseError(offset, "Eddystone-TLM frame has no version byte")
        version = data[1]
        if version == 0x00:
            if n != 14:
                raise AdvertParseError(offset, f"Eddystone-TLM (plain) frame is {n} bytes, needs 14")
            vbatt, temp, adv, secs = _EDDY_TLM.unpack_from(data)
            return _tuple_new(
                EddystoneTLM,
                (False, vbatt or None, None if temp == -0x8000 else temp / 256.0, adv, secs / 10.0, None, None, None),
            )
        if version == 0x01:
            if n != 18:
                raise AdvertParseError(offset, f"Eddystone-TLM (encrypted) frame is {n} bytes, needs 18")
            return EddystoneTLM(
                encrypted=True,
                etlm=data[2:14].hex(),
                salt=int.from_bytes(data[14:16], "big"),
                mic=int.from_bytes(data[16:18], "big"),
            )
        raise AdvertParseError(offset + 1, f"Eddystone-TLM version 0x{version:02x} is not defined")
    if kind == 0x30:
        if n < 10:
            raise AdvertParseError(offset, f"Eddystone-EID frame is {n} bytes, needs 10")
        tx, eid = _EDDY_EID.unpack_from(data)
        return _tuple_new(EddystoneEID, (eid.hex(), tx))
    return _tuple_new(ServiceData, (EDDYSTONE_UUID, bytes(data)))


def parse_service_data(uuid: str, data: bytes, offset: int = 0) -> Frame:
    """Decode service data (``data`` after the UUID); Eddystone under 0xFEAA, else generic."""
    if uuid == EDDYSTONE_UUID and data:
        return _parse_eddystone(data, offset)
    return _tuple_new(ServiceData, (uuid, bytes(data)))


# ---------------------------------------------------------------------------------------------
# The AD-structure walk
# ---------------------------------------------------------------------------------------------


_EMPTY_UUIDS: tuple[str, ...] = ()

_ADVERT_CACHE: dict[bytes, Advert] = {}
ADVERT_CACHE_MAX = 8192


def parse_advert(data: bytes) -> Advert:
    """Parse one raw advertising payload, with a bounded cache of recent payloads.

    Real traffic repeats byte-identical payloads (fixed beacons, phones between rotations), so a
    dict hit replaces the whole walk. Results are immutable named tuples; the dicts inside are
    shared, treat them as read-only. Raises only :class:`AdvertParseError`.
    """
    if type(data) is not bytes:
        data = bytes(data)
    adv = _ADVERT_CACHE.get(data)
    if adv is None:
        adv = parse_advert_uncached(data)
        if len(_ADVERT_CACHE) >= ADVERT_CACHE_MAX:
            _ADVERT_CACHE.clear()
        _ADVERT_CACHE[data] = adv
    return adv


def parse_advert_uncached(data: bytes) -> Advert:
    """Walk the AD structures of one payload. Raises only :class:`AdvertParseError`.

    A zero length byte ends the data (Core Vol 3 Part C 11: early termination / zero padding).
    """
    if type(data) is not bytes:
        data = bytes(data)
    n = len(data)
    if n > MAX_ADVERT_LEN:
        raise AdvertParseError(MAX_ADVERT_LEN, f"payload is {n} bytes, longer than {MAX_ADVERT_LEN}")
    flags: int | None = None
    name: str | None = None
    complete = False
    tx: int | None = None
    uuids: list[str] | None = None
    mfr: dict[int, bytes] = {}
    sdata: dict[str, bytes] = {}
    frames: list[Frame] = []
    uuid_str = _uuid_str
    ucache = _UUID_CACHE
    tn = _tuple_new
    i = 0
    while i < n:
        length = data[i]
        if length == 0:
            break
        end = i + 1 + length
        if end > n:
            raise AdvertParseError(i, f"AD structure length {length} overruns the payload ({n - i - 1} bytes left)")
        t = data[i + 1]
        s = i + 2
        dlen = length - 1
        if t == 0xFF:  # manufacturer specific data
            if dlen < 2:
                raise AdvertParseError(i, f"manufacturer data is {dlen} bytes, shorter than its company id")
            cid = data[s] | (data[s + 1] << 8)
            body = data[s + 2 : end]
            mfr[cid] = body
            b0 = body[0] if dlen > 2 else -1
            if b0 == 0x02 or b0 == 0xBE:
                frames.append(parse_manufacturer_data(cid, body, s + 2))
            else:
                frames.append(tn(ManufacturerData, (cid, body)))
        elif t == 0x01:  # flags
            flags = data[s] if dlen else 0
        elif t == 0x16:  # service data, 16-bit UUID
            if dlen < 2:
                raise AdvertParseError(i, f"16-bit service data is {dlen} bytes, shorter than its UUID")
            key = data[s : s + 2]
            u = ucache.get(key) or uuid_str(key)
            body = data[s + 2 : end]
            sdata[u] = body
            if u == EDDYSTONE_UUID and dlen > 2:
                frames.append(_parse_eddystone(body, s + 2))
            else:
                frames.append(tn(ServiceData, (u, body)))
        elif t in (0x02, 0x03):  # 16-bit service UUIDs
            if dlen & 1:
                raise AdvertParseError(i, f"16-bit UUID list is {dlen} bytes, not a multiple of 2")
            if uuids is None:
                uuids = []
            if dlen == 2:
                key = data[s:end]
                uuids.append(ucache.get(key) or uuid_str(key))
            else:
                uuids.extend([uuid_str(data[k : k + 2]) for k in range(s, end, 2)])
        elif t in (0x08, 0x09):  # shortened / complete local name
            if t == 0x09 or not complete:
                name = data[s:end].decode("utf-8", "replace")
                complete = t == 0x09
        elif t == 0x0A:  # TX power level
            if dlen != 1:
                raise AdvertParseError(i, f"TX power level is {dlen} bytes, must be 1")
            tx = data[s]
            if tx > 127:
                tx -= 256
        elif t in (0x06, 0x07):  # 128-bit service UUIDs
            if dlen & 15:
                raise AdvertParseError(i, f"128-bit UUID list is {dlen} bytes, not a multiple of 16")
            if uuids is None:
                uuids = []
            uuids.extend([uuid_str(data[k : k + 16][::-1]) for k in range(s, end, 16)])
        elif t in (0x04, 0x05):  # 32-bit service UUIDs
            if dlen & 3:
                raise AdvertParseError(i, f"32-bit UUID list is {dlen} bytes, not a multiple of 4")
            if uuids is None:
                uuids = []
            uuids.extend([uuid_str(data[k : k + 4]) for k in range(s, end, 4)])
        elif t == 0x20:  # service data, 32-bit UUID
            if dlen < 4:
                raise AdvertParseError(i, f"32-bit service data is {dlen} bytes, shorter than its UUID")
            u = uuid_str(data[s : s + 4])
            body = data[s + 4 : end]
            sdata[u] = body
            frames.append(tn(ServiceData, (u, body)))
        elif t == 0x21:  # service data, 128-bit UUID
            if dlen < 16:
                raise AdvertParseError(i, f"128-bit service data is {dlen} bytes, shorter than its UUID")
            u = uuid_str(data[s : s + 16][::-1])
            body = data[s + 16 : end]
            sdata[u] = body
            frames.append(tn(ServiceData, (u, body)))
        i = end
    return tn(
        Advert,
        (flags, name, complete, tx, _EMPTY_UUIDS if uuids is None else tuple(uuids), mfr, sdata, tuple(frames)),
    )


def rssi_at_1m_of(manufacturer_data: dict[int, bytes], service_data: dict[str, bytes]) -> float | None:
    """Normalised ranging data from already-split adverts (bleak's ``AdvertisementData``).

    Malformed beacon frames raise :class:`AdvertParseError`; callers count and carry on.
    """
    for cid, body in manufacturer_data.items():
        r = parse_manufacturer_data(cid, body).rssi_at_1m
        if r is not None:
            return r
    eddy = service_data.get(EDDYSTONE_UUID)
    if eddy:
        return _parse_eddystone(eddy, 0).rssi_at_1m
    return None
