from __future__ import annotations

import numpy as np

from gateway.layout import Layout, Sensor, Store
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


def office_layout(exponent: float = 1.5) -> Layout:
    """A room shaped like the real walked tracks' office (19.4 x 19.4 m, 12 receivers on three rows of
    four, at 1.22 m / 2.30 m: ~0.6 / 0.5 m from a phone carried at ~1.8 m), same radio everywhere."""
    xs = (1.0, 7.3, 13.3, 18.2)
    ys = (1.2, 7.0, 12.6, 17.8)
    sensors = []
    for j, y in enumerate(ys):
        for i, x in enumerate(xs):
            if (i + j) % 4 == 3:
                continue  # 12 of the 16 grid points, as in the room
            sensors.append(
                Sensor(id=f"sensor{len(sensors):02d}", x=x, y=y, z=0.6 if i % 2 else 0.5, path_loss_exponent=exponent)
            )
    return Layout(store=Store(id="office", width_m=19.41, depth_m=19.37), sensors=sensors)
