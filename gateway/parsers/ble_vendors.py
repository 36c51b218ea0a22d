"""What kind of thing sent a BLE advert: vendor messages in manufacturer and service data.

Pure and total: :func:`describe` takes the already split parts of one advert (``parse_advert`` or
bleak hand them over that way) and returns the vendor messages it recognises. It never raises: a
vendor message too short for its layout comes back as ``<message>-malformed`` with the device kind
still set (the company or service says enough), and anything unknown is ``manufacturer`` /
``service-data`` with the SIG company name. The fuzz job in ``bench/bench_ble.py`` checks that.

Each message carries

* ``kind``: phone | computer | earbuds | wearable | tracker | accessory | beacon | sensor | fixture |
  scanner | unknown (what presence needs: a person's phone, something carried with it, or a thing
  that belongs to the store);
* ``fields``: decoded, JSON-ready values (hex for opaque bytes);
* ``stable``: the fields that, per the published analyses below, do **not** change when the device
  draws a new random address (the rotation linker compares them); ``seq``: a counter that keeps
  counting across a rotation (Handoff IV sequence number, SmartTag aging counter) or None.

Layouts and what rotates (sources, read for this module):

* Apple Continuity (company 0x004C): a list of ``type, length, value`` messages (furiousMAC
  "continuity" protocol notes; Martin et al., "Handoff All Your Privacy", PoPETs 2019; Celosia &
  Cunche, "Discontinued Privacy", PoPETs 2020). Nearby Info 0x10: byte 0 = status flags (high
  nibble) and action code (low nibble), byte 1 = data flags (Wi-Fi on, iOS version bits), then a
  3-byte authentication tag that changes with the address. Handoff 0x0C: clipboard status, a 2-byte
  IV **sequence number** that only increments (Martin et al. link rotations with it), auth tag,
  encrypted activity. Proximity Pairing 0x07 (AirPods/Beats): prefix, device model (2 bytes),
  status, battery levels, lid-open counter, colour, then encrypted data. Find My 0x12: status byte,
  then (separated from the owner, 25 bytes) the rotating public key. Nearby Action 0x0F: flags,
  action type, auth tag. AirPlay Target 0x09, HomeKit 0x06, AirPrint 0x03: fixed appliances.
* Microsoft (0x0006): Connected Devices Platform beacon ([MS-CDP] 2.2.2.2): scenario type 1,
  version + device type (low 5 bits: 1 Xbox, 6 iPhone, 7 iPad, 8 Android, 9 Windows desktop,
  11 Windows phone, 12 Linux, 13 Windows IoT, 14 Surface Hub, 15 Windows laptop), version + flags,
  flags + status, then a 4-byte salt and a 19-byte device hash (rotating). Swift Pair (Microsoft
  "Bluetooth Swift Pair" guide): ``03`` (Microsoft Beacon ID), sub-scenario, reserved RSSI byte.
* Google Fast Pair (service 0xFE2C, Fast Pair specification "Advertising"): 3 bytes = the
  provider's model id (discoverable mode, stable); longer = not discoverable: a flags/length byte
  then the account key filter and salt (rotating). Find My Device Network (service 0xFEAA, frame
  types 0x40/0x41, Fast Pair FMDN extension): an ephemeral id that rotates with the address.
* Samsung SmartTag (service 0xFD5A; Yu et al., arXiv 2210.14702): state byte, a 3-byte aging
  counter that increments each time the privacy id and address rotate (``seq``), 8-byte privacy id,
  region, battery/flags, signature.
* Tile (services 0xFEED/0xFEEC/0xFD84): a static tile id (Tile keeps its address too).
* Exposure Notification (service 0xFD6F, Apple/Google specification): a rolling proximity id and
  metadata that rotate with the address by design.
* Beacons: iBeacon, AltBeacon, Eddystone (``gateway.parsers.ble``). Sensors: Xiaomi MiBeacon 0xFE95,
  ATC/PVVX thermometers 0x181A, Qingping 0xFDCD, SwitchBot 0xFD3D, BTHome 0xFCD2, RuuviTag 0x0499,
  Govee 0xEC88. Wearables: Polar, Garmin, Huami, Heart Rate service 0x180D.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any, Literal, NamedTuple, get_args

from gateway.models import AdvertInfo
from gateway.parsers.ble_companies import company_name

__all__ = [
    "DEVICE_KINDS",
    "DeviceKind",
    "VendorMessage",
    "advert_info",
    "advert_kind",
    "advert_signature",
    "describe",
    "is_manufacturer_only",
]

DeviceKind = Literal[
    "phone",
    "computer",
    "earbuds",
    "wearable",
    "tracker",
    "accessory",
    "beacon",
    "sensor",
    "fixture",
    "scanner",
    "unknown",
]
DEVICE_KINDS: tuple[DeviceKind, ...] = get_args(DeviceKind)
# when one advert carries several messages, the first kind in this order names the device
_KIND_RANK = {k: i for i, k in enumerate(DEVICE_KINDS)}

APPLE = 0x004C
MICROSOFT = 0x0006


class VendorMessage(NamedTuple):
    message: str
    kind: DeviceKind
    vendor: str
    fields: dict[str, Any]
    stable: str = ""
    seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "kind": self.kind, "vendor": self.vendor}
        out.update(self.fields)
        return out


def _u(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


# -- Apple Continuity --------------------------------------------------------------------------------

_APPLE_TYPES: dict[int, tuple[str, DeviceKind]] = {
    0x02: ("ibeacon", "beacon"),
    0x03: ("apple-airprint", "fixture"),
    0x05: ("apple-airdrop", "phone"),
    0x06: ("apple-homekit", "fixture"),
    0x07: ("apple-proximity-pairing", "earbuds"),
    0x08: ("apple-hey-siri", "phone"),
    0x09: ("apple-airplay-target", "fixture"),
    0x0A: ("apple-airplay-source", "phone"),
    0x0B: ("apple-magic-switch", "wearable"),
    0x0C: ("apple-handoff", "phone"),
    0x0D: ("apple-tethering-target", "computer"),
    0x0E: ("apple-tethering-source", "phone"),
    0x0F: ("apple-nearby-action", "phone"),
    0x10: ("apple-nearby-info", "phone"),
    0x12: ("apple-find-my", "tracker"),
}

# Proximity Pairing device models (AppleJuice / furiousMAC tables; bytes as sent, big endian)
_APPLE_MODELS = {
    0x0220: "AirPods",
    0x0F20: "AirPods (2nd gen)",
    0x1320: "AirPods (3rd gen)",
    0x0E20: "AirPods Pro",
    0x1420: "AirPods Pro (2nd gen)",
    0x0A20: "AirPods Max",
    0x0320: "Powerbeats3",
    0x0B20: "Powerbeats Pro",
    0x0520: "BeatsX",
    0x0620: "Beats Solo3",
    0x0920: "Beats Studio3",
    0x1020: "Beats Flex",
    0x1120: "Beats Studio Buds",
    0x0055: "AirTag",
    0x0030: "Hermes AirTag",
}

_NEARBY_ACTIONS = {
    0x0: "activity level unknown",
    0x1: "activity reporting disabled",
    0x3: "idle user",
    0x5: "audio playing, screen locked",
    0x7: "screen on",
    0x9: "screen on, video playing",
    0xA: "watch on wrist, unlocked",
    0xB: "recent user interaction",
    0xD: "user driving",
    0xE: "phone or FaceTime call",
}


def _apple(data: bytes) -> list[VendorMessage]:
    out: list[VendorMessage] = []
    i, n = 0, len(data)
    while i < n:
        t = data[i]
        if i + 1 >= n:
            out.append(VendorMessage("apple-malformed", "phone", "Apple", {"reason": "type without length"}))
            break
        ln = data[i + 1]
        v = data[i + 2 : i + 2 + ln]
        if len(v) < ln:
            name, kind = _APPLE_TYPES.get(t, (f"apple-0x{t:02x}", "unknown"))
            out.append(VendorMessage(f"{name}-malformed", kind, "Apple", {"reason": f"length {ln} overruns"}))
            break
        out.append(_apple_message(t, v))
        i += 2 + ln
    return out


def _apple_message(t: int, v: bytes) -> VendorMessage:
    name, kind = _APPLE_TYPES.get(t, (f"apple-0x{t:02x}", "unknown"))
    n = len(v)
    if t == 0x10 and n >= 2:
        action = v[0] & 0x0F
        return VendorMessage(
            name,
            kind,
            "Apple",
            {
                "status_flags": v[0] >> 4,
                "action_code": action,
                "action": _NEARBY_ACTIONS.get(action, "other"),
                "data_flags": v[1],
                "wifi_on": bool(v[1] & 0x04) if n >= 2 else None,
                "auth_tag": v[2:].hex(),
            },
            stable=f"ni{v[0]:02x}{v[1]:02x}",
        )
    if t == 0x0C and n >= 3:
        seq = v[1] | (v[2] << 8)
        return VendorMessage(
            name, kind, "Apple", {"clipboard": v[0], "sequence": seq, "payload": v[3:].hex()}, f"ho{v[0]:02x}", seq
        )
    if t == 0x07 and n >= 9:
        model = (v[1] << 8) | v[2]
        mname = _APPLE_MODELS.get(model)
        kind2: DeviceKind = "tracker" if mname is not None and "AirTag" in mname else kind
        return VendorMessage(
            name,
            kind2,
            "Apple",
            {
                "model_id": f"{model:04x}",
                "model": mname or "unknown",
                "status": v[3],
                "battery_right": v[4] >> 4,
                "battery_left": v[4] & 0x0F,
                "battery_case": v[5] & 0x0F,
                "lid_counter": v[6],
                "color": v[7],
            },
            stable=f"pp{model:04x}{v[7]:02x}",
        )
    if t == 0x12 and n >= 1:
        mode = "separated" if n >= 25 else "near-owner"
        return VendorMessage(name, kind, "Apple", {"status": v[0], "mode": mode}, f"fm{v[0]:02x}{mode[0]}")
    if t == 0x0F and n >= 2:
        return VendorMessage(name, kind, "Apple", {"flags": v[0], "action_type": v[1]}, f"na{v[1]:02x}")
    if t == 0x02 and n >= 21:
        u = v[:16].hex()
        major = (v[16] << 8) | v[17]
        minor = (v[18] << 8) | v[19]
        return VendorMessage(
            name, kind, "Apple", {"uuid": u, "major": major, "minor": minor}, f"ib{u}{major:04x}{minor:04x}"
        )
    if t in (0x09, 0x06, 0x03, 0x0B, 0x0D, 0x0E, 0x05, 0x0A, 0x08):
        return VendorMessage(name, kind, "Apple", {"length": n}, f"a{t:02x}")
    if t in _APPLE_TYPES:
        return VendorMessage(f"{name}-malformed", kind, "Apple", {"length": n})
    return VendorMessage(name, kind, "Apple", {"length": n, "data": v.hex()})


# -- Microsoft -------------------------------------------------------------------------------------

_CDP_DEVICE_TYPES: dict[int, tuple[str, DeviceKind]] = {
    1: ("Xbox One", "fixture"),
    6: ("Apple iPhone", "phone"),
    7: ("Apple iPad", "phone"),
    8: ("Android device", "phone"),
    9: ("Windows 10 Desktop", "computer"),
    11: ("Windows 10 Phone", "phone"),
    12: ("Linux device", "computer"),
    13: ("Windows IoT", "fixture"),
    14: ("Surface Hub", "fixture"),
    15: ("Windows laptop", "computer"),
}


def _microsoft(data: bytes) -> VendorMessage:
    n = len(data)
    if n >= 1 and data[0] == 0x03:  # Swift Pair: Microsoft Beacon ID 0x03
        if n < 3:
            return VendorMessage("ms-swift-pair-malformed", "accessory", "Microsoft", {"length": n})
        sub = data[1]
        name = data[3:].decode("utf-8", "replace") if sub == 0x00 and n > 3 else None
        return VendorMessage(
            "ms-swift-pair",
            "accessory",
            "Microsoft",
            {"sub_scenario": sub, "reserved_rssi": data[2], **({"display_name": name} if name else {})},
            stable=f"sp{sub:02x}{_short_hash(data[3:])}",
        )
    if n >= 1 and data[0] == 0x01:  # CDP, Bluetooth scenario
        if n < 4:
            return VendorMessage("ms-cdp-malformed", "computer", "Microsoft", {"length": n})
        dtype = data[1] & 0x1F
        dname, kind = _CDP_DEVICE_TYPES.get(dtype, (f"type {dtype}", "computer"))
        return VendorMessage(
            "ms-cdp",
            kind,
            "Microsoft",
            {"device_type": dtype, "device": dname, "version": data[1] >> 5, "flags": data[2], "status": data[3]},
            stable=f"cdp{data[:4].hex()}",
        )
    return VendorMessage("manufacturer", "unknown", "Microsoft", {"company_id": MICROSOFT, "data": data.hex()})


# -- service data ---------------------------------------------------------------------------------

_FAST_PAIR = _u(0xFE2C)
_EDDYSTONE = _u(0xFEAA)
_SMARTTAG = _u(0xFD5A)
_TILE = (_u(0xFEED), _u(0xFEEC), _u(0xFD84))
_EXPOSURE = _u(0xFD6F)

# plain "this service means this kind of device" (no fields decoded beyond the length)
_SERVICE_KINDS: dict[str, tuple[str, DeviceKind, str]] = {
    _u(0xFE95): ("xiaomi-mibeacon", "sensor", "Xiaomi"),
    _u(0x181A): ("environmental-sensing", "sensor", "ATC/PVVX firmware"),
    _u(0xFDCD): ("qingping", "sensor", "Qingping"),
    _u(0xFD3D): ("switchbot", "sensor", "SwitchBot"),
    _u(0xFCD2): ("bthome", "sensor", "BTHome"),
    _u(0xFE9F): ("google-nearby", "phone", "Google"),
    _u(0xFEF3): ("google-fe3f", "phone", "Google"),
    _u(0x181D): ("weight-scale", "sensor", "Bluetooth SIG"),
    _u(0x181B): ("body-composition", "sensor", "Bluetooth SIG"),
    _u(0x180F): ("battery-service", "unknown", "Bluetooth SIG"),
}

# advertised service UUIDs that say what the device is
_UUID_KINDS: dict[str, tuple[str, DeviceKind]] = {
    _u(0x180D): ("heart-rate", "wearable"),
    _u(0x1812): ("hid", "accessory"),
    _u(0x184E): ("le-audio", "earbuds"),
    _u(0x1853): ("le-audio", "earbuds"),
    _u(0xFE2C): ("google-fast-pair", "earbuds"),
    _u(0xFD5A): ("samsung-smarttag", "tracker"),
    _u(0xFEED): ("tile", "tracker"),
    _u(0xFD6F): ("exposure-notification", "phone"),
}


def _service(uuid: str, data: bytes) -> VendorMessage | None:
    n = len(data)
    if uuid == _FAST_PAIR:
        if n == 3:
            model = data.hex()
            return VendorMessage(
                "google-fast-pair", "earbuds", "Google", {"model_id": model, "discoverable": True}, f"fp{model}"
            )
        if n == 0:
            return VendorMessage("google-fast-pair-malformed", "earbuds", "Google", {"length": 0})
        return VendorMessage(
            "google-fast-pair",
            "earbuds",
            "Google",
            {"discoverable": False, "flags": data[0], "account_key_filter": data[1:].hex()},
            f"fpnd{data[0]:02x}",
        )
    if uuid == _EDDYSTONE and n >= 1 and data[0] in (0x40, 0x41):
        return VendorMessage(
            "google-fmdn",
            "tracker",
            "Google",
            {"frame": data[0], "ephemeral_id": data[1:21].hex()},
            f"fmdn{data[0]:02x}",
        )
    if uuid == _SMARTTAG:
        if n < 13:
            return VendorMessage("samsung-smarttag-malformed", "tracker", "Samsung", {"length": n})
        aging = (data[1] << 16) | (data[2] << 8) | data[3]
        return VendorMessage(
            "samsung-smarttag",
            "tracker",
            "Samsung",
            {"state": data[0], "aging_counter": aging, "privacy_id": data[4:12].hex(), "flags": data[12]},
            f"st{data[0]:02x}{data[12]:02x}",
            aging,
        )
    if uuid in _TILE:
        return VendorMessage("tile", "tracker", "Tile", {"tile_id": data.hex()}, f"tile{data.hex()}")
    if uuid == _EXPOSURE:
        return VendorMessage(
            "exposure-notification", "phone", "Apple/Google", {"rpi": data[:16].hex(), "aem": data[16:20].hex()}, "en"
        )
    k = _SERVICE_KINDS.get(uuid)
    if k is not None:
        return VendorMessage(k[0], k[1], k[2], {"length": n}, f"sd{uuid[4:8]}")
    return None


# -- other manufacturers --------------------------------------------------------------------------

_COMPANY_KINDS: dict[int, tuple[str, DeviceKind]] = {
    0x0075: ("samsung", "phone"),
    0x00E0: ("google", "phone"),
    0x027D: ("huawei", "phone"),
    0x038F: ("xiaomi", "phone"),
    0x006B: ("polar", "wearable"),
    0x0087: ("garmin", "wearable"),
    0x0157: ("huami", "wearable"),
    0x00DC: ("oral-b", "accessory"),
    0x0065: ("hp", "fixture"),
    0x00C4: ("lg", "fixture"),
    0x05A7: ("sonos", "fixture"),
    0x0171: ("amazon", "fixture"),
    0x01F1: ("zebra", "scanner"),
    0x0499: ("ruuvitag", "sensor"),
    0xEC88: ("govee", "sensor"),
    0x0969: ("switchbot", "sensor"),
}


def _company(cid: int) -> str:
    return company_name(cid) or f"unassigned 0x{cid:04x}"


def _short_hash(b: bytes) -> str:
    return hashlib.blake2s(b, digest_size=4).hexdigest() if b else ""


def describe(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    service_uuids: Iterable[str] = (),
) -> tuple[VendorMessage, ...]:
    """Every vendor message recognised in one advert (possibly none). Never raises."""
    out: list[VendorMessage] = []
    for cid, body in manufacturer_data.items():
        if cid == APPLE:
            out.extend(_apple(bytes(body)))
        elif cid == MICROSOFT:
            out.append(_microsoft(bytes(body)))
        elif len(body) == 24 and body[:2] == b"\xbe\xac":
            out.append(
                VendorMessage(
                    "altbeacon", "beacon", _company(cid), {"beacon_id": body[2:22].hex()}, f"alt{body[2:22].hex()}"
                )
            )
        else:
            ck = _COMPANY_KINDS.get(cid)
            if ck is not None:
                # the header bytes of a vendor's format (message type, device model) do not rotate
                out.append(
                    VendorMessage(
                        ck[0],
                        ck[1],
                        _company(cid),
                        {"company_id": cid, "data": body.hex()},
                        f"m{cid:04x}{len(body)}{body[:3].hex()}",
                    )
                )
            else:
                out.append(
                    VendorMessage(
                        "manufacturer",
                        "unknown",
                        _company(cid),
                        {"company_id": cid, "data": body.hex()},
                        f"m{cid:04x}{len(body)}",
                    )
                )
    for uuid, body in service_data.items():
        m = _service(uuid, bytes(body))
        if m is None and uuid == _EDDYSTONE:
            m = VendorMessage(
                "eddystone", "beacon", "Google", {"frame": body[0] if body else None}, f"ed{bytes(body[:1]).hex()}"
            )
        if m is not None:
            out.append(m)
    if not out:
        for u in service_uuids:
            k = _UUID_KINDS.get(u)
            if k is not None:
                out.append(
                    VendorMessage(k[0], k[1], "Bluetooth SIG" if u[4:6] == "18" else "", {"uuid": u}, f"u{u[4:8]}")
                )
    return tuple(out)


def advert_kind(messages: Iterable[VendorMessage]) -> DeviceKind:
    """The device kind of an advert: the highest-ranked kind among its messages."""
    best: DeviceKind = "unknown"
    for m in messages:
        if _KIND_RANK[m.kind] < _KIND_RANK[best]:
            best = m.kind
    return best


def advert_signature(
    messages: Iterable[VendorMessage], *, tx_power: int | None, flags: int | None, local_name: str | None
) -> str:
    """What the advert carries that survives an address rotation (RAM only; never stored or sent).

    Message names with their stable fields, the AD flags, the advertised TX power and a short hash
    of the local name (the name itself is personal data and stays out of the signature).
    """
    parts = sorted(f"{m.message}:{m.stable}" for m in messages)
    name = _short_hash(local_name.encode("utf-8", "replace")) if local_name else ""
    return (
        f"{'|'.join(parts)}/f{flags if flags is not None else '-'}/t{tx_power if tx_power is not None else '-'}/{name}"
    )


def is_manufacturer_only(data: bytes) -> bool:
    """Does ``data`` look like bare manufacturer data (company id + body) rather than AD structures?

    Used by ``gateway decode ble`` for a hint: AD structures start with a length byte then a type;
    bare manufacturer data starts with a little-endian company id such as ``4c 00`` or ``06 00``.
    """
    if len(data) < 3:
        return False
    cid = data[0] | (data[1] << 8)
    if cid in (APPLE, MICROSOFT) or cid in _COMPANY_KINDS:
        return True
    # an AD walk that overruns on the very first structure is another strong sign
    return data[0] + 1 > len(data) and company_name(cid) is not None


_INFO_CACHE: dict[tuple[object, ...], AdvertInfo] = {}


def advert_info(
    manufacturer_data: Mapping[int, bytes],
    service_data: Mapping[str, bytes],
    *,
    rotating: bool,
    service_uuids: Iterable[str] = (),
    tx_power: int | None = None,
    flags: int | None = None,
    local_name: str | None = None,
) -> AdvertInfo:
    """The ``Observation.adv`` of one advert (cached: a device repeats its payload between rotations).

    ``rotating``: the address is a private one (resolvable or not) that the device will replace.
    """
    uu = tuple(service_uuids)
    key = (tuple(manufacturer_data.items()), tuple(service_data.items()), uu, rotating, tx_power, flags, local_name)
    info = _INFO_CACHE.get(key)
    if info is None:
        msgs = describe(manufacturer_data, service_data, uu)
        seq = next((m.seq for m in msgs if m.seq is not None), None)
        sig = advert_signature(msgs, tx_power=tx_power, flags=flags, local_name=local_name)
        info = AdvertInfo(advert_kind(msgs), sig, rotating, seq)
        if len(_INFO_CACHE) >= 65536:
            _INFO_CACHE.clear()
        _INFO_CACHE[key] = info
    return info
