"""Simulated BLE devices: what each kind of device advertises, how often, and what rotates.

The store simulator (``gateway.sim.store``) gives every person a set of devices drawn from
:func:`draw_shopper_devices` / :func:`draw_staff_devices` and places fixed devices with
:func:`fixture_devices`. Each device produces real advertising payloads (AD structures), which
the simulator parses with the gateway's own parsers: the rotation linker downstream sees what it
would see from a real radio.

Behaviour per kind (parameters, and where they come from):

* **Address rotation.** Phones, earbuds and trackers use resolvable private addresses renewed
  about every 15 minutes: Core spec recommended ``T_GAP(private_addr_int)`` = 15 min; iOS and
  Android measured at ~15 min (Martin et al. 2019, "Handoff All Your Privacy", PoPETs; Celosia &
  Cunche 2019, "Saving Private Addresses", PoPETs). Each device draws its own period and every
  interval gets a jitter (``rotation_jitter_s``); the first rotation falls anywhere in the period.
  **Non-consented devices rotate unlinkably**: nothing in the observation says which addresses
  belong together (no IRK), the payload fields that rotate change at the same instant (Celosia &
  Cunche 2020 found current iOS rotates Continuity payloads together with the address).
* **iPhone**: Nearby Info (0x10) in every advert; status/action byte and data flags stay, the
  3-byte auth tag changes with the address; the action code changes now and then with what the
  user does (screen on/off: a new value every ``~10 min`` on average, independent of rotation).
  Some iPhones also send Handoff (0x0C) whose sequence number increments (Martin et al.).
  Interval ~1 s in a pocket (screen off; Martin et al. saw 200 ms with the screen on).
* **Android (Samsung)**: Samsung manufacturer data (0x0075) every ~1 s while Nearby/Quick Share
  visibility is on; many Android phones advertise nothing at all when idle (``android_silent``).
* **AirPods** (Proximity Pairing 0x07): model, colour stay; battery and lid counter change slowly.
* **Fast Pair earbuds** (0xFE2C): not discoverable while paired: flags + account key filter
  (rotating with the address).
* **AirTag near its owner** (Find My 0x12, 2-byte form) every 2 s; **SmartTag** (0xFD5A) with an
  aging counter that increments at every rotation; **Tile** (0xFEED) static id and address.
* **Wearables**: Garmin / Polar manufacturer data, random static address (does not rotate).
* **Fixtures**: a TV (LG manufacturer data) and a printer (HP), random static; an Apple TV
  (AirPlay Target 0x09 + Nearby Info) with a *rotating* address; iBeacons (static).
* **Staff**: a phone each (rotating like any phone) and handheld scanners (Zebra, static address).

Each device has a transmit-power offset (``tx_spread_db``) drawn once; kinds differ in their
nominal power (earbuds and tags are weaker than phones).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from gateway.models import AdvertInfo
from gateway.parsers.ble import parse_advert
from gateway.parsers.ble_vendors import advert_info as vendor_advert_info

__all__ = [
    "SimDevice",
    "advert_info",
    "draw_shopper_devices",
    "draw_staff_devices",
    "fixture_devices",
]

ROTATION_S = 900.0


def _ad(t: int, body: bytes) -> bytes:
    return bytes([len(body) + 1, t]) + body


def _mfr(cid: int, body: bytes) -> bytes:
    return _ad(0xFF, cid.to_bytes(2, "little") + body)


def _svc(u16: int, body: bytes) -> bytes:
    return _ad(0x16, u16.to_bytes(2, "little") + body)


FLAGS_PHONE = _ad(0x01, b"\x1a")
FLAGS_LE = _ad(0x01, b"\x06")


@dataclass(slots=True)
class SimDevice:
    """One advertising device carried by a person (or fixed in the store)."""

    model: str
    truth_kind: str  # what it really is (ground truth for tests and benchmarks)
    interval_s: float
    rotates: bool
    tx_db: float  # nominal offset against a phone (dB)
    rotation_s: float = ROTATION_S
    seed: int = 0
    # payload state that does not rotate with the address
    stable: dict[str, int] = field(default_factory=dict)
    # -- set by the simulator
    did: int = -1

    def payload(self, epoch: int, t: float) -> bytes:
        """The advertising payload in address epoch ``epoch`` at time ``t``."""
        rnd = hashlib.sha256(f"{self.seed}:{self.did}:{epoch}".encode()).digest()
        s = self.stable
        m = self.model
        if m == "iphone":
            # the action code changes with the user's activity, not with the address
            k = int(t // 600.0 + s["act_phase"] / 1000.0)
            act = (0x07, 0x03, 0x0B, 0x05)[(k + s["act"]) % 4] if s["act_changes"] else s["act"] & 0x0F
            body = bytes([0x10, 0x05, (s["status"] << 4) | act, s["dflags"]]) + rnd[:3]
            if s["handoff"]:
                seq = (s["seq0"] + int(t // 300.0)) & 0xFFFF
                body = bytes([0x0C, 0x0E, 0x00, seq & 0xFF, seq >> 8]) + rnd[3:14] + body
            return FLAGS_PHONE + _ad(0x0A, b"\x0c") + _mfr(0x004C, body)
        if m == "android":
            return FLAGS_PHONE + _mfr(0x0075, bytes([0x42, 0x09, s["galaxy"], 0x02, 0x81]) + rnd[:8])
        if m == "airpods":
            batt = max(0, 10 - int(t // 1800.0) % 11)
            body = (
                bytes(
                    [
                        0x07,
                        0x19,
                        0x01,
                        s["model"] >> 8,
                        s["model"] & 0xFF,
                        0x55,
                        (batt << 4) | batt,
                        0x04,
                        s["lid"],
                        s["color"],
                        0x00,
                    ]
                )
                + rnd[:16]
            )
            return _mfr(0x004C, body)
        if m == "fastpair-buds":
            return FLAGS_LE + _svc(0xFE2C, bytes([0x00, 0x60]) + rnd[:9])
        if m == "airtag":
            return _mfr(0x004C, bytes([0x12, 0x02, s["status"], rnd[0] & 0x03]))
        if m == "smarttag":
            aging = (s["aging0"] + epoch) & 0xFFFFFF
            body = bytes([0x10, aging >> 16, (aging >> 8) & 0xFF, aging & 0xFF]) + rnd[:8] + bytes([s["flags"]])
            return FLAGS_LE + _svc(0xFD5A, body + rnd[8:12])
        if m == "tile":
            return FLAGS_LE + _ad(0x03, b"\xed\xfe") + _svc(0xFEED, bytes([0x02, 0x00]) + s["tid"].to_bytes(8, "big"))
        if m == "garmin":
            return FLAGS_LE + _mfr(0x0087, bytes([0x02, s["unit"] & 0xFF, 0x01]))
        if m == "polar":
            return FLAGS_LE + _ad(0x03, b"\x0d\x18") + _mfr(0x006B, bytes([0x3B, s["unit"] & 0xFF, 0x44, 0x46]))
        if m == "zebra":
            return FLAGS_LE + _mfr(0x01F1, bytes([0x01, s["unit"] & 0xFF, 0x22]))
        if m == "lg-tv":
            return FLAGS_LE + _mfr(0x00C4, bytes([0x02, 0x01, 0x40, s["unit"] & 0xFF]))
        if m == "hp-printer":
            return FLAGS_LE + _mfr(0x0065, bytes([0x01, 0x02, s["unit"] & 0xFF, 0x00]))
        if m == "apple-tv":
            body = bytes([0x09, 0x06, 0x03, 0x04, 0xC0, 0xA8, 0x01, s["unit"] & 0xFF])
            body += bytes([0x10, 0x05, 0x19, 0x18]) + rnd[:3]
            return FLAGS_PHONE + _mfr(0x004C, body)
        if m == "ibeacon":
            u = hashlib.sha256(f"beacon{self.seed}".encode()).digest()[:16]
            body = bytes([0x02, 0x15]) + u + s["unit"].to_bytes(2, "big") + b"\x00\x01\xc5"
            return FLAGS_LE + _mfr(0x004C, body)
        raise ValueError(f"unknown simulated device model {m!r}")


def advert_info(payload: bytes, rotating: bool) -> AdvertInfo:
    """Parse a payload as the gateway would (the parser and the vendor layer cache repeats)."""
    adv = parse_advert(payload)
    return vendor_advert_info(
        adv.manufacturer_data,
        adv.service_data,
        rotating=rotating,
        service_uuids=adv.service_uuids,
        tx_power=adv.tx_power,
        flags=adv.flags,
        local_name=adv.local_name,
    )


def _phone(rng: np.random.Generator, ios_share: float, android_silent: float) -> SimDevice | None:
    if rng.random() < ios_share:
        return SimDevice(
            "iphone",
            "phone",
            float(rng.uniform(0.8, 1.2)),
            True,
            0.0,
            stable={
                "status": int(rng.choice([0x0, 0x1, 0x3, 0x5, 0x7], p=[0.1, 0.3, 0.3, 0.2, 0.1])),
                "act": int(rng.choice([0x3, 0x5, 0x7, 0xB, 0x1])),
                "act_changes": int(rng.random() < 0.5),
                "act_phase": int(rng.integers(0, 1000)),
                "dflags": int(rng.choice([0x18, 0x1C, 0x98, 0x9C, 0x08, 0x0C])),
                "handoff": int(rng.random() < 0.3),
                "seq0": int(rng.integers(0, 60000)),
            },
        )
    if rng.random() < android_silent:
        return None
    return SimDevice(
        "android", "phone", float(rng.uniform(0.9, 1.3)), True, 0.0, stable={"galaxy": int(rng.integers(0, 4))}
    )


def draw_shopper_devices(
    rng: np.random.Generator, *, ios_share: float = 0.5, android_silent: float = 0.3
) -> list[SimDevice]:
    """What one shopper carries: maybe a phone, sometimes earbuds, a tracker or a wearable."""
    out: list[SimDevice] = []
    ph = _phone(rng, ios_share, android_silent)
    if ph is not None:
        out.append(ph)
    ios = ph is not None and ph.model == "iphone"
    if ios and rng.random() < 0.15:
        out.append(
            SimDevice(
                "airpods",
                "earbuds",
                1.0,
                True,
                -6.0,
                stable={
                    "model": int(rng.choice([0x0220, 0x0F20, 0x0E20, 0x1420])),
                    "lid": int(rng.integers(0, 255)),
                    "color": int(rng.integers(0, 4)),
                },
            )
        )
    elif not ios and rng.random() < 0.08:
        out.append(SimDevice("fastpair-buds", "earbuds", 1.0, True, -6.0))
    r = rng.random()
    if r < 0.08:
        out.append(
            SimDevice("airtag", "tracker", 2.0, True, -8.0, stable={"status": int(rng.choice([0x00, 0x10, 0x50]))})
        )
    elif r < 0.11:
        out.append(
            SimDevice(
                "smarttag",
                "tracker",
                2.0,
                True,
                -8.0,
                stable={"aging0": int(rng.integers(0, 1 << 20)), "flags": int(rng.integers(0, 4))},
            )
        )
    elif r < 0.13:
        out.append(SimDevice("tile", "tracker", 2.0, False, -8.0, stable={"tid": int(rng.integers(0, 1 << 62))}))
    if rng.random() < 0.06:
        model = "garmin" if rng.random() < 0.6 else "polar"
        out.append(SimDevice(model, "wearable", 1.0, False, -5.0, stable={"unit": int(rng.integers(0, 256))}))
    return out


def draw_staff_devices(rng: np.random.Generator, index: int) -> list[SimDevice]:
    """A staff member: a phone that always advertises, every second one a handheld scanner."""
    ph = _phone(rng, 0.5, 0.0)
    assert ph is not None
    out = [ph]
    if index % 2 == 0:
        out.append(SimDevice("zebra", "scanner", 1.0, False, 0.0, stable={"unit": index}))
    return out


def fixture_devices(fixtures: int, beacons: int) -> list[SimDevice]:
    """Fixed devices: ``fixtures`` cycling through a TV, a printer and an Apple TV, then iBeacons."""
    kinds = [("lg-tv", False), ("hp-printer", False), ("apple-tv", True)]
    out = [
        SimDevice(kinds[i % 3][0], "fixture", 1.0, kinds[i % 3][1], 0.0, stable={"unit": i}) for i in range(fixtures)
    ]
    out += [SimDevice("ibeacon", "beacon", 1.0, False, 0.0, stable={"unit": 100 + i}) for i in range(beacons)]
    return out
