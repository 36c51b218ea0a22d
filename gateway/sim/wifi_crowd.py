"""A seeded crowd of Wi-Fi devices sending probe requests (fixtures, tests, the grouping benchmark).

Each device has a driver *model* (the ordered IEs and capability bytes a real phone sends); the
models are popular unevenly and several phone models share one (e.g. a phone maker's whole range
uses one chipset driver) - that is what makes grouping hard. Devices arrive and leave over the run
(shoppers), probe in bursts, and

* rotate their random MAC every few minutes (locally administered bit set), keeping the 802.11
  sequence counter running (it wraps at 4096), with gaps between bursts because other frames use
  the counter too; a few devices restart the counter at a random value when they rotate;
* a share of devices (older laptops, IoT) use their public MAC and never rotate;
* RSSI follows each shopper's slow random walk plus per-frame noise;
* a capture hopping over channels 1/6/11 also hears some frames sent on a neighbouring channel
  (adjacent-channel leakage, ~20 dB weaker) - their DS Parameter Set names the real channel.

Ground truth (device index per frame) is returned with every frame.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gateway.parsers.ieee80211 import build_probe_request
from gateway.parsers.radiotap import build_radiotap

__all__ = ["MODELS", "CrowdFrame", "generate_crowd"]

_R24 = bytes([0x02, 0x04, 0x0B, 0x16, 0x0C, 0x12, 0x18, 0x24])
_R24B = bytes([0x82, 0x84, 0x8B, 0x96, 0x0C, 0x12, 0x18, 0x24])
_X24 = bytes([0x30, 0x48, 0x60, 0x6C])


def _ht(cap: int, ampdu: int, streams: int) -> bytes:
    mcs = bytes([0xFF] * streams + [0] * (16 - streams))
    return cap.to_bytes(2, "little") + bytes([ampdu]) + mcs + bytes(2 + 4 + 1)


def _vendor(oui: int, body: bytes) -> bytes:
    return oui.to_bytes(3, "big") + body


_APPLE = _vendor(0x0017F2, bytes([0x0A, 0x00, 0x01, 0x04, 0x00, 0x00, 0x00, 0x00]))
_BRCM = _vendor(0x001018, bytes([0x02, 0x00, 0x00, 0x1C, 0x00, 0x00]))
_WPS = _vendor(0x0050F2, bytes([0x04, 0x10, 0x4A, 0x00, 0x01, 0x10, 0x10, 0x3A, 0x00, 0x01, 0x00]))
_P2P = _vendor(0x506F9A, bytes([0x09, 0x02, 0x02, 0x00, 0x25, 0x00]))
_MBO = _vendor(0x506F9A, bytes([0x16, 0x01, 0x01, 0x00]))
_HE = bytes([35, 0x01, 0x00, 0x08, 0x12, 0x00, 0x10, 0x22, 0x20, 0x02, 0xC0, 0x0F, 0x03, 0x95, 0x18, 0x00, 0xCC, 0x00])
_VHT = bytes([0x32, 0x70, 0x80, 0x0F, 0xFE, 0xFF, 0x00, 0x00, 0xFE, 0xFF, 0x00, 0x00])

# (name, popularity weight, IE list with None where the SSID / DS channel go)
ModelIEs = list[tuple[int, bytes | None]]
MODELS: list[tuple[str, float, ModelIEs]] = [
    (  # one vendor's whole phone range: the largest shared fingerprint
        "vendor-a-phones",
        30,
        [
            (0, None),
            (1, _R24),
            (50, _X24),
            (3, None),
            (45, _ht(0x002D, 0x17, 1)),
            (127, bytes.fromhex("0400080400000040")),
            (107, b"\x0f"),
            (191, _VHT),
            (221, _APPLE),
        ],
    ),
    (
        "vendor-a-tablets",
        8,
        [
            (0, None),
            (1, _R24),
            (50, _X24),
            (3, None),
            (45, _ht(0x006F, 0x17, 2)),
            (127, bytes.fromhex("0400080400000040")),
            (107, b"\x0f"),
            (191, _VHT),
            (221, _APPLE),
        ],
    ),
    (
        "android-qcom",
        22,
        [
            (0, None),
            (1, _R24),
            (50, _X24),
            (3, None),
            (45, _ht(0x01EF, 0x1B, 2)),
            (127, bytes.fromhex("04000a020140004001")),
            (255, _HE),
            (221, _MBO),
        ],
    ),
    (
        "android-brcm",
        14,
        [
            (0, None),
            (1, _R24B),
            (50, _X24),
            (3, None),
            (45, _ht(0x1172, 0x03, 1)),
            (127, bytes.fromhex("0000088000000040")),
            (221, _BRCM),
            (221, _P2P),
        ],
    ),
    (
        "android-mtk",
        10,
        [
            (0, None),
            (1, _R24),
            (50, _X24),
            (3, None),
            (45, _ht(0x012C, 0x1B, 1)),
            (127, bytes.fromhex("00000a8201400040")),
        ],
    ),
    (
        "laptop-intel",
        8,
        [
            (0, None),
            (1, _R24),
            (3, None),
            (50, _X24),
            (45, _ht(0x01AD, 0x1B, 2)),
            (127, bytes.fromhex("04004a0201404040002120")),
            (255, _HE),
            (221, _WPS),
        ],
    ),
    (
        "iot-espressif",
        4,
        [(0, None), (1, _R24B), (50, _X24), (45, _ht(0x112C, 0x03, 1))],
    ),
    ("feature-phone", 4, [(0, None), (1, _R24B), (50, _X24)]),
]

CHANNEL_FREQ = {ch: 2407 + 5 * ch for ch in range(1, 14)}
HOP_CHANNELS = (1, 6, 11)


@dataclass(slots=True, frozen=True)
class CrowdFrame:
    ts: float
    device: int  # ground truth
    model: str
    mac: bytes
    seq: int
    rssi: int
    rx_channel: int
    tx_channel: int
    frame: bytes  # radiotap + 802.11 probe request
    # several receivers (wifi_receivers.py): each node's level; whether the capture radio heard it
    # (``rssi`` then is its level, else the loudest node's, to build ``frame``)
    levels: dict[str, int] | None = None
    captured: bool = True


@dataclass(slots=True)
class _Device:
    idx: int
    model: int
    public: bool
    mac: bytes
    seq: int
    arrive: float
    leave: float
    next_rotate: float
    rssi: float
    burst_every: float


def _random_mac(rng: random.Random, randomized: bool) -> bytes:
    b = bytearray(rng.randbytes(6))
    b[0] = (b[0] & 0xFC) | 0x02 if randomized else b[0] & 0xFC
    return bytes(b)


def _ie(eid: int, val: bytes | None, channel: int, ssid: bytes) -> tuple[int, bytes]:
    if eid == 0:
        return (0, ssid)
    if eid == 3:
        return (3, bytes([channel]))
    return (eid, val or b"")


def generate_crowd(
    n_devices: int,
    duration_s: float,
    *,
    seed: int = 1,
    start_ts: float = 1_767_261_600.0,
    public_share: float = 0.1,
    rotate_s: tuple[float, float] = (120.0, 480.0),
    stay_s: tuple[float, float] = (300.0, 2400.0),
    burst_s: tuple[float, float] = (15.0, 60.0),
    seq_reset_share: float = 0.03,
    leak_share: float = 0.5,
    loss_share: float = 0.1,
    dwell_s: float = 0.25,
    ssid_share: float = 0.1,
) -> list[CrowdFrame]:
    """Frames of ``n_devices`` devices over ``duration_s`` seconds, sorted by time."""
    rng = random.Random(seed)
    weights = [w for _, w, _ in MODELS]
    devices: list[_Device] = []
    for i in range(n_devices):
        model = rng.choices(range(len(MODELS)), weights)[0]
        public = rng.random() < public_share
        stay = rng.uniform(*stay_s)
        arrive = rng.uniform(-stay / 2, duration_s - min(stay, duration_s) / 4)
        devices.append(
            _Device(
                idx=i,
                model=model,
                public=public,
                mac=_random_mac(rng, not public),
                seq=rng.randrange(4096),
                arrive=max(0.0, arrive),
                leave=min(duration_s, arrive + stay),
                next_rotate=max(0.0, arrive) + rng.uniform(*rotate_s),
                rssi=rng.uniform(-85.0, -45.0),
                burst_every=rng.uniform(*burst_s),
            )
        )
    frames: list[CrowdFrame] = []
    ssids = [b"HomeNet", b"Office-5", b"CoffeeShop", b"eduroam"]
    for d in devices:
        name, _w, ies = MODELS[d.model]
        t = d.arrive + rng.uniform(0, d.burst_every)
        while t < d.leave:
            if not d.public and t >= d.next_rotate:
                d.mac = _random_mac(rng, True)
                d.next_rotate = t + rng.uniform(*rotate_s)
                if rng.random() < seq_reset_share:
                    d.seq = rng.randrange(4096)
            d.rssi = min(-35.0, max(-92.0, d.rssi + rng.gauss(0, 2.0)))
            # one burst: the phone sweeps channels 1..11 (~20 ms each); the capture, hopping over
            # HOP_CHANNELS with `dwell_s`, hears the probe sent on its channel and, weaker, some
            # sent on neighbouring channels (adjacent-channel leakage)
            directed = rng.random() < ssid_share
            per_channel = 1 if rng.random() < 0.6 else 2
            for tx in range(1, 12):
                for _rep in range(per_channel):
                    d.seq = (d.seq + 1) % 4096
                    t_tx = t + 0.02 * (tx - 1) + 0.002 * _rep
                    rx = HOP_CHANNELS[int(t_tx / dwell_s) % len(HOP_CHANNELS)]
                    if rx == tx:
                        loss = 0.0
                    elif abs(rx - tx) <= 2 and rng.random() < leak_share:
                        loss = rng.uniform(12.0, 25.0)
                    else:
                        continue
                    if rng.random() < loss_share:
                        continue
                    rssi = round(d.rssi - loss + rng.gauss(0, 3.0))
                    if rssi < -98:
                        continue
                    body = [_ie(eid, val, tx, rng.choice(ssids) if directed else b"") for eid, val in ies]
                    frame = build_radiotap(signal_dbm=rssi, freq_mhz=CHANNEL_FREQ[rx], flags=0)
                    frame += build_probe_request(d.mac, d.seq, body)
                    frames.append(CrowdFrame(start_ts + t_tx, d.idx, name, d.mac, d.seq, rssi, rx, tx, frame))
            d.seq = (d.seq + rng.randint(0, 40)) % 4096  # frames sent between bursts
            t += d.burst_every * rng.uniform(0.7, 1.3)
    frames.sort(key=lambda f: (f.ts, f.device))
    return frames
