"""Presence benchmark: throughput of the presence stage, and accuracy against simulator ground truth.

    python -m bench.bench_presence [--quick]

1. **Accuracy (truth + noise).** The store simulator (gateway/sim/store.py) generates shoppers and
   passers-by and records their true visits (start/end, dwell per zone). Presence is fed each
   person's *true* trajectory sampled at 1 Hz plus realistic localisation noise (a correlated
   Gauss-Markov error of ``NOISE_M`` metres per axis, correlation time ``NOISE_TAU_S``), with the
   zone of the noisy point; the subject id is the simulated person. We print visitor and
   passer-by counts, and per zone the number of visits and the total dwell, beside the truth.
2. **Accuracy (full chain).** The simulator's radio observations go through the identity resolver,
   the localizer on main (``make_localizer``) and presence; store-level figures are printed for
   information (they measure the localizer as much as presence). Shoppers and passers-by only:
   staff and fixtures are set apart after ``presence.resident_after_s`` (1 h), longer than the
   quick run (``bench_store`` measures that).
3. **Throughput.** A dense crowd's fixes (truth + noise) fed per 1 s fix cadence
   (``update`` + ``tick``), against a reference plain-Python loop that only stores the last
   timestamp per device.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from gateway.config import PresenceSettings, Settings, SimulatorSettings
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.subjects import IdentityResolver
from gateway.layout import Layout, load_layout
from gateway.models import EventBase, Fix, Observation, VisitEnded
from gateway.pipeline import Pipeline
from gateway.presence.engine import PresenceEngine
from gateway.sim.store import StoreSimulator, VisitTruth, _Person

LAYOUT_PATH = Path(__file__).resolve().parent.parent / "hardware" / "layouts" / "demo-store.toml"
# Bar noise: 0.7 m per axis = ~0.8 m median radial error, what a calibrated multi-sensor BLE
# localizer with tracking reaches in simulation (the localization issue's target). 1.0 and 1.5 m
# are printed as sensitivity rows.
NOISE_M = float(os.environ.get("BENCH_PRESENCE_NOISE_M", "0.7"))
SENSITIVITY_NOISE_M = (1.0, 1.5)
NOISE_TAU_S = 5.0


def simulate_people(
    layout: Layout, settings: SimulatorSettings, duration_s: float
) -> tuple[StoreSimulator, dict[int, _Person], list[VisitTruth]]:
    """Step the simulator (coarse ticks) and keep every person it spawned.

    Only trajectories are needed here, so the detection floor is raised to the top of its range:
    the same people spawn (the random stream is consumed identically) but almost no advert is
    "heard", which skips building millions of observations.
    """
    settings = settings.model_copy(update={"detection_floor_dbm": -30.0})
    sim = StoreSimulator(layout, settings)
    people: dict[int, _Person] = {}
    t = settings.start_ts
    while t < settings.start_ts + duration_s:
        t += 60.0
        sim.step(t)
        people.update(sim.people)
    return sim, people, list(sim.visits)


def truth_fixes(
    engine: PresenceEngine, people: dict[int, _Person], t_stop: float, seed: int, noise_m: float = NOISE_M
) -> list[Fix]:
    rng = np.random.default_rng(seed)
    a = float(np.exp(-1.0 / NOISE_TAU_S))
    out: list[Fix] = []
    for pid, p in people.items():
        if p.kind not in ("visitor", "passer-by"):  # staff and fixtures are not in the truth visits
            continue
        t0 = float(p.t[0]) + float(rng.uniform(0, 1))
        t1 = min(float(p.t[-1]), t_stop)
        if t1 <= t0:
            continue
        ts = np.arange(t0, t1, 1.0)
        xs, ys = p.position(ts)
        # Gauss-Markov (AR(1)) error with stationary std NOISE_M per axis
        e = rng.normal(0.0, noise_m * np.sqrt(1 - a * a), size=(len(ts), 2))
        e[0] *= 1.0 / np.sqrt(1 - a * a)
        for i in range(1, len(ts)):
            e[i] += a * e[i - 1]
        xy = np.column_stack([xs, ys]) + e
        zones = engine.zones_for(xy)
        dev = f"person-{pid}"
        out.extend(Fix(float(ts[i]), dev, float(xy[i, 0]), float(xy[i, 1]), noise_m, zones[i]) for i in range(len(ts)))
    out.sort(key=lambda f: f.ts)
    return out


def run_engine(engine: PresenceEngine, fixes: list[Fix], t_end: float) -> list[EventBase]:
    """Feed fixes on a 1 s cadence as the pipeline does (update + tick per tick)."""
    events: list[EventBase] = []
    i = 0
    n = len(fixes)
    t = np.floor(fixes[0].ts) + 1.0 if fixes else t_end
    while t <= t_end:
        j = i
        while j < n and fixes[j].ts < t:
            j += 1
        events += engine.update(fixes[i:j], t)
        events += engine.tick(t)
        i = j
        t += 1.0
    events += engine.close(t_end)
    return events


def truth_stays(
    layout: Layout, people: dict[int, _Person], truth: list[VisitTruth], min_stay_s: float
) -> dict[int, set[str]]:
    """Zones where each true visitor *stayed* >= ``min_stay_s`` continuously (from trajectories).

    The simulator's ``dwell_by_zone`` also lists zones only clipped for half a second while
    walking past a corner; a debounced presence stage cannot and should not report those as zone
    visits, so per-zone visit counts are compared on stays.
    """
    eng = PresenceEngine(layout, PresenceSettings(), layout.store.id)
    out: dict[int, set[str]] = {}
    for v in truth:
        if v.kind != "visitor" or v.person not in people:
            continue
        ts = np.arange(v.start, v.end + 0.25, 0.5)
        xs, ys = people[v.person].position(ts)
        labels = eng.zones_for(np.column_stack([xs, ys]))
        stays: set[str] = set()
        i = 0
        while i < len(labels):
            j = i
            while j + 1 < len(labels) and labels[j + 1] == labels[i]:
                j += 1
            if labels[i] is not None and (j - i + 1) * 0.5 >= min_stay_s:
                stays.add(labels[i])
            i = j + 1
        out[v.person] = stays
    return out


def compare(
    label: str,
    truth: list[VisitTruth],
    events: list[EventBase],
    in_store: list[str],
    stays: dict[int, set[str]] | None = None,
) -> float:
    ended = [e for e in events if isinstance(e, VisitEnded)]
    vis = [e for e in ended if e.visitor]
    pas = [e for e in ended if not e.visitor]
    t_vis = [v for v in truth if v.kind == "visitor"]
    t_pas = [v for v in truth if v.kind == "passer-by"]
    worst = 0.0

    def line(name: str, got: float, want: float, unit: str = "") -> None:
        nonlocal worst
        err = abs(got - want) / want if want else (0.0 if got == want else 1.0)
        worst = max(worst, err)
        print(f"presence.{label}.{name}: {got:.0f}{unit} (truth {want:.0f}{unit}, error {100 * err:.1f}%)")

    line("visitors", len(vis), len(t_vis))
    line("passers_by", len(pas), len(t_pas))
    got_dur = sum(e.duration_s for e in vis)
    want_dur = sum(v.end - v.start for v in t_vis)
    line("visit_time_total", got_dur, want_dur, " s")
    for z in in_store:
        gv = sum(1 for e in vis if z in e.dwell_by_zone)
        if stays is not None:
            line(f"zone.{z}.visits", gv, sum(1 for st in stays.values() if z in st))
        else:
            line(f"zone.{z}.visits", gv, sum(1 for v in t_vis if z in v.dwell_by_zone))
        gd = sum(e.dwell_by_zone.get(z, 0.0) for e in vis)
        td = sum(v.dwell_by_zone.get(z, 0.0) for v in t_vis)
        line(f"zone.{z}.dwell", gd, td, " s")
    return worst


def accuracy_truth(layout: Layout, quick: bool) -> float:
    hours = 2.0 if quick else 8.0
    s = SimulatorSettings(seed=7, shoppers_per_hour=120, beacons=0)
    sim, people, _ = simulate_people(layout, s, hours * 3600)
    t_end = s.start_ts + hours * 3600 + 3600  # let everyone spawned leave
    sim.step(t_end)
    truth = [v for v in sim.visits if v.start < s.start_ts + hours * 3600]
    people = {
        pid: p for pid, p in people.items() if p.kind in ("visitor", "passer-by") and p.t[0] < s.start_ts + hours * 3600
    }
    ps = PresenceSettings(k_anonymity=1)
    stays = truth_stays(layout, people, truth, ps.enter_debounce_s)
    in_store = [z.id for z in layout.zones if z.kind != "outside"]
    worst_bar = 0.0
    for noise in (NOISE_M, *SENSITIVITY_NOISE_M):
        engine = PresenceEngine(layout, ps, layout.store.id)
        fixes = truth_fixes(engine, people, t_end, seed=1, noise_m=noise)
        t0 = time.perf_counter()
        events = run_engine(engine, fixes, t_end + 120)
        dt = time.perf_counter() - t0
        label = f"truth_noise_{noise:g}m"
        print(
            f"presence.{label}: {hours:g} simulated h, {len(people)} people, {len(fixes)} fixes in {dt:.1f} s, "
            f"correlated noise {noise:g} m/axis (tau {NOISE_TAU_S:g} s), sim seed 7; zone visits = stays >= "
            f"{ps.enter_debounce_s:g} s"
        )
        worst = compare(label, truth, events, in_store, stays)
        bar = " (bar: within 5%)" if noise == NOISE_M else " (sensitivity, no bar)"
        print(f"presence.{label}.worst_error: {100 * worst:.1f}%{bar}")
        if noise == NOISE_M:
            worst_bar = worst
            clip = sum(1 for v in truth if v.kind == "visitor" for z in v.dwell_by_zone if z in in_store)
            got = sum(len(e.dwell_by_zone) for e in events if isinstance(e, VisitEnded) and e.visitor)
            print(
                f"presence.{label}.zone_visits_incl_clips: {got} (truth counting every touch of a zone, "
                f"even a 0.5 s corner clip: {clip}; informational)"
            )
        if quick:
            break
    return worst_bar


def accuracy_chain(layout: Layout, quick: bool) -> None:
    hours = 0.25 if quick else 2.0
    # shoppers and passers-by only: staff and fixed devices are set apart once present for
    # presence.resident_after_s (1 h), longer than the quick run, and the truth has no visits of
    # theirs; with them (the simulator's default 2 staff, 3 fixtures) the chain's zone dwell read
    # 2-3 x truth (service 4512 s vs 1416): three "visits" lasting the whole run. bench_store
    # measures staff and fixtures set apart, over 2 h.
    s = SimulatorSettings(seed=11, shoppers_per_hour=120, beacons=0, staff=0, fixtures=0)
    sim = StoreSimulator(layout, s)
    keyring = PseudonymKeyring()
    resolver = IdentityResolver(keyring, optout_key=b"k" * 32)
    # the daemon's path: pseudonyms -> rotation linker (phones rotate unlinkably) -> localizer -> presence
    settings = Settings.model_validate({"presence": {"k_anonymity": 1}})
    pipe = Pipeline(settings, layout, identity=resolver)
    loc = pipe.localizer
    events: list[EventBase] = []
    t = s.start_ts
    t_stop = s.start_ts + hours * 3600
    t_end = t_stop + 1800
    while t < t_end:
        t += 1.0
        events += pipe.process(sim.step(t))
    events += pipe.advance(t_end)
    events += pipe.close()
    nfix = pipe.stats.fixes
    # the simulator keeps spawning people after t_stop (so everyone can leave): compare visits
    # that started before t_stop on both sides
    truth = [v for v in sim.visits if v.start < t_stop]
    ended = [e for e in events if isinstance(e, VisitEnded) and e.started_ts < t_stop]
    vis = sum(1 for e in ended if e.visitor)
    t_vis = sum(1 for v in truth if v.kind == "visitor")
    print(
        f"presence.chain ({type(loc).__name__}, {hours:g} h, {nfix} fixes): visitors {vis} (truth {t_vis}), "
        f"passers-by {len(ended) - vis} (truth {len(truth) - t_vis}) - informational, includes localizer error; "
        "no staff or fixtures (bench_store sets them apart)"
    )
    dw: Counter[str] = Counter()
    tw: Counter[str] = Counter()
    for e in ended:
        if e.visitor:
            dw.update(e.dwell_by_zone)
    for v in truth:
        if v.kind == "visitor":
            tw.update({k: d for k, d in v.dwell_by_zone.items() if k in dw or k != "street"})
    for z in sorted(set(tw) - {"street"}):
        print(f"presence.chain.zone.{z}.dwell: {dw[z]:.0f} s (truth {tw[z]:.0f} s)")


def throughput(layout: Layout, quick: bool) -> float:
    minutes = 8.0 if quick else 20.0
    s = SimulatorSettings(seed=3, shoppers_per_hour=20000, beacons=0)
    _, people, _ = simulate_people(layout, s, minutes * 60)
    t_end = s.start_ts + minutes * 60
    engine = PresenceEngine(layout, PresenceSettings(), layout.store.id)
    fixes = truth_fixes(engine, people, t_end, seed=2)
    # group per 1 s cadence beforehand so only presence is timed
    groups: list[tuple[float, list[Fix]]] = []
    t = np.floor(fixes[0].ts) + 1.0
    i = 0
    while i < len(fixes):
        j = i
        while j < len(fixes) and fixes[j].ts < t:
            j += 1
        groups.append((t, fixes[i:j]))
        i = j
        t += 1.0
    best = 0.0
    nev = 0
    for _ in range(2 if quick else 3):
        engine = PresenceEngine(layout, PresenceSettings(), layout.store.id)
        t0 = time.perf_counter()
        nev = 0
        for now, g in groups:
            nev += len(engine.update(g, now))
            nev += len(engine.tick(now))
        dt = time.perf_counter() - t0
        best = max(best, len(fixes) / dt)
    ref = 0.0
    for _ in range(3):
        last: dict[str, float] = {}
        t0 = time.perf_counter()
        for _now, g in groups:
            for f in g:
                last[f.device] = f.ts
        ref = max(ref, len(fixes) / (time.perf_counter() - t0))
    conc = len(fixes) / max(1, len(groups))
    print(
        f"presence.throughput: {best:.0f} fixes/s (reference plain-python loop {ref:.3g}/s, ratio {best / ref:.2f}; "
        f"{len(fixes)} fixes, ~{conc:.0f} subjects/s, {nev} events; bar 100000)"
    )
    return best


def identity_throughput(quick: bool) -> float:
    """Identity stage (raw id -> subject, opt-out check) on a realistic mix: 2000 devices, 200 linked."""
    n = 100_000 if quick else 400_000
    rng = np.random.default_rng(5)
    devs = [":".join(f"{b:02X}" for b in rng.integers(0, 256, 6)) for _ in range(2000)]
    links = [f"irk:{i % 100:032x}" if i < 200 else None for i in range(2000)]
    idx = rng.integers(0, 2000, n)
    t0 = 1_767_261_600.0
    obs = [Observation(t0 + i * 0.001, "n11", devs[j], -60.0, "ble", None, links[j]) for i, j in enumerate(idx)]
    resolver = IdentityResolver(PseudonymKeyring(), optout_key=b"k" * 32)
    resolver.add_optout(devs[0], t0)
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for k in range(0, n, 500):
            resolver.resolve_batch(obs[k : k + 500], obs[min(k + 499, n - 1)].ts)
        best = max(best, n / (time.perf_counter() - start))
    ref = 0.0
    table = {(d, lk): d.lower() for d, lk in zip(devs, links, strict=True)}
    for _ in range(3):
        start = time.perf_counter()
        out = []
        for o in obs:
            out.append(Observation(o.ts, o.sensor, table[(o.device, o.link)], o.rssi, o.radio, o.rssi_at_1m, None))
        ref = max(ref, n / (time.perf_counter() - start))
    print(
        f"identity.resolve_throughput: {best:.0f} observations/s (reference plain-python dict+copy loop "
        f"{ref:.3g}/s, ratio {best / ref:.2f}; {n} observations, 2000 devices, opt-out list active)"
    )
    return best


def main(quick: bool = False) -> None:
    layout = load_layout(LAYOUT_PATH)
    identity_throughput(quick)
    throughput(layout, quick)
    accuracy_truth(layout, quick)
    accuracy_chain(layout, quick)


if __name__ == "__main__":
    main("--quick" in sys.argv)
