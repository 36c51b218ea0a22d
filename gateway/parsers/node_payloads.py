"""Pure decoders for sensor-node MQTT traffic: ESPresense topics/payloads and our native topic.

Two families arrive on the store-local broker (see docs/nodes.md and hardware/sensor-nodes/):

* **ESPresense** (off-the-shelf firmware). ``<prefix>/devices/<device-id>/<room>``: one JSON object
  per heard device and report, e.g. ``{"mac": "d83addb1ee01", "id": "irk:...", "rssi@1m": -65,
  "rssi": -71.2, "rxAdj": 0, "distance": 2.4, ...}`` (v4 keys; v3 adds ``raw``, ``idType``,
  ``speed``). Node health: ``<prefix>/rooms/<room>/telemetry`` (JSON, ``uptime`` in s, every 15 s)
  and ``<prefix>/rooms/<room>/status`` (``online``/``offline``, the node's MQTT last will).
* **Native** (our optional firmware): ``<native>/<node>/adv`` batches of raw advertisements with a
  node timestamp, and ``<native>/<node>/status`` (retained JSON or ``offline`` last will).

Everything here is a pure function of its input. Bad input raises :class:`NodePayloadError`, which
names the field and the problem (the caller counts it per node and drops the message). The topic of
an ESPresense device message contains the device id (a MAC or an IRK), so neither topics nor
payloads are ever put in an error message or a log line.

Identity rules for ESPresense messages (why: ``Observation.device`` must mean the same thing as for
the gateway's own BLE radio, and ``link`` must only join addresses that really are one device):

* ``device`` is the advertiser MAC from ``mac`` in the BLE source's form (``AA:BB:CC:DD:EE:FF``);
  without a usable ``mac`` it is ESPresense's ``id``.
* ``link`` is set only for ids that name one physical device: ``irk:<32 hex>`` (RPA resolved on the
  node; turned into the same one-way tag the BLE stage uses, so consents match), ``iBeacon:``,
  ``eddy:``/``altBeacon:`` beacon ids and ``known:`` MACs. Fingerprint-class ids (``apple:1005:9-26``,
  ``msft:cdp:...``, ``name:...``) are shared by many phones and are never links.
* ``rssi_at_1m`` is kept only for beacon ids, where it is the advertised measured power. ESPresense
  fills ``rssi@1m`` for every device, with the node's default reference when it knows nothing, and
  a default must not pose as a calibration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from gateway.models import irk_link
from gateway.parsers.ble import AdvertParseError, parse_advert

__all__ = [
    "MAX_NATIVE_ADVERTS",
    "MAX_PAYLOAD_BYTES",
    "EspDevice",
    "NativeAdvert",
    "NativeBatch",
    "NodePayloadError",
    "NodeTelemetry",
    "TopicKind",
    "TopicRouter",
    "decode_espresense_device",
    "decode_espresense_devices",
    "decode_espresense_telemetry",
    "decode_native_adv",
    "decode_status",
    "espresense_device_from_doc",
    "mac_to_device",
]

MAX_PAYLOAD_BYTES = 16_384  # an ESPresense report is ~200 B; a native batch of 200 adverts ~16 kB
MAX_NATIVE_ADVERTS = 500
MAX_ID_LEN = 128
RSSI_MIN, RSSI_MAX = -130.0, 20.0
_HEX = frozenset("0123456789abcdefABCDEF")
_LINK_PREFIXES = ("iBeacon:", "eddy:", "altBeacon:", "known:")
_BEACON_PREFIXES = ("iBeacon:", "eddy:", "altBeacon:")

TopicKind = Literal[
    "esp_device", "esp_telemetry", "esp_status", "native_adv", "native_status", "native_wifi", "ignored"
]


class NodePayloadError(ValueError):
    """A node message that cannot be used; ``field`` names where, ``reason`` what (no payload data)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TopicRouter:
    """Classifies a topic into (kind, node name); the subscriptions it needs are ``filters``.

    Prefixes may contain ``/`` (e.g. ``store-1/espresense``). A topic with empty or wildcard
    segments, or with more levels than the pattern, is ``ignored`` (never an observation).
    """

    espresense_prefix: str = "espresense"
    native_prefix: str = "retail-node"

    @property
    def filters(self) -> list[str]:
        e, n = self.espresense_prefix, self.native_prefix
        return [
            f"{e}/devices/+/+",
            f"{e}/rooms/+/telemetry",
            f"{e}/rooms/+/status",
            f"{n}/+/adv",
            f"{n}/+/status",
            f"{n}/+/wifi",
        ]

    def classify(self, topic: str) -> tuple[TopicKind, str]:
        e = self.espresense_prefix
        if topic.startswith(e) and topic[len(e) : len(e) + 1] == "/":
            parts = topic[len(e) + 1 :].split("/")
            if len(parts) == 3 and all(parts) and "+" not in topic and "#" not in topic:
                if parts[0] == "devices":
                    return "esp_device", parts[2]
                if parts[0] == "rooms" and parts[2] == "telemetry":
                    return "esp_telemetry", parts[1]
                if parts[0] == "rooms" and parts[2] == "status":
                    return "esp_status", parts[1]
            return "ignored", ""
        n = self.native_prefix
        if topic.startswith(n) and topic[len(n) : len(n) + 1] == "/":
            parts = topic[len(n) + 1 :].split("/")
            if len(parts) == 2 and parts[0] and "+" not in topic and "#" not in topic:
                if parts[1] == "adv":
                    return "native_adv", parts[0]
                if parts[1] == "status":
                    return "native_status", parts[0]
                if parts[1] == "wifi":  # probe requests the node heard (models.WifiNodeReport)
                    return "native_wifi", parts[0]
        return "ignored", ""


# -- helpers ------------------------------------------------------------------------------------


_MAC_CACHE: dict[str, str | None] = {}
_LINK_CACHE: dict[str, str | None] = {}
_CACHE_MAX = 65_536


def mac_to_device(mac: str) -> str | None:
    """``d83addb1ee01`` / ``d8:3a:dd:b1:ee:01`` / ``D8-3A-...`` -> ``D8:3A:DD:B1:EE:01``; None if not a MAC.

    Cached: the same few hundred addresses repeat in every report round.
    """
    try:
        return _MAC_CACHE[mac]
    except KeyError:
        pass
    if len(_MAC_CACHE) >= _CACHE_MAX:
        _MAC_CACHE.clear()
    r = _MAC_CACHE[mac] = _mac_to_device(mac)
    return r


def _mac_to_device(mac: str) -> str | None:
    if len(mac) == 12:
        h = mac
    elif len(mac) == 17 and mac[2::3] in (":::::", "-----"):
        h = mac[0:2] + mac[3:5] + mac[6:8] + mac[9:11] + mac[12:14] + mac[15:17]
    else:
        return None
    if not _HEX.issuperset(h):
        return None
    h = h.upper()
    return f"{h[0:2]}:{h[2:4]}:{h[4:6]}:{h[6:8]}:{h[8:10]}:{h[10:12]}"


def _number(doc: dict[str, Any], key: str, lo: float, hi: float, required: bool) -> float | None:
    v = doc.get(key)
    if v is None:
        if required:
            raise NodePayloadError(key, "missing")
        return None
    # bool is an int subclass: "rssi": true is malformed, not 1 dBm
    if type(v) is not float and type(v) is not int:
        raise NodePayloadError(key, f"expected a number, got {type(v).__name__}")
    f = float(v)
    if not (lo <= f <= hi):  # also rejects NaN (json.loads accepts the NaN literal)
        raise NodePayloadError(key, f"{f!r} out of range [{lo:g}, {hi:g}]")
    return f


def _load_object(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise NodePayloadError("payload", f"{len(payload)} bytes, more than {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        pos = getattr(e, "pos", None)
        where = f" at byte {pos}" if pos is not None else ""
        raise NodePayloadError("payload", f"not valid JSON{where}") from None
    except RecursionError:
        raise NodePayloadError("payload", "JSON nested too deeply") from None
    if type(doc) is not dict:
        raise NodePayloadError("payload", f"expected a JSON object, got {type(doc).__name__}")
    return doc


# -- ESPresense ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EspDevice:
    device: str
    link: str | None
    rssi: float
    rssi_at_1m: float | None


def _link_of(ident: str) -> str | None:
    try:
        return _LINK_CACHE[ident]
    except KeyError:
        pass
    if len(_LINK_CACHE) >= _CACHE_MAX:
        _LINK_CACHE.clear()
    r = _LINK_CACHE[ident] = _link_of_uncached(ident)
    return r


def _link_of_uncached(ident: str) -> str | None:
    if ident.startswith("irk:"):
        h = ident[4:]
        if len(h) == 32 and _HEX.issuperset(h):
            return irk_link(bytes.fromhex(h))
        return None
    if ident.startswith(_LINK_PREFIXES):
        return ident
    return None


def decode_espresense_device(payload: bytes) -> EspDevice:
    """One ``<prefix>/devices/<id>/<room>`` payload -> what the gateway keeps of it."""
    return espresense_device_from_doc(_load_object(payload))


def decode_espresense_devices(payloads: list[bytes]) -> list[EspDevice | NodePayloadError]:
    """Many payloads *from one node* at once: one ``json.loads`` of the joined array when every payload
    is a plain object (a third of the per-message cost of separate calls), else one by one.

    Only ever call it with one node's messages: if a crafted payload shifted the array's element
    boundaries, the damage stays within that node's own observations.
    """
    if len(payloads) > 1 and all(p[:1] == b"{" and p[-1:] == b"}" and len(p) <= MAX_PAYLOAD_BYTES for p in payloads):
        try:
            docs = json.loads(b"[" + b",".join(payloads) + b"]")
        except (ValueError, RecursionError):
            docs = None
        if type(docs) is list and len(docs) == len(payloads):
            out: list[EspDevice | NodePayloadError] = []
            for doc in docs:
                try:
                    if type(doc) is not dict:
                        raise NodePayloadError("payload", f"expected a JSON object, got {type(doc).__name__}")
                    out.append(espresense_device_from_doc(doc))
                except NodePayloadError as e:
                    out.append(e)
            return out
    res: list[EspDevice | NodePayloadError] = []
    for p in payloads:
        try:
            res.append(decode_espresense_device(p))
        except NodePayloadError as e:
            res.append(e)
    return res


def espresense_device_from_doc(doc: dict[str, Any]) -> EspDevice:
    rssi = _number(doc, "rssi", RSSI_MIN, RSSI_MAX, True)
    assert rssi is not None
    ident = doc.get("id")
    if ident is not None and (type(ident) is not str or not (0 < len(ident) <= MAX_ID_LEN)):
        raise NodePayloadError("id", f"expected a string of 1-{MAX_ID_LEN} characters")
    mac = doc.get("mac")
    device: str | None = None
    if mac is not None:
        if type(mac) is not str:
            raise NodePayloadError("mac", f"expected a string, got {type(mac).__name__}")
        device = mac_to_device(mac)
        if device is None:
            raise NodePayloadError("mac", "not a 48-bit MAC address")
    if device is None:
        if ident is None:
            raise NodePayloadError("id", "missing (and no mac)")
        device = ident
    link = _link_of(ident) if ident is not None else None
    r1m: float | None = None
    if ident is not None and ident.startswith(_BEACON_PREFIXES):
        r1m = _number(doc, "rssi@1m", RSSI_MIN, RSSI_MAX, False)
    return EspDevice(device, link, rssi, r1m)


@dataclass(frozen=True, slots=True)
class NodeTelemetry:
    """The parts of a node's health report the gateway shows; every field is optional."""

    uptime_s: float | None = None
    wifi_rssi: float | None = None
    version: str | None = None
    free_heap: int | None = None
    adverts: int | None = None
    drops: int | None = None


def _short_str(doc: dict[str, Any], key: str) -> str | None:
    v = doc.get(key)
    return v[:64] if type(v) is str else None


def _int(doc: dict[str, Any], key: str) -> int | None:
    v = doc.get(key)
    return int(v) if type(v) is int and v >= 0 else None


def decode_espresense_telemetry(payload: bytes) -> NodeTelemetry:
    """``<prefix>/rooms/<room>/telemetry``: uptime (s), Wi-Fi RSSI, version, heap, advert count."""
    doc = _load_object(payload)
    return NodeTelemetry(
        uptime_s=_number(doc, "uptime", 0, 10 * 365 * 86400, False),
        wifi_rssi=_number(doc, "rssi", RSSI_MIN, RSSI_MAX, False),
        version=_short_str(doc, "ver") or _short_str(doc, "firm"),
        free_heap=_int(doc, "freeHeap"),
        adverts=_int(doc, "adverts"),
    )


def decode_status(payload: bytes) -> tuple[bool, NodeTelemetry | None]:
    """Status topics: ``online``/``offline`` text (ESPresense, last wills) or our native JSON.

    Returns (online, telemetry if the payload carried some).
    """
    text = payload.strip()
    if text in (b"online", b"offline"):
        return text == b"online", None
    doc = _load_object(payload)
    if doc.get("v") != 1:
        raise NodePayloadError("v", "expected 1")
    up = _number(doc, "up_s", 0, 10 * 365 * 86400, False)
    return True, NodeTelemetry(
        uptime_s=up,
        wifi_rssi=_number(doc, "wifi_rssi", RSSI_MIN, RSSI_MAX, False),
        version=_short_str(doc, "fw"),
        free_heap=_int(doc, "heap"),
        drops=_int(doc, "drops"),
    )


# -- native -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NativeAdvert:
    dt_s: float  # seconds after the batch's t0
    device: str
    rssi: float
    rssi_at_1m: float | None
    public: bool = False  # address type 0 (public); random otherwise (may be a resolvable private address)


@dataclass(frozen=True, slots=True)
class NativeBatch:
    node: str
    t0: float  # node clock, Unix seconds
    adverts: list[NativeAdvert]
    bad_adverts: int  # entries dropped inside an otherwise good batch
    version: str | None


def _native_advert(a: Any, i: int) -> NativeAdvert:
    if type(a) is not dict:
        raise NodePayloadError(f"adv[{i}]", "expected an object")
    dt = a.get("dt")
    if type(dt) is not int or not (0 <= dt <= 60_000):
        raise NodePayloadError(f"adv[{i}].dt", "expected an integer 0-60000 (ms)")
    addr = a.get("addr")
    device = mac_to_device(addr) if type(addr) is str else None
    if device is None:
        raise NodePayloadError(f"adv[{i}].addr", "not a 48-bit address")
    rssi = _number(a, "rssi", RSSI_MIN, RSSI_MAX, True)
    assert rssi is not None
    r1m: float | None = None
    d = a.get("d")
    if d is not None:
        if type(d) is not str or len(d) > 2 * 255 or len(d) % 2:
            raise NodePayloadError(f"adv[{i}].d", "expected an even-length hex string of at most 255 bytes")
        try:
            raw = bytes.fromhex(d)
        except ValueError:
            raise NodePayloadError(f"adv[{i}].d", "not hex") from None
        try:
            r1m = parse_advert(raw).rssi_at_1m
        except AdvertParseError as e:
            raise NodePayloadError(f"adv[{i}].d", f"bad AD structure at byte {e.offset}") from None
    return NativeAdvert(dt / 1000.0, device, rssi, r1m, a.get("at") == 0)


def decode_native_adv(payload: bytes, topic_node: str) -> NativeBatch:
    """``<native>/<node>/adv`` -> a batch. The ``node`` field must equal the topic's node: a node
    publishing under its own (ACL-protected) topic cannot speak for another one.

    Bad entries inside a good envelope are dropped one by one (``bad_adverts``); a bad envelope
    raises :class:`NodePayloadError`.
    """
    doc = _load_object(payload)
    if doc.get("v") != 1:
        raise NodePayloadError("v", "expected 1")
    node = doc.get("node")
    if node != topic_node:
        raise NodePayloadError("node", "does not match the topic's node")
    t0_ms = doc.get("t0_ms")
    if type(t0_ms) is not int or not (0 < t0_ms < 2**53):
        raise NodePayloadError("t0_ms", "expected a positive integer (Unix ms)")
    adv = doc.get("adv")
    if type(adv) is not list:
        raise NodePayloadError("adv", "expected a list")
    if len(adv) > MAX_NATIVE_ADVERTS:
        raise NodePayloadError("adv", f"{len(adv)} entries, more than {MAX_NATIVE_ADVERTS}")
    out: list[NativeAdvert] = []
    bad = 0
    for i, a in enumerate(adv):
        try:
            out.append(_native_advert(a, i))
        except NodePayloadError:
            bad += 1
    fw = doc.get("fw")
    return NativeBatch(str(node), t0_ms / 1000.0, out, bad, fw[:64] if type(fw) is str else None)
