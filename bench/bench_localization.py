"""Localization benchmark: real walked tracks, a family of simulated stores, throughput, CPU share.

    python -m bench.bench_localization [--quick] [--only real|family|speed]

1. **Real tracks** (``../shared/data/ble-real``, or ``$GATEWAY_SHARED_DATA/ble-real``): every track
   through ``gateway locate``'s code path with the default settings and the track's layout, scored by
   the data set's ``score.py``, beside its two references computed in the same run by its
   ``baselines.py`` (weighted centroid, plain 2 s-window Gauss-Newton MLE). Skipped, and said so,
   when the data is absent.
2. **Family of stores** (``gateway.sim.radio.FAMILY``: 8 stores, 6-16 sensors, 10 x 8 to 50 x 40 m,
   four layout styles, 1-10 adverts/s, radio drawn from the documented ranges). Per store:
   *static ideal* - the localizer's own model (true layout, white noise of the store's residual, the
   store's floor), 10 s of adverts from still phones, RMSE of the fix at 10 s over its Cramér-Rao
   bound for those adverts; *walking* - the full radio (persistent shadowing, gain offsets, heights,
   packet loss, fades), the layout as ``gateway calibrate`` fits it from a simulated technician walk,
   shoppers walking with pauses: median error after 10 s over the linearised causal limit
   (:func:`gateway.localization.crlb.tracking_limit`, same paths, true radio).
3. **Speed**: ``gateway locate`` throughput on one core and the CPU share of 500 devices in real time,
   each beside the centroid localizer run in the same process.

Accuracy is deterministic (seeded); CPU figures depend on the machine's load: read them beside their
same-run reference.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from gateway.config import LocalizationSettings
from gateway.layout import Layout, load_layout
from gateway.localization import Localizer, make_localizer
from gateway.localization.calibrate import CalibrationData, fit_sensors
from gateway.localization.crlb import crlb_rmse, tracking_limit
from gateway.localization.pathloss import PathLossModel
from gateway.localization.synth import RadioParams, SyntheticRun, channel_run, synthetic_run, write_jsonl
from gateway.models import Observation
from gateway.ops.locate import ObsReader, run_locate
from gateway.sim.radio import FAMILY, Channel, FamilySpec, RadioEnv, SimStore, family_store, technician_walk

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ROOT / "hardware" / "layouts" / "demo-store.toml"
REALISTIC = RadioParams(sigma_db=6.0, tx_spread_db=4.0, fade_probability=0.05, fade_db=12.0, packet_loss=0.02)
STATIC_BAR = 1.25
WALK_BAR = 1.1


def data_dir() -> Path:
    env = os.environ.get("GATEWAY_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.mean(e**2)))


def pf(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- 1. real tracks -------------------------------------------------------------------------------


def _load_module(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path}: not a Python module")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scored_times(fixes: Path, truth: np.ndarray) -> np.ndarray:
    """The times of the fixes ``score.py`` scores (inside the truth's span), in its order."""
    ts = []
    with open(fixes, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                t = float(json.loads(line)["ts"])
                if truth[0, 0] <= t <= truth[-1, 0]:
                    ts.append(t)
    return np.asarray(ts, dtype=float)


def median_diff_interval(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    block_s: float = 10.0,
    draws: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """90 % interval of median(error a) - median(error b) by a moving-block bootstrap over time.

    Errors of one walk are correlated over seconds, so resampling single fixes would understate the
    spread; whole ``block_s`` blocks of the walk are drawn (the same blocks for both estimators). A
    difference whose interval holds 0 cannot be told apart on this track.
    """
    (ta, ea), (tb, eb) = a, b
    t0 = min(float(ta.min()), float(tb.min()))
    ba, bb = ((ta - t0) // block_s).astype(int), ((tb - t0) // block_s).astype(int)
    n = int(max(ba.max(), bb.max())) + 1
    ga = [ea[ba == k] for k in range(n)]
    gb = [eb[bb == k] for k in range(n)]
    rng = np.random.default_rng(seed)
    d = np.empty(draws)
    for i in range(draws):
        pick = rng.integers(0, n, n)
        xa = np.concatenate([ga[k] for k in pick])
        xb = np.concatenate([gb[k] for k in pick])
        d[i] = (np.median(xa) if len(xa) else np.nan) - (np.median(xb) if len(xb) else np.nan)
    return float(np.nanpercentile(d, 5)), float(np.nanpercentile(d, 95))


SEGMENTS = ("stand", "turn", "straight")


def segments(truth: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """What the walker was doing at each time, from the camera truth (rows ts, x, y): 0 *stand* (speed
    over +-1 s below 0.12 m/s), 1 *turn* (heading over +-2 s changing by more than 35 degrees), 2
    *straight* (docs/localization.md 9.8)."""

    def at(t: np.ndarray) -> np.ndarray:
        return np.column_stack([np.interp(t, truth[:, 0], truth[:, 1]), np.interp(t, truth[:, 0], truth[:, 2])])

    speed = np.hypot(*((at(ts + 1.0) - at(ts - 1.0)) / 2.0).T)
    a, b = at(ts) - at(ts - 2.0), at(ts + 2.0) - at(ts)
    turn = np.abs((np.arctan2(b[:, 1], b[:, 0]) - np.arctan2(a[:, 1], a[:, 0]) + np.pi) % (2 * np.pi) - np.pi)
    moved = (np.hypot(*a.T) > 0.2) & (np.hypot(*b.T) > 0.2)
    return np.where(speed < 0.12, 0, np.where((turn > np.radians(35)) & moved, 1, 2))


def real_tracks(settings: LocalizationSettings) -> None:
    real = data_dir() / "ble-real"
    if not (real / "score.py").is_file() or not (real / "baselines.py").is_file():
        print(f"loc.real: {real} is absent: real-track figures skipped (the rest of the bench runs)")
        return
    sys.dont_write_bytecode = True  # keep the data folder clean
    baselines = _load_module("ble_real_baselines", real / "baselines.py")
    scorer = baselines.scorer
    tracks = sorted(p.parent for p in real.glob("*/layout.toml"))
    ours: list[tuple[dict[str, object], np.ndarray]] = []
    refs: dict[str, list[tuple[dict[str, object], np.ndarray]]] = {"mle": [], "centroid": []}
    per_track_ok = True
    by_seg: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"ours": [], "mle": []}
    with tempfile.TemporaryDirectory() as tmp:
        for td in tracks:
            layout = load_layout(td / "layout.toml")
            fixes = Path(tmp) / f"{td.name}.jsonl"
            with open(td / "observations.jsonl", encoding="utf-8") as f, open(fixes, "w", encoding="utf-8") as out:
                run_locate(layout, settings, f, out, ObsReader(td.name, layout.sensor_index(), strict=False))
            res, err = scorer.score(str(td), str(fixes))
            ours.append((res, err))
            line = {}
            for m in refs:
                path = Path(tmp) / f"{td.name}.{m}.jsonl"
                with open(path, "w", encoding="utf-8") as f:
                    for fx in baselines.run(str(td), m):
                        f.write(f'{{"ts": {fx["ts"]}, "device": "{fx["device"]}", "x": {fx["x"]}, "y": {fx["y"]}}}\n')
                rr, ee = scorer.score(str(td), str(path))
                refs[m].append((rr, ee))
                line[m] = rr
            below = res["median_m"] < line["mle"]["median_m"]
            per_track_ok &= below and res["coverage"] >= 0.9
            truth = next(iter(scorer.load_truth(str(td)).values()))
            mle_ts = _scored_times(Path(tmp) / f"{td.name}.mle.jsonl", truth)
            ours_ts = _scored_times(fixes, truth)
            lo, hi = median_diff_interval((ours_ts, err), (mle_ts, refs["mle"][-1][1]))
            by_seg["ours"].append((segments(truth, ours_ts), err))
            by_seg["mle"].append((segments(truth, mle_ts), refs["mle"][-1][1]))
            print(
                f"loc.real[{td.name}]: median {res['median_m']:.2f} m, p90 {res['p90_m']:.2f} m, coverage "
                f"{res['coverage']:.2f} ({res['n_fixes']} fixes) (reference MLE median {line['mle']['median_m']:.2f} m "
                f"p90 {line['mle']['p90_m']:.2f} m; centroid {line['centroid']['median_m']:.2f} / "
                f"{line['centroid']['p90_m']:.2f} m; below MLE: {'yes' if below else 'NO'}; ours - MLE median "
                f"{res['median_m'] - line['mle']['median_m']:+.2f} m, 90 % block-bootstrap interval "
                f"[{lo:+.2f}, {hi:+.2f}])"
            )
    parts = []
    for k, name in enumerate(SEGMENTS):
        e = {m: np.concatenate([err[seg == k] for seg, err in by_seg[m]]) for m in by_seg}
        if e["ours"].size and e["mle"].size:
            mo, mm = np.median(e["ours"]), np.median(e["mle"])
            parts.append(f"{name} {mo:.2f} vs {mm:.2f} m ({e['ours'].size} / {e['mle'].size} fixes)")
    print(f"loc.real[segments, pooled median ours vs MLE]: {'; '.join(parts)}")
    agg = scorer.aggregate(ours)
    mle = scorer.aggregate(refs["mle"])
    cen = scorer.aggregate(refs["centroid"])
    print(
        f"loc.real[pooled, {len(tracks)} tracks]: median {agg['median_m']:.2f} m (bar <= 1.2: "
        f"{pf(agg['median_m'] <= 1.2)}), p90 {agg['p90_m']:.2f} m (bar <= 3.5: {pf(agg['p90_m'] <= 3.5)}), "
        f"min coverage {agg['min_coverage']:.2f} (bar >= 0.9: {pf(agg['min_coverage'] >= 0.9)}); every track "
        f"below MLE: {pf(per_track_ok)} (reference MLE {mle['median_m']:.2f} / {mle['p90_m']:.2f} m, centroid "
        f"{cen['median_m']:.2f} / {cen['p90_m']:.2f} m)"
    )


# -- 2. the family of stores ----------------------------------------------------------------------


def feed(
    run: SyntheticRun,
    layout: Layout,
    settings: LocalizationSettings,
    interval: float = 1.0,
    loc: Localizer | None = None,
) -> np.ndarray:
    """Run a synthetic run through the daemon's localizer tick by tick (or through ``loc``, to read
    its stats afterwards): rows (t_rel, device, error)."""
    loc = loc if loc is not None else make_localizer(layout, settings)
    ids = [s.id for s in layout.sensors]
    ticks = np.arange(math.ceil(run.ts[0]), run.ts[-1], interval)
    cut = np.searchsorted(run.ts, ticks, side="right")
    names = [f"d{d}" for d in range(int(run.device.max()) + 1)]
    out = []
    lo = 0
    t0 = float(run.truth_t[0])
    for tick, hi in zip(ticks.tolist(), cut.tolist(), strict=True):
        if hi > lo:
            loc.add(
                [
                    Observation(t, ids[s], names[d], r)
                    for t, s, d, r in zip(
                        run.ts[lo:hi].tolist(),
                        run.sensor[lo:hi].tolist(),
                        run.device[lo:hi].tolist(),
                        run.rssi[lo:hi].tolist(),
                        strict=True,
                    )
                ]
            )
        lo = hi
        for f in loc.fixes(tick):
            d = int(f.device[1:])
            tr = run.truth_at(d, tick)
            out.append((tick - t0, d, float(np.hypot(f.x - tr[0], f.y - tr[1]))))
    return np.array(out)


def calibrated_layout(store: SimStore, seed: int) -> tuple[Layout, float]:
    """What ``gateway calibrate`` makes of a technician's walk through the store (reference beacon at
    5 adverts/s, lawnmower 3 m apart at 0.8 m/s): the layout with fitted p0 / exponents, and the fit's
    residual sigma."""
    layout = store.layout
    wp = technician_walk(layout)
    rate = 5.0
    t = np.arange(0.0, wp[-1, 0], 1.0 / rate)
    xy = np.column_stack([np.interp(t, wp[:, 0], wp[:, 1]), np.interp(t, wp[:, 0], wp[:, 2])])
    ch = Channel(store.env, layout.sensor_xy(), np.random.default_rng([seed, 1]))
    r, heard = ch.sample(np.zeros(t.size, dtype=np.int64), t, xy, np.zeros(t.size))
    # what the logged walk and the recorded reports give (the adverts each sensor missed included, as
    # `gateway calibrate` finds them by grouping one transmitter's reports in time)
    rows = [
        (int(s), "beacon", float(xy[i, 0]), float(xy[i, 1]), 0.0, float(r[i, s]), float(t[i]))
        for i, s in zip(*np.nonzero(heard), strict=True)
    ]
    misses = [
        (int(s), "beacon", float(xy[i, 0]), float(xy[i, 1]), 0.0) for i, s in zip(*np.nonzero(~heard), strict=True)
    ]
    data = CalibrationData.from_rows(rows, layout, {"beacon"}, misses)
    res = fit_sensors(data, layout, floor_dbm=LocalizationSettings().detection_floor_dbm)
    sensors = [
        s.model_copy(update={"rssi_at_1m": float(res.p0[i]), "path_loss_exponent": float(res.n[i])})
        for i, s in enumerate(layout.sensors)
    ]
    return layout.model_copy(update={"sensors": sensors}), res.sigma_db


def static_ideal(store: SimStore, settings: LocalizationSettings, devices: int, seed: int) -> tuple[float, float]:
    """RMSE of the fix 10 s after still phones start advertising, and the CRLB for those adverts."""
    true = store.true_layout()
    env = store.env
    ideal = RadioEnv.ideal(true, env.residual_db, float(np.mean(env.floor_dbm)))
    w, d = true.store.width_m, true.store.depth_m
    ch = Channel(ideal, true.sensor_xy(), np.random.default_rng([seed, 2]))
    run = channel_run(
        ch.sample, devices, 12.0, np.random.default_rng([seed, 3]), bounds=(0.5, w - 0.5, 0.5, d - 0.5),
        advert_interval_s=1.0 / store.advert_rate_hz,
    )  # fmt: skip
    e = feed(run, true, settings)
    at = e[np.isclose(e[:, 0], 10.0, atol=0.5)]
    pos = run.truth_xy[at[:, 1].astype(int), 0]
    adverts = 10.0 * store.advert_rate_hz
    bound = crlb_rmse(PathLossModel.from_layout(true), pos, env.residual_db, adverts, float(np.mean(env.floor_dbm)))
    return rmse(at[:, 2]), rmse(bound)


def walking(
    store: SimStore, layout: Layout, settings: LocalizationSettings, devices: int, duration: float, seed: int
) -> tuple[float, float, float]:
    """Median / p90 error after 10 s of shoppers walking with pauses, and the linearised causal limit."""
    true = store.true_layout()
    env = store.env
    w, d = true.store.width_m, true.store.depth_m
    ch = Channel(env, true.sensor_xy(), np.random.default_rng([seed, 4]))
    run = channel_run(
        ch.sample, devices, duration, np.random.default_rng([seed, 5]), bounds=(0.5, w - 0.5, 0.5, d - 0.5),
        walking=True, advert_interval_s=1.0 / store.advert_rate_hz,
    )  # fmt: skip
    e = feed(run, layout, settings)
    sel = e[e[:, 0] >= 10.0, 2]
    assert run.phase is not None
    times = run.truth_t[None, :] + run.phase[:, None]
    limit = tracking_limit(
        PathLossModel.from_layout(true), times, run.truth_xy, white_db=env.white_db, shadow_db=env.shadow_db,
        shadow_tau_s=env.shadow_tau_s, floor_dbm=env.floor_dbm, packet_loss=env.packet_loss,
        tx_prior_sd=env.tx_spread_db,
    )  # fmt: skip
    return float(np.median(sel)), float(np.percentile(sel, 90)), limit


def family(settings: LocalizationSettings, quick: bool) -> None:
    specs: tuple[FamilySpec, ...] = FAMILY[::2] if quick else FAMILY
    static_ok = walk_ok = True
    for i, spec in enumerate(specs):
        store = family_store(spec)
        env = store.env
        t0 = time.perf_counter()
        rm, bound = static_ideal(store, settings, 30 if quick else 80, i)
        cal, cal_sigma = calibrated_layout(store, i)
        n_walk = 10 if quick else 24
        if spec.rate_hz >= 5:
            n_walk = 6 if quick else 12
        med, p90, limit = walking(store, cal, settings, n_walk, 120.0 if quick else 240.0, i)
        s_ok = rm / bound <= STATIC_BAR
        w_ok = med / limit <= WALK_BAR
        static_ok &= s_ok
        walk_ok &= w_ok
        print(
            f"loc.family[{spec.name}: {spec.width:g}x{spec.depth:g} m, {spec.sensors} sensors {spec.kind}, "
            f"{spec.rate_hz:g} adverts/s, n {env.n.mean():.2f}, residual {env.residual_db:.1f} dB (white "
            f"{env.white_db:.1f}, shadowing {env.shadow_db:.1f} dB / {env.shadow_tau_s:.0f} s), loss "
            f"{env.packet_loss.mean():.2f}]: static RMSE {rm:.2f} m / CRLB {bound:.2f} m = {rm / bound:.2f} "
            f"(bar <= {STATIC_BAR}: {pf(s_ok)}); walking median {med:.2f} m (p90 {p90:.2f}) / limit {limit:.2f} m "
            f"= {med / limit:.2f} (bar <= {WALK_BAR}: {pf(w_ok)}); calibration residual {cal_sigma:.1f} dB; "
            f"{time.perf_counter() - t0:.0f} s"
        )
    print(f"loc.family[all {len(specs)} stores]: static {pf(static_ok)}, walking {pf(walk_ok)}")


# -- 3. speed --------------------------------------------------------------------------------------


def throughput(model: PathLossModel, layout: Layout, quick: bool) -> None:
    n, dur = (150, 30.0) if quick else (300, 60.0)
    run = synthetic_run(model, n, dur, REALISTIC, np.random.default_rng(4), walking=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "obs.jsonl"
        write_jsonl(run, [s.id for s in layout.sensors], str(path))
        rates = {}
        for label, settings in (
            ("default", LocalizationSettings()),
            ("centroid", LocalizationSettings(estimator="centroid")),
        ):
            reader = ObsReader(str(path), layout.sensor_index(), strict=False)
            c = time.process_time()
            with open(path, encoding="utf-8") as f:
                n_obs, _n_fix = run_locate(layout, settings, f, io.StringIO(), reader)
            rates[label] = n_obs / (time.process_time() - c)
        reader = ObsReader(str(path), layout.sensor_index(), strict=False)
        c = time.process_time()
        with open(path, encoding="utf-8") as f:
            parsed = sum(1 for _ in reader.read(f))
        parse_rate = parsed / (time.process_time() - c)
    print(
        f"loc.locate_throughput: {rates['default']:.0f} obs/s on one core ({n} devices; bar >= 50000: "
        f"{pf(rates['default'] >= 50000)}) (reference plain per-device numpy loop [centroid] "
        f"{rates['centroid']:.0f} obs/s, ratio {rates['default'] / rates['centroid']:.2f}; JSON parse+validate "
        f"alone {parse_rate:.0f} obs/s)"
    )


def realtime_share(model: PathLossModel, layout: Layout, quick: bool) -> None:
    n, dur = 500, (10.0 if quick else 60.0)
    run = synthetic_run(model, n, dur, REALISTIC, np.random.default_rng(5), walking=True)
    cpu = {}
    for label, settings in (
        ("default", LocalizationSettings()),
        ("centroid", LocalizationSettings(estimator="centroid")),
    ):
        loc = make_localizer(layout, settings)
        ids = [s.id for s in layout.sensors]
        obs = [
            Observation(t, ids[s], f"d{d}", r)
            for t, s, d, r in zip(
                run.ts.tolist(), run.sensor.tolist(), run.device.tolist(), run.rssi.tolist(), strict=True
            )
        ]
        ticks = np.arange(np.ceil(run.ts[0]), run.ts[-1], settings.fix_interval_s)
        cut = np.searchsorted(run.ts, ticks, side="right")
        lo = 0
        c = time.process_time()
        for tick, hi in zip(ticks.tolist(), cut.tolist(), strict=True):
            loc.add(obs[lo:hi])
            loc.fixes(tick)
            lo = hi
        cpu[label] = time.process_time() - c
    print(
        f"loc.realtime_500_devices: {100 * cpu['default'] / dur:.1f}% of a core ({run.ts.size / dur:.0f} obs/s, "
        f"fix every 1 s per device; bar < 10%: {pf(100 * cpu['default'] / dur < 10)}) (reference centroid loop "
        f"{100 * cpu['centroid'] / dur:.1f}%)"
    )


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    only = argv[argv.index("--only") + 1] if "--only" in argv else None
    settings = LocalizationSettings()
    t0 = time.perf_counter()
    if only in (None, "real"):
        real_tracks(settings)
    if only in (None, "family"):
        family(settings, quick)
    if only in (None, "speed"):
        layout = load_layout(LAYOUT)
        model = PathLossModel.from_layout(layout)
        throughput(model, layout, quick)
        realtime_share(model, layout, quick)
    print(f"loc.bench_wall_time: {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
