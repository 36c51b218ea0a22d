"""The rotation linker's state is sized to the devices around, not to every device the day saw (issue 22)."""

from __future__ import annotations

import pytest

from gateway.identity import linking
from gateway.identity.linking import RotationLinker
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.models import AdvertInfo, Observation

KR = PseudonymKeyring(rotation_time="21:00")
T0 = 1_767_261_600.0  # 2026-01-01 10:00Z: the waves below stay inside one pseudonym period
SENSORS = ("a", "b", "c", "d")
WAVE_S = 600.0  # a wave of devices stays 10 minutes, rotating its addresses once half-way
PER_WAVE = 10
INTERVAL = 5.0


def wave(w: int) -> list[list[Observation]]:
    """Batches (one per advert time) of ``PER_WAVE`` phones present from ``w * WAVE_S`` for WAVE_S."""
    t0 = T0 + w * WAVE_S
    by_t: dict[float, list[Observation]] = {}
    for d in range(PER_WAVE):
        info = AdvertInfo("phone", f"sig-{w}-{d}", True)
        rssi = (-55.0 - 3 * d, -65.0 - 2 * d, -70.0 + d, -75.0 + 2 * d)
        for k in range(int(WAVE_S / INTERVAL)):
            t = t0 + k * INTERVAL + d * 0.01
            addr = f"w{w}d{d}r{int(k * INTERVAL >= WAVE_S / 2)}"  # the address rotates half-way
            by_t[t] = by_t.get(t, []) + [
                Observation(t, s, addr, r, "ble", None, None, info) for s, r in zip(SENSORS, rssi, strict=True)
            ]
    return [by_t[t] for t in sorted(by_t)]


def sizes(lk: RotationLinker) -> tuple[int, int, int]:
    return len(lk._addr), len(lk._chains), sum(len(v) for v in lk._by_sig.values())


def test_state_does_not_grow_with_the_devices_that_came_and_went(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(linking, "LINK_LOG_MAX", 16)
    lk = RotationLinker(KR.epoch_bounds, forget_after_s=1800.0)
    seen: list[tuple[int, int, int]] = []
    for w in range(18):  # three hours of devices coming and going, 180 phones, 360 addresses
        for batch in wave(w):
            lk.process(batch)
        seen.append(sizes(lk))
    # every rotation linked (the pruning forgets nothing a link needs)
    assert lk.stats.links == 18 * PER_WAVE
    assert lk.stats.forgotten > 0
    assert 8 <= len(lk.link_log) <= 16 and lk.link_log[-1][0].startswith("w17")  # the latest links
    # at most the devices of the last 30 min + one wave (each with two addresses) are held
    bound = (1800.0 / WAVE_S + 2) * PER_WAVE * 2
    assert all(a <= bound and c <= bound and b <= bound for a, c, b in seen), seen
    # and the state after 3 h is the state after 1.5 h: flat, not growing with the devices gone
    assert seen[-1] == seen[8], seen


def test_an_address_is_forgotten_only_after_forget_after_s() -> None:
    lk = RotationLinker(KR.epoch_bounds, forget_after_s=1200.0)
    for batch in wave(0):
        lk.process(batch)
    held = sizes(lk)
    assert held[0] == 2 * PER_WAVE
    other = AdvertInfo("phone", "x", True)
    # 18 min after the wave left (23 min after the first addresses stopped): the addresses the
    # chains rotated away from are forgotten, the chains and their current addresses are not
    lk.process([Observation(T0 + WAVE_S + 1100.0, "a", "other", -60.0, "ble", None, None, other)])
    assert sizes(lk) == (PER_WAVE + 1, PER_WAVE + 1, PER_WAVE + 1)
    assert lk.chain_of("w0d0r1") == "w0d0r0" and lk.info("w0d0r0") is not None
    # 21 min: the wave is forgotten, only the device still around is held
    lk.process([Observation(T0 + WAVE_S + 1300.0, "a", "other", -60.0, "ble", None, None, other)])
    assert sizes(lk) == (1, 1, 1)
    assert lk.chain_of("w0d0r1") == "w0d0r1" and lk.info("w0d0r0") is None


def test_an_address_costs_its_state_not_two_dicts_of_floats() -> None:
    """Each address held keeps its RSSI and last hearing by sensor in one flat array (issue 22: two
    dicts of floats were ~1.8 KB an address with 12 sensors, ~1,900 addresses at 500 devices)."""
    import gc
    import tracemalloc

    sensors = [f"s{k:02d}" for k in range(12)]
    n = 200
    batches = [
        [
            Observation(T0 + k + d * 1e-4, s, f"dev{d}", -50.0 - d % 30 - j + k * 0.5, "ble", None, None, info)
            for d, info in enumerate(AdvertInfo("phone", f"sig{d}", True) for d in range(n))
            for j, s in enumerate(sensors)
        ]
        for k in range(10)
    ]
    lk = RotationLinker(KR.epoch_bounds)
    gc.collect()
    tracemalloc.start()
    try:
        for b in batches:
            lk.process(b)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(lk._addr) == n
    assert held / n < 1100, held / n  # ~830 B (the dicts: ~1,770 B)
