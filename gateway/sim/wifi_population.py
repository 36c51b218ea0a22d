"""A store's Wi-Fi crowd as modern phones behave (seeded; tests and the grouping/counting benchmark).

Every parameter below comes from public labelled captures; docs/wifi.md ("The phone population")
lists them with their sources: the Open Probe Request Dataset (Baccichet et al. 2024, three
sniffers on channels 1/6/11, phones alone in a Faraday bag) and Pintor & Atzori's labelled probe
request dataset (2021 captures, 22 devices). What is assumed rather than measured - the shares of
each behaviour in a store, how shoppers move - is said so there too.

Behaviours (:data:`BEHAVIOURS`):

* ``ios-per-channel`` (iPhone 11/12 and newer on iOS 16+): a new random MAC for every channel of a
  scan burst (~2 probes per MAC, channel hops 20-60 ms apart, ~13 MACs per burst), each MAC's 802.11
  sequence number restarting at random (0-4 % of changes continue it; chance is ~1.6 %);
* ``ios-per-burst`` (iPhone XR on iOS 16): one MAC per burst, sequence restarted;
* ``ios-legacy`` (iOS 15 and older): new MACs too, but the sequence number continues (81-99 %);
* ``android-modern`` (Android 13): one MAC per burst (0.2-0.6 s), sequence restarted, vendor
  elements, VHT/HE, directed probes for 0-79 % of its probes by phone, and two element sets
  (wildcard and directed scans: two fingerprints of one phone);
* ``android-legacy`` (older builds: Xiaomi, Samsung J6/S7, Honor 9): one MAC per burst, the
  sequence continuing in 81-99 % of changes;
* ``no-randomization`` (Huawei L21/P10/P20, Samsung S6 in the 2021 captures): the public MAC;
* ``laptop``: a stable MAC (public), fewer bursts.

Burst schedule: scans come at a device's own median interval (log-uniform 17-135 s; Android's
schedule 20/60/120/180 s), log-normal around it, and 30 % of scans are repeated after 1.5-8 s
(the p10 of 1.5-8 s in the captures). Several phones of one model are in the store at once: models
are drawn by popularity from a small catalogue, each model with its own element set.

Capture: one radio hopping over channels 1/6/11 (``dwell_s`` each; the product's setup) or three
fixed radios on 1/6/11 (the dataset's setup). A radio hears a probe sent on its channel, and some
sent on a neighbouring one (adjacent-channel leakage, 12-25 dB weaker; dropped as off-channel by the
decoder). RSSI: each device's level walks (shoppers move) plus per-frame noise.

Ground truth: the device of every frame, and each device's presence interval (:class:`Crowd`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.radiotap import build_radiotap
from gateway.sim.wifi_crowd import CHANNEL_FREQ, CrowdFrame
from gateway.sim.wifi_receivers import Walk, WifiReceivers

__all__ = ["BEHAVIOURS", "MODELS", "Crowd", "CrowdFrame", "DeviceTruth", "PhoneModel", "generate_store"]

SCAN_CHANNELS = tuple(range(1, 14))  # a 2.4 GHz scan in Europe sweeps 1-13


def _ht(cap: int, ampdu: int, streams: int) -> bytes:
    mcs = bytes([0xFF] * streams + [0] * (16 - streams))
    return cap.to_bytes(2, "little") + bytes([ampdu]) + mcs + bytes(2 + 4 + 1)


def _he(variant: int) -> bytes:
    return bytes([35, 0x01, 0x08, 0x08, 0x18, 0x00, 0x80, 0x20, 0x30, 0x02, 0x00, 0x0D, 0x00, 0x9F, variant]) + bytes(9)


def _vht(variant: int) -> bytes:
    return bytes([0x92, 0xF1, 0x90, 0x33 ^ variant, 0xFA, 0xFF, 0x62, 0x03, 0xFA, 0xFF, 0x62, 0x03])


_R24 = bytes([0x02, 0x04, 0x0B, 0x16])
_R24_APPLE = bytes([0x82, 0x84, 0x8B, 0x96])
_XR = bytes([0x0C, 0x12, 0x18, 0x24, 0x30, 0x48, 0x60, 0x6C])
_R24_FULL = bytes([0x02, 0x04, 0x0B, 0x16, 0x0C, 0x12, 0x18, 0x24])
_X24 = bytes([0x30, 0x48, 0x60, 0x6C])
_WPS = bytes.fromhex("0050f208002800")
_P2P = bytes.fromhex("506f9a16030101650101")
_MBO = bytes.fromhex("506f9a16010100")


def _vendor_oui(oui: int, body: bytes) -> bytes:
    return oui.to_bytes(3, "big") + body


# element layouts: (id, value or None for SSID / DS channel)
Layout = tuple[tuple[int, bytes | None], ...]


def _apple(ht: bytes, ext: bytes, he: bytes | None, interworking: bool = False) -> Layout:
    """iOS: six basic elements (SSID, rates, extended rates, DS, HT, extended capabilities) + HE."""
    out: list[tuple[int, bytes | None]] = [(0, None), (1, _R24_APPLE), (50, _XR), (3, None), (45, ht), (127, ext)]
    if interworking:
        out.append((107, b"\x0f"))
    if he is not None:
        out.append((255, he))
    return tuple(out)


def _android(ht: bytes, ext: bytes, vht: bytes | None, he: bytes | None, vendors: tuple[bytes, ...]) -> Layout:
    out: list[tuple[int, bytes | None]] = [(0, None), (1, _R24), (50, _XR), (3, None), (45, ht)]
    if vht is not None:
        out.append((191, vht))
    out.append((127, ext))
    if he is not None:
        out.append((255, he))
    out += [(221, v) for v in vendors]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class PhoneModel:
    name: str
    behaviour: str
    weight: float  # popularity among devices of its behaviour
    wildcard: Layout  # elements of a wildcard probe
    directed: Layout | None = None  # elements of a directed probe, when the model uses another set
    # now and then another kind of scan: (share of bursts, elements, channels, level offset dB)
    alternate: tuple[float, Layout, tuple[int, ...], float] | None = None


# Behaviour -> (share of devices in the store, facts). Shares are assumptions (docs/wifi.md).
BEHAVIOURS: dict[str, float] = {
    "ios-per-channel": 0.24,
    "ios-per-burst": 0.03,
    "ios-legacy": 0.03,
    "android-modern": 0.40,
    "android-legacy": 0.12,
    "no-randomization": 0.06,
    "laptop": 0.12,
}

_EXT_A = bytes.fromhex("0000080400000040")
_EXT_A11 = bytes.fromhex("0000080400000040000020")
_HT_APPLE = _ht(0x402D, 0x1B, 1)
_HT_APPLE2 = _ht(0x402D, 0x1B, 2)

MODELS: list[PhoneModel] = [
    # iOS 16+: per-channel MACs. iPhone 11/12 send the same elements but for the length of the
    # extended capabilities (8 vs 11 bytes, both seen from one iPhone 12)
    PhoneModel("iphone-11", "ios-per-channel", 3, _apple(_HT_APPLE, _EXT_A, _he(0xFD))),
    # the iPhone 12 of [B]: 8 of its 43 bursts were another scan - the iPhone 11's elements (8-byte
    # extended capabilities), about 2 probes on channel 1 only, 17 dB weaker than its usual ones
    PhoneModel(
        "iphone-12",
        "ios-per-channel",
        3,
        _apple(_HT_APPLE, _EXT_A11, _he(0xFD)),
        alternate=(0.19, _apple(_HT_APPLE, _EXT_A, _he(0xFD)), (1,), -17.0),
    ),
    PhoneModel("iphone-13", "ios-per-channel", 3, _apple(_HT_APPLE, _EXT_A11, _he(0xF5))),
    PhoneModel("iphone-14", "ios-per-channel", 3, _apple(_HT_APPLE2, _EXT_A11, _he(0xF5))),
    PhoneModel("iphone-15", "ios-per-channel", 2, _apple(_HT_APPLE2, _EXT_A11, _he(0xE5))),
    PhoneModel("iphone-xr", "ios-per-burst", 1, _apple(_HT_APPLE, _EXT_A, None)),
    PhoneModel("iphone-7", "ios-legacy", 1, _apple(_HT_APPLE, _EXT_A, None, interworking=True)),
    PhoneModel("iphone-8", "ios-legacy", 1, _apple(_HT_APPLE2, _EXT_A, None, interworking=True)),
    # Android 13: wildcard and directed scans use different element sets
    PhoneModel(
        "oppo-find-x3",
        "android-modern",
        2,
        _android(
            _ht(0x01EF, 0x13, 2),
            bytes.fromhex("00000a8200400000000120"),
            _vht(0),
            b"\x02\x00\x46",
            (_WPS, _P2P, _vendor_oui(0x8CFDF0, b"\x01\x01\x02\x01\x00")),
        ),
        _android(_ht(0x01EF, 0x13, 2), bytes.fromhex("04000a8200400040800120"), _vht(0), _he(0xFA), (_WPS, _P2P)),
    ),
    PhoneModel(
        "galaxy-s21",
        "android-modern",
        3,
        _android(_ht(0x01EF, 0x17, 2), bytes.fromhex("04000a020140004001"), _vht(1), _he(0xFC), (_MBO, _P2P)),
        _android(_ht(0x01EF, 0x17, 2), bytes.fromhex("04000a020140004001"), _vht(1), _he(0xFC), (_MBO,)),
    ),
    PhoneModel(
        "galaxy-a54",
        "android-modern",
        4,
        _android(_ht(0x01AD, 0x17, 2), bytes.fromhex("04000a020140004001"), _vht(2), _he(0xFC), (_MBO, _P2P)),
        _android(_ht(0x01AD, 0x17, 2), bytes.fromhex("04000a020140004001"), _vht(2), _he(0xFC), (_MBO,)),
    ),
    PhoneModel(
        "pixel-7",
        "android-modern",
        2,
        _android(_ht(0x01EF, 0x1B, 2), bytes.fromhex("04004a0201404040002120"), _vht(3), _he(0xEC), (_WPS,)),
    ),
    PhoneModel(
        "xiaomi-13",
        "android-modern",
        3,
        _android(_ht(0x19EF, 0x17, 2), bytes.fromhex("04000a82014000400001"), _vht(4), _he(0xDC), (_P2P,)),
        _android(_ht(0x19EF, 0x17, 2), bytes.fromhex("04000a82014000400001"), _vht(4), _he(0xDC), ()),
    ),
    PhoneModel(
        "redmi-note-12",
        "android-modern",
        3,
        _android(_ht(0x012C, 0x1B, 1), bytes.fromhex("00000a8201400040"), None, None, (_P2P,)),
    ),
    PhoneModel(
        "galaxy-j6",
        "android-legacy",
        2,
        _android(
            _ht(0x112C, 0x03, 1),
            bytes.fromhex("0000088000000040"),
            None,
            None,
            (_vendor_oui(0x001018, b"\x02\x00\x00\x1c\x00\x00"), _P2P),
        ),
    ),
    PhoneModel(
        "galaxy-s7",
        "android-legacy",
        2,
        _android(
            _ht(0x1172, 0x03, 1),
            bytes.fromhex("0000088000000040"),
            _vht(5),
            None,
            (_vendor_oui(0x001018, b"\x02\x00\x00\x1c\x00\x00"),),
        ),
    ),
    PhoneModel("xiaomi-a2", "android-legacy", 2, _android(_ht(0x012C, 0x17, 1), _EXT_A, None, None, (_P2P,))),
    PhoneModel("honor-9", "android-legacy", 1, _android(_ht(0x016E, 0x17, 1), _EXT_A, None, None, (_WPS, _P2P))),
    PhoneModel("huawei-p20", "no-randomization", 2, _android(_ht(0x016E, 0x1B, 1), _EXT_A, _vht(6), None, (_WPS,))),
    PhoneModel("galaxy-s6", "no-randomization", 1, _android(_ht(0x112C, 0x03, 1), _EXT_A, None, None, (_P2P,))),
    PhoneModel(
        "laptop-intel",
        "laptop",
        3,
        (
            (0, None),
            (1, _R24_FULL),
            (3, None),
            (50, _X24),
            (45, _ht(0x01AD, 0x1B, 2)),
            (127, bytes.fromhex("04004a0201404040002120")),
            (255, _he(0xAA)),
            (221, _WPS),
        ),
    ),
    PhoneModel(
        "laptop-mtk",
        "laptop",
        1,
        ((0, None), (1, _R24_FULL), (50, _X24), (3, None), (45, _ht(0x012C, 0x1B, 1))),
    ),
]

# networks many people have saved (public hotspots, campus, operators' defaults), most common first
_PUBLIC_SSIDS = [
    b"eduroam", b"Vodafone Hotspot", b"Telekom", b"FreeWifi", b"Starbucks", b"McDonalds Free WiFi",
    b"Airport-Free-WiFi", b"Hotel Guest", b"IKEA WiFi", b"TrainWifi", b"Library", b"Guest",
    b"AndroidAP", b"iPhone", b"FRITZ!Box 7530", b"Vodafone-5G", b"TP-Link_2.4GHz", b"Linksys",
    b"NETGEAR", b"dlink", b"Office", b"Office-Guest", b"CoffeeShop", b"Gym", b"Mall WiFi",
]  # fmt: skip


def _pnl(rng: random.Random) -> list[bytes]:
    """A person's saved networks: 1-6, a quarter of them public ones (Zipf-popular), the rest their
    own (home, work, friends): names nobody else probes for."""
    out: list[bytes] = []
    for _ in range(rng.randint(1, 6)):
        if rng.random() < 0.25:
            k = min(len(_PUBLIC_SSIDS) - 1, int(rng.paretovariate(1.2)) - 1)
            out.append(_PUBLIC_SSIDS[k])
        else:
            out.append(f"net-{rng.getrandbits(40):010x}".encode())
    return list(dict.fromkeys(out))


@dataclass(slots=True, frozen=True)
class DeviceTruth:
    idx: int
    model: str
    behaviour: str
    arrive: float  # Unix time
    leave: float
    passer_by: bool


@dataclass(slots=True)
class Crowd:
    frames: list[CrowdFrame]
    devices: list[DeviceTruth]
    start_ts: float
    duration_s: float
    heard: set[int] = field(default_factory=set)  # devices with at least one frame in ``frames``
    receivers: list[str] | None = None  # with several receivers: their ids, the capture radio first

    def present(self, t0: float, t1: float) -> int:
        """Devices heard at least once whose presence overlaps [t0, t1)."""
        return sum(1 for d in self.devices if d.idx in self.heard and d.arrive < t1 and d.leave > t0)


@dataclass(slots=True)
class _Dev:
    idx: int
    model: PhoneModel
    arrive: float
    leave: float
    rssi: float
    median_iv: float
    jitter: float
    directed: float  # share of directed probes
    pnl: list[bytes]  # saved networks (what directed probes name)
    seq: int
    mac: bytes
    continues: float  # chance the sequence number continues over a MAC change


def _random_mac(rng: random.Random, randomized: bool) -> bytes:
    b = bytearray(rng.randbytes(6))
    b[0] = (b[0] & 0xFC) | 0x02 if randomized else b[0] & 0xFC
    return bytes(b)


def _ies(layout: Layout, channel: int, ssid: bytes) -> list[tuple[int, bytes]]:
    out = []
    for eid, val in layout:
        if eid == 0:
            out.append((0, ssid))
        elif eid == 3:
            out.append((3, bytes([channel])))
        else:
            out.append((eid, val or b""))
    return out


def generate_store(
    n_devices: int,
    duration_s: float,
    *,
    seed: int = 1,
    start_ts: float = 1_767_261_600.0,
    passer_by_share: float = 0.3,
    stay_s: tuple[float, float] = (300.0, 2400.0),
    capture: str = "hop",
    dwell_s: float = 0.25,
    loss_share: float = 0.1,
    leak_share: float = 0.5,
    behaviours: dict[str, float] | None = None,
    models: list[str] | None = None,
    levels_db: list[float] | None = None,
    whole_run: bool = False,
    receivers: WifiReceivers | None = None,
) -> Crowd:
    """A crowd of ``n_devices`` arriving over ``duration_s`` (see the module docstring).

    ``capture``: ``"hop"`` (one radio hopping 1/6/11, ``dwell_s`` each) or ``"fixed3"`` (three radios
    on 1, 6 and 11, their frames merged). ``behaviours`` overrides :data:`BEHAVIOURS` (shares);
    ``models`` gives each device's model in turn (tests), ``levels_db`` each device's RSSI level;
    ``whole_run``: every device stays from start to end (no passers-by). ``receivers``: hear the
    crowd at several receivers as it walks the store (:mod:`gateway.sim.wifi_receivers`; ``capture``,
    ``loss_share`` and ``leak_share`` are then the receivers' radio model's); without, one radio
    hears each device's level wander (the same frames as before receivers existed).
    """
    if capture not in ("hop", "fixed3"):
        raise ValueError(f"capture must be 'hop' or 'fixed3', got {capture!r}")
    rng = random.Random(seed)
    shares = behaviours or BEHAVIOURS
    names = list(shares)
    devs: list[_Dev] = []
    truth: list[DeviceTruth] = []
    by_name = {m.name: m for m in MODELS}
    for i in range(n_devices):
        if models:
            model = by_name[models[i % len(models)]]
            behaviour = model.behaviour
        else:
            behaviour = rng.choices(names, [shares[n] for n in names])[0]
            candidates = [m for m in MODELS if m.behaviour == behaviour]
            model = rng.choices(candidates, [m.weight for m in candidates])[0]
        passer = rng.random() < passer_by_share
        if passer:
            stay = rng.uniform(15.0, 120.0)
            level = rng.uniform(-95.0, -75.0)
        else:
            stay = math.exp(rng.uniform(math.log(stay_s[0]), math.log(stay_s[1])))
            level = rng.uniform(-85.0, -45.0)
        if levels_db:
            level = levels_db[i % len(levels_db)]
        arrive = rng.uniform(-0.3 * stay, duration_s - 0.2 * min(stay, duration_s))
        leave = arrive + stay
        arrive, leave = max(0.0, arrive), min(duration_s, leave)
        if whole_run:
            arrive, leave, passer = 0.0, duration_s, False
        android = behaviour.startswith("android") or behaviour == "no-randomization"
        if android:
            median_iv = rng.choice((20.0, 60.0, 120.0, 180.0))  # Android's scan schedule
            jitter = 0.15
        else:
            median_iv = math.exp(rng.uniform(math.log(17.0), math.log(135.0)))
            jitter = 0.6
        if behaviour == "laptop":
            median_iv *= 2.0
        continues = {"ios-legacy": rng.uniform(0.81, 0.99), "android-legacy": rng.uniform(0.81, 0.99)}.get(
            behaviour, rng.uniform(0.0, 0.04)
        )
        directed = rng.uniform(0.0, 0.79) if behaviour.startswith("android") else 0.0
        if behaviour == "laptop":
            directed = rng.uniform(0.0, 0.3)
        public = behaviour in ("no-randomization", "laptop")
        devs.append(
            _Dev(i, model, arrive, leave, level, median_iv, jitter, directed, _pnl(rng), rng.randrange(4096),
                 _random_mac(rng, not public), continues)
        )  # fmt: skip
        truth.append(DeviceTruth(i, model.name, behaviour, start_ts + arrive, start_ts + leave, passer))
    frames: list[CrowdFrame] = []
    if receivers is not None:
        receivers.start(seed)
        walk_rng = np.random.default_rng([seed, 0x3A1C])
        for d, tr in zip(devs, truth, strict=True):
            events: list[_Event] = []
            _device_frames(d, rng, start_ts, capture, dwell_s, loss_share, leak_share, events)
            walk = receivers.walk(d.arrive, d.leave, tr.passer_by)
            tx = float(walk_rng.normal(0.0, receivers.ranges.tx_spread_db))
            frames += _heard_frames(d, events, receivers, walk, tx, start_ts)
    else:
        for d in devs:
            frames += _device_frames(d, rng, start_ts, capture, dwell_s, loss_share, leak_share)
    frames.sort(key=lambda f: (f.ts, f.device))
    heard = {f.device for f in frames if f.rx_channel == f.tx_channel}
    return Crowd(frames, truth, start_ts, duration_s, heard, receivers.ids if receivers is not None else None)


def _heard_frames(
    d: _Dev, events: list[_Event], rx: WifiReceivers, walk: Walk, tx: float, start_ts: float
) -> list[CrowdFrame]:
    """The probes ``events`` of ``d`` as heard by every receiver: one frame per probe heard by any,
    with the capture radio's level (``rssi``, 0 and ``levels`` without it when only nodes heard it)
    and each node's (``levels``)."""
    if not events:
        return []
    ts = np.array([e[0] for e in events])
    ch = np.array([e[1] for e in events], dtype=np.int64)
    off = np.array([e[6] for e in events]) + tx
    rssi, heard = rx.hear(d.idx, walk, ts, ch, off)
    out: list[CrowdFrame] = []
    ids = rx.ids
    for i in np.flatnonzero(heard.any(axis=1)).tolist():
        t, c, mac, seq, layout, ssid, _o = events[i]
        row = heard[i]
        levels = {ids[j]: int(rssi[i, j]) for j in range(1, len(ids)) if row[j]}
        level = int(rssi[i, 0]) if row[0] else max(levels.values())
        frame = build_radiotap(signal_dbm=level, freq_mhz=CHANNEL_FREQ[c], flags=0)
        frame += build_probe_request(mac, seq, _ies(layout, c, ssid))
        out.append(CrowdFrame(start_ts + t, d.idx, d.model.name, mac, seq, level, c, c, frame, levels, bool(row[0])))
    return out


def _rx_channels(t: float, capture: str, dwell_s: float) -> tuple[int, ...]:
    if capture == "fixed3":
        return (1, 6, 11)
    return ((1, 6, 11)[int(t / dwell_s) % 3],)


_Event = tuple[float, int, bytes, int, "Layout", bytes, float]  # (time, channel, MAC, seq, elements, SSID, offset dB)


def _device_frames(
    d: _Dev,
    rng: random.Random,
    start_ts: float,
    capture: str,
    dwell_s: float,
    loss: float,
    leak: float,
    events: list[_Event] | None = None,
) -> list[CrowdFrame]:
    """The frames one radio hears of device ``d``; with ``events``, the probes it sends are put
    there instead (heard at several receivers by :func:`_heard_frames`)."""
    out: list[CrowdFrame] = []
    m = d.model
    behaviour = m.behaviour
    t = d.arrive + rng.uniform(0.0, min(d.median_iv, max(1.0, d.leave - d.arrive)))
    randomized = behaviour not in ("no-randomization", "laptop")
    while t < d.leave:
        # the shopper's level wanders between bursts
        d.rssi = min(-35.0, max(-98.0, d.rssi + rng.gauss(0.0, 2.5)))
        if randomized and behaviour != "ios-per-channel":  # one new MAC per burst
            d.mac = _random_mac(rng, True)
            if rng.random() >= d.continues:
                d.seq = rng.randrange(4096)
        directed_scan = rng.random() < d.directed
        layout = m.directed if directed_scan and m.directed is not None else m.wildcard
        channels, offset = SCAN_CHANNELS, 0.0
        if m.alternate is not None and rng.random() < m.alternate[0]:
            _share, layout, channels, offset = m.alternate
            directed_scan = False
        # a directed scan names the saved networks (each with a small chance of being skipped)
        ssid_list = [n for n in d.pnl if rng.random() < 0.9] or d.pnl[:1] if directed_scan else []
        tx_t = t
        for ch in channels:
            if behaviour == "ios-per-channel":
                d.mac = _random_mac(rng, True)
                if rng.random() >= d.continues:
                    d.seq = rng.randrange(4096)
            hop = rng.uniform(0.02, 0.06)
            probes = [b""] * (2 if behaviour.startswith("ios") else rng.choice((1, 2)))
            probes += ssid_list
            for k, ssid in enumerate(probes):
                d.seq = (d.seq + 1) % 4096
                ts = tx_t + 0.002 * k + (0.018 if behaviour.startswith("ios") and k == 1 else 0.0)
                if events is not None:  # several receivers: heard after the walk (wifi_receivers.py)
                    events.append((ts, ch, d.mac, d.seq, layout, ssid, offset))
                    continue
                for rx in _rx_channels(ts, capture, dwell_s):
                    if rx == ch:
                        att = 0.0
                    elif abs(rx - ch) <= 2 and rng.random() < leak:
                        att = rng.uniform(12.0, 25.0)
                    else:
                        continue
                    if rng.random() < loss:
                        continue
                    rssi = round(d.rssi + offset - att + rng.gauss(0.0, 3.0))
                    if rssi < -98:
                        continue
                    frame = build_radiotap(signal_dbm=rssi, freq_mhz=CHANNEL_FREQ[rx], flags=0)
                    frame += build_probe_request(d.mac, d.seq, _ies(layout, ch, ssid))
                    out.append(CrowdFrame(start_ts + ts, d.idx, m.name, d.mac, d.seq, rssi, rx, ch, frame))
            tx_t += hop
        d.seq = (d.seq + rng.randint(0, 30)) % 4096  # frames sent between bursts use the counter too
        if rng.random() < 0.3:
            t += rng.uniform(1.5, 8.0)  # a scan repeated at once
        else:
            t += d.median_iv * math.exp(rng.gauss(0.0, d.jitter))
    return out
