"""``gateway locate`` and ``gateway calibrate``: the localizer and the calibration fit on files.

``locate`` replays time-ordered observations through the very localizer the daemon runs, ticking
every ``fix_interval_s`` on an absolute time grid. A tick at ``T`` is only run once an observation
with ``ts > T`` has been read, so the output for a prefix of the input is a prefix of the output
(nothing is flushed at end of input). Bad lines are skipped and counted (``--strict``: first bad
line is an error, exit 2); the counts go to stderr.
"""

from __future__ import annotations

import argparse
import json
import json.scanner
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from gateway.config import ConfigError, LocalizationSettings, load_settings
from gateway.layout import Layout, LayoutError, load_layout

EMBEDDED_LAYOUT = Path(__file__).resolve().parent.parent / "data" / "demo-store.toml"


class InputError(ValueError):
    """A bad input line in strict mode (message names the file and line)."""


def add_commands(sub: Any) -> None:
    loc = sub.add_parser("locate", help="positions from an observations JSON-lines file (or the CRLB map)")
    loc.add_argument("obs", nargs="?", help="observations JSON lines {ts,sensor,device,rssi}; '-' for stdin")
    loc.add_argument("--layout", default=None, help="store layout TOML (default: the embedded demo store)")
    loc.add_argument("--config", default=None, help="gateway config TOML ([localization] section is used)")
    loc.add_argument("--crlb", action="store_true", help="print the Cramér-Rao bound map instead of locating")
    loc.add_argument("--sigma-db", type=float, default=None, help="noise sigma (dB) for --crlb / the estimator")
    loc.add_argument("--adverts", type=float, default=None, help="--crlb: adverts per sensor (default: window)")
    loc.add_argument("--step", type=float, default=None, help="--crlb: grid step (m, default 2)")
    loc.add_argument("--json", action="store_true", help="--crlb: print the map as JSON")
    loc.add_argument("--strict", action="store_true", help="stop at the first bad input line (exit 2)")
    loc.set_defaults(func=_locate)

    cal = sub.add_parser("calibrate", help="fit per-sensor rssi_at_1m / path_loss_exponent; print [[sensors]]")
    cal.add_argument("obs", help="observations JSON lines {ts,sensor,device,rssi}")
    cal.add_argument(
        "--positions",
        default=None,
        help="JSON lines {device,x,y[,z][,ts]}: reference beacons (no ts) or a walk (ts, interpolated)",
    )
    cal.add_argument("--layout", default=None, help="store layout TOML (sensor positions, starting values)")
    cal.add_argument("--no-sensor-links", action="store_true", help="ignore sensors hearing each other")
    cal.add_argument(
        "--advert-gap",
        type=float,
        default=0.04,
        help="reports of one transmitter closer than this (s) are one advert; a sensor missing from an advert"
        " of a reference transmitter counts as a miss (0: do not count misses)",
    )
    cal.add_argument("--out", default=None, help="write the TOML here instead of stdout")
    cal.set_defaults(func=_calibrate)


# -- shared helpers ----------------------------------------------------------------------------


def _err(msg: str) -> None:
    print(msg, file=sys.stderr)


def _load(args: argparse.Namespace) -> tuple[Layout, LocalizationSettings] | int:
    try:
        layout = load_layout(args.layout or EMBEDDED_LAYOUT)
    except LayoutError as e:
        _err(str(e))
        return 2
    try:
        settings = load_settings(getattr(args, "config", None)).localization
    except ConfigError as e:
        for line in e.lines:
            _err(line)
        return 2
    if getattr(args, "sigma_db", None) is not None:
        if not (0 < args.sigma_db <= 30):
            _err(f"--sigma-db {args.sigma_db}: must be in (0, 30]")
            return 2
        settings = settings.model_copy(update={"sigma_db": args.sigma_db})
    return layout, settings


def _open(path: str) -> IO[str]:
    return sys.stdin if path == "-" else open(path, encoding="utf-8", errors="replace")


class ObsReader:
    """Validating JSON-lines reader: yields ``(ts, sensor_index, device, rssi)``, counts skips."""

    def __init__(self, name: str, sensor_index: dict[str, int], strict: bool) -> None:
        self.name = name
        self.sidx = sensor_index
        self.strict = strict
        self.lines = 0
        self.skipped: dict[str, int] = {}
        self.examples: list[str] = []
        self.last_ts = -math.inf

    def _skip(self, reason: str, lineno: int, detail: str) -> None:
        msg = f"{self.name}:{lineno}: {detail}"
        if self.strict:
            raise InputError(msg)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(msg)

    def read(self, f: IO[str]) -> Iterator[tuple[float, int, str, float]]:
        scan = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]
        sidx = self.sidx
        for lineno, line in enumerate(f, 1):
            self.lines = lineno
            start = line.find("{")
            if start != 0 and (start < 0 or line[:start].strip()):
                if line.strip():
                    self._skip("bad_json", lineno, "not a JSON object")
                continue
            try:
                # the C scanner directly (what json.loads ends in, minus two Python layers)
                d, end = scan(line, start)
                if line[end:].strip():
                    raise ValueError("trailing data")
                ts = d["ts"]
                sensor = d["sensor"]
                device = d["device"]
                rssi = d["rssi"]
            except (StopIteration, ValueError, RecursionError):
                self._skip("bad_json", lineno, "not valid JSON")
                continue
            except (KeyError, TypeError):
                self._skip("missing_field", lineno, "needs an object with ts, sensor, device, rssi")
                continue
            if type(ts) not in (int, float) or not math.isfinite(ts):
                self._skip("bad_ts", lineno, f"ts: not a finite number: {ts!r}")
                continue
            if type(rssi) not in (int, float) or not (-130.0 <= rssi <= 20.0):
                self._skip("bad_rssi", lineno, f"rssi: not a number in [-130, 20] dBm: {rssi!r}")
                continue
            s = sidx.get(sensor) if isinstance(sensor, str) else None
            if s is None:
                self._skip("unknown_sensor", lineno, f"sensor: {sensor!r} is not in the layout")
                continue
            if not isinstance(device, str) or not device:
                self._skip("bad_device", lineno, "device: must be a non-empty string")
                continue
            if ts < self.last_ts:
                self._skip("out_of_order", lineno, f"ts {ts} is earlier than a previous line ({self.last_ts})")
                continue
            self.last_ts = ts
            yield float(ts), s, device, float(rssi)

    def report(self, prog: str, extra: str) -> None:
        for m in self.examples:
            _err(f"{prog}: skipped {m}")
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        _err(f"{prog}: {self.lines} lines, {extra}, skipped: {skipped}")


# -- locate --------------------------------------------------------------------------------------


def _crlb(args: argparse.Namespace, layout: Layout, settings: LocalizationSettings) -> int:
    from gateway.localization.crlb import crlb_map

    step = 2.0 if args.step is None else args.step
    size = max(layout.store.width_m, layout.store.depth_m)
    if not (math.isfinite(step) and 0.05 < step <= size):
        _err(f"locate: --step {step:g}: must be > 0.05 m and at most the store's size ({size:g} m)")
        return 2
    if args.adverts is not None and not (math.isfinite(args.adverts) and 0 < args.adverts <= 1e6):
        _err(f"locate: --adverts {args.adverts:g}: must be a number of adverts per sensor > 0")
        return 2
    adverts = args.adverts if args.adverts is not None else settings.window_s / settings.fix_interval_s
    xs, ys, r = crlb_map(layout, settings.sigma_db, step, adverts, settings.detection_floor_dbm)
    if args.json:
        print(json.dumps({"sigma_db": settings.sigma_db, "adverts": adverts, "x": xs.round(3).tolist(),
                          "y": ys.round(3).tolist(), "rmse_m": r.round(3).tolist()}))  # fmt: skip
        return 0
    print(
        f"# Cramér-Rao bound (CRLB) on 2-D position RMSE (m), sigma {settings.sigma_db} dB, "
        f"{adverts:g} advert(s) per sensor, unknown tx power, floor {settings.detection_floor_dbm} dBm; "
        "rows y (top = back of store)"
    )
    print("   y\\x " + " ".join(f"{x:5.1f}" for x in xs))
    for j in range(len(ys) - 1, -1, -1):
        print(f"{ys[j]:6.1f} " + " ".join(f"{v:5.2f}" for v in r[j]))
    flat = r.ravel()
    worst = np.argsort(flat)[::-1][:3]
    print(f"# median {np.median(flat):.2f} m, max {flat.max():.2f} m; worst at " +
          ", ".join(f"({xs[i % len(xs)]:.1f}, {ys[i // len(xs)]:.1f})" for i in worst))  # fmt: skip
    return 0


def _fmt_fix(f: Any) -> str:
    zone = "null" if f.zone is None else json.dumps(f.zone)
    return (
        f'{{"ts": {f.ts!r}, "device": {json.dumps(f.device)}, "x": {f.x:.3f}, "y": {f.y:.3f}, '
        f'"zone": {zone}, "sigma_m": {f.sigma_m:.3f}}}'
    )


def run_locate(
    layout: Layout, settings: LocalizationSettings, f: IO[str], out: IO[str], reader: ObsReader
) -> tuple[int, int]:
    """Stream observations through the daemon's localizer; returns (observations, fixes)."""
    from gateway.localization import make_localizer

    loc = make_localizer(layout, settings)
    sids = [s.id for s in layout.sensors]
    interval = settings.fix_interval_s
    from gateway.localization.localizer import MlLocalizer
    from gateway.models import Observation

    tick = -math.inf
    ts_b: list[float] = []
    s_b: list[int] = []
    d_b: list[str] = []
    r_b: list[float] = []
    n_obs = n_fix = 0
    write = out.write

    def flush() -> None:
        if not ts_b:
            return
        if isinstance(loc, MlLocalizer):
            loc.add_arrays(np.asarray(ts_b), np.asarray(s_b), d_b, np.asarray(r_b))
        else:
            loc.add([Observation(t, sids[s], d, r) for t, s, d, r in zip(ts_b, s_b, d_b, r_b, strict=True)])
        for b in (ts_b, s_b, d_b, r_b):
            b.clear()

    for ts, s, dev, rssi in reader.read(f):
        if ts > tick:
            if tick > -math.inf:
                flush()
                fixes = loc.fixes(tick)
                n_fix += len(fixes)
                for fx in fixes:
                    write(_fmt_fix(fx) + "\n")
            # next tick: the first grid time >= ts (observations at exactly a tick time belong to it)
            tick = math.ceil(ts / interval) * interval
        ts_b.append(ts)
        s_b.append(s)
        d_b.append(dev)
        r_b.append(rssi)
        n_obs += 1
    return n_obs, n_fix


def _locate(args: argparse.Namespace) -> int:
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    layout, settings = loaded
    if args.crlb:
        if args.obs:
            _err(f"locate: {args.obs}: --crlb computes a map from the layout and reads no observations")
            return 2
        return _crlb(args, layout, settings)
    only_crlb = [o for o, v in (("--adverts", args.adverts), ("--step", args.step), ("--json", args.json or None)) if v]
    if only_crlb:
        _err(f"locate: {', '.join(only_crlb)}: only with --crlb")
        return 2
    if not args.obs:
        _err("locate: an observations file (or '-') is required unless --crlb is given")
        return 2
    reader = ObsReader(args.obs, layout.sensor_index(), args.strict)
    try:
        f = _open(args.obs)
    except OSError as e:
        _err(f"{args.obs}: cannot read: {e.strerror}")
        return 2
    try:
        with f:
            n_obs, n_fix = run_locate(layout, settings, f, sys.stdout, reader)
    except InputError as e:
        sys.stdout.flush()
        _err(f"locate: {e}")
        return 2
    sys.stdout.flush()
    reader.report("locate", f"{n_obs} observations, {n_fix} fixes")
    if n_obs == 0:
        _err(f"locate: {args.obs}: no usable observations")
        return 2
    return 0


# -- calibrate ----------------------------------------------------------------------------------


def _read_positions(path: str) -> tuple[dict[str, tuple[float, float, float]], dict[str, np.ndarray]]:
    """Fixed reference transmitters and walks (``(n, 4)`` arrays of ts, x, y, z) per device."""
    fixed: dict[str, tuple[float, float, float]] = {}
    walks: dict[str, list[tuple[float, float, float, float]]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                dev = str(d["device"])
                x, y, z = float(d["x"]), float(d["y"]), float(d.get("z", 0.0))
                ts = d.get("ts")
                if not all(map(math.isfinite, (x, y, z))):
                    raise ValueError("non-finite coordinate")
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{lineno}: needs {{device, x, y[, z][, ts]}}: {e}") from None
            if ts is None:
                fixed[dev] = (x, y, z)
            else:
                walks.setdefault(dev, []).append((float(ts), x, y, z))
    return fixed, {k: np.array(sorted(v)) for k, v in walks.items()}


def advert_misses(
    rows: list[tuple[int, str, float, float, float, float, float]], reference: set[str], gap_s: float
) -> list[tuple[int, str, float, float, float]]:
    """Adverts of the reference transmitters each sensor did not report: one transmitter's reports
    closer than ``gap_s`` are one advert; a sensor that reported something during the recording but
    not this advert missed it (at the advert's place)."""
    heard_any = {r[0] for r in rows}
    by_tx: dict[str, list[tuple[float, int, float, float, float]]] = {}
    for s, dev, x, y, z, _rssi, ts in rows:
        if dev in reference:
            by_tx.setdefault(dev, []).append((ts, s, x, y, z))
    out: list[tuple[int, str, float, float, float]] = []
    for dev, reps in by_tx.items():
        reps.sort()
        start = 0
        for i in range(1, len(reps) + 1):
            if i == len(reps) or reps[i][0] - reps[i - 1][0] > gap_s:
                advert = reps[start:i]
                got = {a[1] for a in advert}
                _, _, x, y, z = advert[0]
                out.extend((s, dev, x, y, z) for s in sorted(heard_any - got))
                start = i
    return out


def _calibrate(args: argparse.Namespace) -> int:
    from gateway.localization.calibrate import CalibrationData, fit_sensors, sensors_toml

    if args.out:  # checked before the fit runs, not after
        out = Path(args.out)
        if out.is_dir():
            _err(f"calibrate: --out {out}: is a directory; give a file name")
            return 2
        if not out.parent.is_dir():
            _err(f"calibrate: --out {out}: directory {out.parent} does not exist")
            return 2
        if not os.access(out if out.exists() else out.parent, os.W_OK):
            _err(f"calibrate: --out {out}: not writable")
            return 2
    loaded = _load(args)
    if isinstance(loaded, int):
        return loaded
    layout, settings = loaded
    try:
        fixed, walks = _read_positions(args.positions) if args.positions else ({}, {})
    except InputError as e:
        _err(f"calibrate: {e}")
        return 2
    except OSError as e:
        _err(f"calibrate: --positions {args.positions}: cannot read ({e.strerror})")
        return 2
    except UnicodeDecodeError:
        _err(f"calibrate: --positions {args.positions}: not UTF-8 text")
        return 2
    sensors = {s.id: s for s in layout.sensors}
    if not args.no_sensor_links:
        for sensor in layout.sensors:
            fixed.setdefault(sensor.id, (sensor.x, sensor.y, sensor.z))
    if not (0 <= args.advert_gap <= 5):
        _err(f"calibrate: --advert-gap {args.advert_gap}: must be in [0, 5] seconds")
        return 2
    reader = ObsReader(args.obs, layout.sensor_index(), strict=False)
    rows: list[tuple[int, str, float, float, float, float, float]] = []  # sensor, tx, x, y, z, rssi, ts
    unplaced = 0
    try:
        with _open(args.obs) as f:
            for ts, s, dev, rssi in reader.read(f):
                if dev in fixed:
                    x, y, z = fixed[dev]
                elif dev in walks:
                    w = walks[dev]
                    if not (w[0, 0] <= ts <= w[-1, 0]):
                        unplaced += 1
                        continue
                    x, y, z = (float(np.interp(ts, w[:, 0], w[:, c])) for c in (1, 2, 3))
                else:
                    unplaced += 1
                    continue
                rows.append((s, dev, x, y, z, rssi, ts))
    except OSError as e:
        _err(f"calibrate: {args.obs}: cannot read: {e.strerror}")
        return 2
    reader.report("calibrate", f"{len(rows)} usable observations ({unplaced} with no known position)")
    if not rows:
        _err("calibrate: no observation has a known transmitter position")
        return 2
    reference = {d for d in fixed if d not in sensors} | set(walks)
    misses = advert_misses(rows, reference, args.advert_gap) if args.advert_gap > 0 else []
    data = CalibrationData.from_rows(rows, layout, reference, misses)
    result = fit_sensors(data, layout, floor_dbm=settings.detection_floor_dbm)
    for line in result.notes:
        _err(f"calibrate: {line}")
    text = sensors_toml(layout, result)
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as e:
            _err(f"calibrate: --out {args.out}: cannot write ({e.strerror})")
            return 1
        _err(f"calibrate: wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0
