from __future__ import annotations

import numpy as np

from gateway.localization.estimator import Problem, aggregate
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, simulate_rssi


def static_problem(
    model: PathLossModel, pos: np.ndarray, tx: np.ndarray, adverts: int, radio: RadioParams, seed: int
) -> Problem:
    """``adverts`` adverts from each static device, aggregated like a window."""
    rng = np.random.default_rng(seed)
    d = pos.shape[0]
    s = model.num_sensors
    r, heard = simulate_rssi(model, np.repeat(pos, adverts, 0), np.repeat(tx, adverts), radio, rng)
    dev = np.repeat(np.arange(d), adverts)[:, None].repeat(s, 1)
    sen = np.tile(np.arange(s), (d * adverts, 1))
    return aggregate(dev[heard], sen[heard], r[heard], d, s, np.ones(s, dtype=bool))


def interior_positions(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(2, 28, n), rng.uniform(2, 18, n)])
