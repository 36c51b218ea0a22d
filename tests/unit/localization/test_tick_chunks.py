"""A fix tick computed in parts (``MlLocalizer.fixes_chunks``): the same fixes, handed out part by part."""

from __future__ import annotations

import numpy as np

from gateway.config import LocalizationSettings
from gateway.layout import load_layout
from gateway.localization.localizer import MlLocalizer
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, synthetic_run
from gateway.models import Fix, Observation
from tests.conftest import LAYOUT

RADIO = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, fade_db=12.0, packet_loss=0.02)


def _run(chunk: int | None, devices: int = 40, seconds: float = 12.0) -> tuple[list[list[list[Fix]]], MlLocalizer]:
    """Per tick, the parts it was handed out in (``chunk=None``: ``fixes``, one part)."""
    layout = load_layout(LAYOUT)
    model = PathLossModel.from_layout(layout)
    run = synthetic_run(model, devices, seconds, RADIO, np.random.default_rng(3), walking=True)
    ids = [s.id for s in layout.sensors]
    obs = [
        Observation(t, ids[s], f"d{d}", r)
        for t, s, d, r in zip(run.ts.tolist(), run.sensor.tolist(), run.device.tolist(), run.rssi.tolist(), strict=True)
    ]
    loc = MlLocalizer(layout, LocalizationSettings())
    ticks = np.arange(np.ceil(run.ts[0]), run.ts[-1], 1.0)
    cut = np.searchsorted(run.ts, ticks, side="right")
    out: list[list[list[Fix]]] = []
    lo = 0
    for tick, hi in zip(ticks.tolist(), cut.tolist(), strict=True):
        loc.add(obs[lo:hi])
        lo = hi
        out.append([loc.fixes(tick)] if chunk is None else list(loc.fixes_chunks(tick, chunk)))
    return out, loc


def test_one_part_is_bit_for_bit_the_plain_tick() -> None:
    plain, a = _run(None)
    parts, b = _run(0)
    assert all(len(p) <= 1 for p in parts)
    flat = [[(f.device, f.x, f.y, f.sigma_m, f.zone) for p in t for f in p] for t in parts]
    assert flat == [[(f.device, f.x, f.y, f.sigma_m, f.zone) for f in t[0]] for t in plain]
    assert a.stats == b.stats


def test_parts_hold_the_same_fixes_in_the_same_order() -> None:
    plain, a = _run(None)
    parts, b = _run(7)
    assert sum(len(t) > 1 for t in parts) > 5  # most ticks did come in several parts
    for whole, split in zip(plain, parts, strict=True):
        assert all(1 <= len(p) <= 7 for p in split)
        got = [f for p in split for f in p]
        assert [f.device for f in got] == [f.device for f in whole[0]]
        # equal up to float rounding: part sizes change the estimator's numerics in the last bits
        # (its censored terms take the exact erfc for small arrays, the approximation for large ones)
        for f, g in zip(whole[0], got, strict=True):
            assert abs(f.x - g.x) < 0.01 and abs(f.y - g.y) < 0.01 and abs(f.sigma_m - g.sigma_m) < 0.01
    # what the tick learns from all devices and its schedules moved on once per tick, as in one part
    assert a._ticks == b._ticks == len(plain)
    assert a.stats.fixes == b.stats.fixes
    assert a.learn.sigma() == b.learn.sigma()
