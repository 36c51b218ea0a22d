"""``gateway layout check [FILE]``: can this sensor layout hold each zone's dwell?

Why: a zone's dwell is only as good as the fixes that land in it. Where position uncertainty is
large against the zone (a 3 m deep window display whose glass is 3.5 m in front of the nearest
sensor row), a visitor standing there is placed in the next zone or on the pavement a good part of
the time: the shop-front store of ``bench_store`` read window dwell -15 % and aisles +15-20 % for
that reason (docs/install.md, "Sensor placement at a shop front"). No presence rule mends that; a
sensor near the glass does. This check says so before the store opens, from the layout alone.

Model (pure, no I/O): for a visitor standing still, the Cramér-Rao bound of
:mod:`gateway.localization.crlb` (the layout's sensors and path-loss, the configured
``localization.sigma_db`` and ``detection_floor_dbm``, transmit power unknown) over
``localization.standing_window_s`` adverts (one advert a second: phones advertise at 1-10 Hz, so
this is the cautious end) gives each point of the floor a 2 x 2 position covariance. Fixes are drawn
from it (a fixed set of normal samples: the answer is deterministic), kept on the plan as the
localizer keeps them (a fix off every zone is clamped into the store's rectangle), and counted per
zone. Per in-store zone:

* ``crlb_m``: median bound over the zone (m);
* ``kept``: expected share of a standing visitor's fixes that land in the zone;
* ``outside``: the share that lands on an ``outside`` zone (the pavement, across the glass).

A zone warns when ``kept`` < ``min_kept`` (default 0.80: one fix in five elsewhere; the demo store,
whose dwell holds within 5 %, keeps >= 84 % in every zone; the shop-front windows keep 78 %). The
presence engine's hysteresis (``zone_hysteresis_m``) and debounces are not modelled: they soften
the loss to the pavement, not the exchange with the next zone. For each zone that warns the check
proposes sensors, greedily, best first: for a zone that borders an ``outside`` zone, on a line
``GLASS_SETBACK_M`` inside the glass (within ``GLASS_MAX_M`` of it), else anywhere in the zone, at
the height of the existing sensors, each with the zone's ``kept`` once it is added, until every
zone keeps ``min_kept`` + ``TARGET_MARGIN`` (or no sensor adds ``MIN_GAIN`` to a zone).

A zone that still warns with every suggested sensor added, and whose smaller side is under
``RESOLVE_FACTOR`` times the uncertainty it then has, is too small for any sensor layout to resolve
(a 1.5 m deep door at the glass keeps ~60 % of the fixes however many sensors stand by it): the
check says so and gives the size it needs instead of more sensors.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from gateway.layout import Layout, Sensor, Zone, points_in_polygon, polygon_area, zone_index

F64 = NDArray[np.float64]

MIN_KEPT = 0.80
GLASS_SETBACK_M = 1.0  # suggested sensors at the glass: this far inside it
GLASS_MAX_M = 1.5  # the guidance: a sensor within this distance of the glass
GRID_M = 0.5  # spacing of the points a zone is evaluated at
SAMPLES = 64  # fixes drawn per point
MAX_SUGGESTIONS = 8
TARGET_MARGIN = 0.05  # suggestions aim this far above min_kept (a zone just at the line is not done)
MIN_GAIN = 0.01  # a sensor that keeps less than this much more of the zone's fixes is not suggested
# a zone keeps ~80 % of a standing visitor's fixes when its smaller side is about this many times the
# position uncertainty (rmse r, per-axis r / sqrt 2; a fix leaves a side of a band s wide with
# probability ~0.4 r / s: a long band needs s ~ 2.8 r, a square ~ 5.3 r)
RESOLVE_FACTOR = 4.0


@dataclass(frozen=True)
class RadioModel:
    """What the bound is computed for (from ``[localization]``, see ``from_settings``)."""

    sigma_db: float = 6.0
    floor_dbm: float = -95.0
    adverts: float = 60.0

    @classmethod
    def from_settings(cls, loc: Any) -> RadioModel:
        return cls(float(loc.sigma_db), float(loc.detection_floor_dbm), float(loc.standing_window_s))


@dataclass(frozen=True)
class ZoneCoverage:
    zone: str
    name: str | None
    kind: str
    crlb_m: float
    kept: float
    outside: float
    borders_outside: bool
    status: str  # "pass" or "warn"
    size_m: float = 0.0  # the smaller side of the zone's bounding box

    @property
    def unplaceable(self) -> bool:
        """Uncertainty above half the zone's size: kept is then the plan's walls, not the sensors."""
        return not _placeable(self.crlb_m, self.size_m)


@dataclass(frozen=True)
class Suggestion:
    x: float
    y: float
    z: float
    zone: str
    kept_before: float
    kept_after: float
    glass_m: float | None  # distance to the glass (zones bordering an outside zone), else None
    crlb_after: float = 0.0  # the zone's median bound once it is added (m)


@dataclass(frozen=True)
class TooSmall:
    """A zone the sensors cannot resolve even with every suggestion: it needs to be larger."""

    zone: str
    size_m: float  # its smaller side now
    crlb_m: float  # its uncertainty with every suggested sensor added
    kept: float  # its share of fixes kept then
    need_m: float  # the smaller side it needs (RESOLVE_FACTOR x crlb_m, rounded up to 0.5 m)


@dataclass
class LayoutReport:
    store: str
    sensors: int
    model: RadioModel
    min_kept: float
    zones: list[ZoneCoverage]
    suggestions: list[Suggestion] = field(default_factory=list)
    too_small: list[TooSmall] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(z.status == "pass" for z in self.zones)

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "sensors": self.sensors,
            "model": asdict(self.model),
            "min_kept": self.min_kept,
            "ok": self.ok,
            "zones": [asdict(z) for z in self.zones],
            "suggestions": [asdict(s) for s in self.suggestions],
            "too_small": [asdict(t) for t in self.too_small],
        }


# -- geometry -------------------------------------------------------------------------------------


def _on_plan(layout: Layout, xy: F64) -> NDArray[np.int64]:
    """Zone index of fixes kept on the plan: a fix in no zone is clamped into the store's rectangle."""
    lab = zone_index(layout, xy)
    off = lab < 0
    if off.any():
        c = xy[off].copy()
        c[:, 0] = np.clip(c[:, 0], 1e-3, layout.store.width_m - 1e-3)
        c[:, 1] = np.clip(c[:, 1], 1e-3, layout.store.depth_m - 1e-3)
        lab[off] = zone_index(layout, c)
    return lab


def _zone_points(layout: Layout, zi: int, step: float = GRID_M) -> F64:
    """Grid points of zone ``zi`` that belong to it (not to an earlier zone listed over it)."""
    poly = np.asarray(layout.zones[zi].polygon, dtype=np.float64)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    xs = np.arange(lo[0] + step / 2, hi[0], step)
    ys = np.arange(lo[1] + step / 2, hi[1], step)
    if not len(xs) or not len(ys):
        c = poly.mean(axis=0, keepdims=True)
        return np.asarray(c, dtype=np.float64)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    pts = pts[zone_index(layout, pts) == zi]
    if not len(pts):
        return np.asarray(poly.mean(axis=0, keepdims=True), dtype=np.float64)
    return np.asarray(pts, dtype=np.float64)


def _glass_edges(layout: Layout, zone: Zone) -> list[tuple[F64, F64, F64]]:
    """Edges of ``zone`` that border an ``outside`` zone: (start, end, inward unit normal)."""
    outside = [z for z in layout.zones if z.kind == "outside"]
    if not outside:
        return []
    poly = np.asarray(zone.polygon, dtype=np.float64)
    inside_sign = 1.0 if polygon_area(zone.polygon) > 0 else -1.0
    out: list[tuple[F64, F64, F64]] = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        d = b - a
        ln = float(np.hypot(d[0], d[1]))
        if ln < 1e-9:
            continue
        n_in = inside_sign * np.array([-d[1], d[0]]) / ln  # left normal of a counter-clockwise polygon
        probe = ((a + b) / 2 - 0.3 * n_in).reshape(1, 2)
        if any(points_in_polygon(probe, o.polygon)[0] for o in outside):
            out.append((a, b, n_in))
    return out


def _size(zone: Zone) -> float:
    """The zone's smaller side (of its bounding box), m."""
    poly = np.asarray(zone.polygon, dtype=np.float64)
    return float((poly.max(axis=0) - poly.min(axis=0)).min())


def _placeable(crlb: float, size: float) -> bool:
    """Can the sensors place a visitor in a zone this size: uncertainty within half its smaller side."""
    return crlb <= 0.5 * size


def _like(sensors: list[Sensor], sid: str, x: float, y: float) -> Sensor:
    """A sensor to add at (x, y), mounted and calibrated like the layout's typical one (medians)."""
    return Sensor(
        id=sid,
        x=x,
        y=y,
        z=float(np.median([s.z for s in sensors])),
        rssi_at_1m=float(np.median([s.rssi_at_1m for s in sensors])),
        path_loss_exponent=float(np.median([s.path_loss_exponent for s in sensors])),
    )


# -- the bound and the fixes it implies --------------------------------------------------------


class _Evaluator:
    def __init__(self, layout: Layout, model: RadioModel) -> None:
        self.layout = layout
        self.model = model
        self._z = np.random.default_rng(0).standard_normal((SAMPLES, 2))
        self._pts = [_zone_points(layout, i) for i in range(len(layout.zones))]
        self._outside = np.array([z.kind == "outside" for z in layout.zones] + [False])

    def zone(self, sensors: list[Sensor], zi: int) -> tuple[float, float, float]:
        """(median CRLB, kept, outside share) of zone ``zi`` with these sensors."""
        from gateway.localization.crlb import fisher
        from gateway.localization.pathloss import PathLossModel

        lay = self.layout.model_copy(update={"sensors": sensors})
        pts = self._pts[zi]
        m = self.model
        f = fisher(PathLossModel.from_layout(lay), pts, m.sigma_db, m.floor_dbm) * m.adverts
        cov = np.linalg.inv(f + 1e-12 * np.eye(3))[:, :2, :2]
        rmse = np.sqrt(np.maximum(cov[:, 0, 0] + cov[:, 1, 1], 0.0))
        chol = np.linalg.cholesky(cov + 1e-9 * np.eye(2))
        fixes = pts[:, None, :] + np.einsum("nij,kj->nki", chol, self._z)
        lab = _on_plan(self.layout, fixes.reshape(-1, 2))
        kept = float(np.mean(lab == zi))
        outside = float(np.mean(self._outside[lab]))
        return float(np.median(rmse)), kept, outside


def check_layout_coverage(
    layout: Layout, model: RadioModel, min_kept: float = MIN_KEPT, suggest: bool = True
) -> LayoutReport:
    """Per in-store zone: the bound, the share of fixes kept, and sensors to add where it is short."""
    ev = _Evaluator(layout, model)
    sensors = list(layout.sensors)
    zones: list[ZoneCoverage] = []
    for i, z in enumerate(layout.zones):
        if z.kind == "outside":
            continue
        crlb, kept, outside = ev.zone(sensors, i)
        size = _size(z)
        ok = kept >= min_kept and _placeable(crlb, size)
        zones.append(
            ZoneCoverage(
                z.id,
                z.name,
                z.kind,
                round(crlb, 3),
                round(kept, 4),
                round(outside, 4),
                bool(_glass_edges(layout, z)),
                "pass" if ok else "warn",
                round(size, 3),
            )
        )
    report = LayoutReport(layout.store.id, len(sensors), model, min_kept, zones)
    if suggest and not report.ok:
        report.suggestions = _suggest(layout, ev, sensors, min_kept)
        report.too_small = _too_small(layout, ev, sensors, report, min_kept)
    return report


def _too_small(
    layout: Layout, ev: _Evaluator, sensors: list[Sensor], report: LayoutReport, min_kept: float
) -> list[TooSmall]:
    """Zones that warn with every suggested sensor added and are under RESOLVE_FACTOR x their bound."""
    extra = [_like(sensors, f"suggested-{i}", s.x, s.y) for i, s in enumerate(report.suggestions)]
    ids = {z.id: i for i, z in enumerate(layout.zones)}
    out: list[TooSmall] = []
    for z in report.zones:
        if z.status != "warn":
            continue
        crlb, kept, _ = ev.zone([*sensors, *extra], ids[z.zone])
        if (kept >= min_kept and _placeable(crlb, z.size_m)) or z.size_m >= RESOLVE_FACTOR * crlb:
            continue
        need = math.ceil(RESOLVE_FACTOR * crlb * 2.0 - 1e-9) / 2.0
        out.append(TooSmall(z.zone, z.size_m, round(crlb, 3), round(kept, 4), need))
    return out


def _candidates(layout: Layout, zi: int) -> list[tuple[float, float, float | None]]:
    """Where a sensor for zone ``zi`` may go: along its glass (set back GLASS_SETBACK_M), else in it."""
    z = layout.zones[zi]
    glass = _glass_edges(layout, z)
    out: list[tuple[float, float, float | None]] = []
    if glass:
        for a, b, n_in in glass:
            ln = float(np.hypot(*(b - a)))
            for t in np.arange(0.5, ln, 1.0) / ln:
                p = a + t * (b - a) + GLASS_SETBACK_M * n_in
                out.append((float(p[0]), float(p[1]), GLASS_SETBACK_M))
        return out
    poly = np.asarray(z.polygon, dtype=np.float64)
    lo, hi = poly.min(axis=0), poly.max(axis=0)
    for x in np.arange(lo[0] + 0.5, hi[0], 1.0):
        for y in np.arange(lo[1] + 0.5, hi[1], 1.0):
            if zone_index(layout, np.array([[x, y]]))[0] == zi:
                out.append((float(x), float(y), None))
    return out


def _suggest(layout: Layout, ev: _Evaluator, sensors: list[Sensor], min_kept: float) -> list[Suggestion]:
    """Add sensors one at a time for the zone worst kept, each at its best candidate place."""
    out: list[Suggestion] = []
    cur = list(sensors)
    ids = {s.id for s in cur}
    zis = [i for i, z in enumerate(layout.zones) if z.kind != "outside"]
    kept, bad = _kept_and_bad(layout, ev, cur, zis)
    tried: set[int] = set()
    while len(out) < MAX_SUGGESTIONS:
        short = [i for i in zis if kept[i] < min_kept + TARGET_MARGIN and i not in tried]
        short += [i for i in zis if bad[i] and i not in tried and i not in short]
        if not short:
            break
        zi = min(short, key=lambda i: (not bad[i], kept[i]))
        best: tuple[float, Sensor, float | None] | None = None
        for x, y, glass in _candidates(layout, zi):
            k = 1
            while f"suggested-{k}" in ids:
                k += 1
            s = _like(sensors, f"suggested-{k}", x, y)
            crlb, kz, _ = ev.zone([*cur, s], zi)
            score = -crlb if bad[zi] else kz  # a zone the sensors cannot place: the bound first
            if best is None or score > best[0] + 1e-9:
                best = (score, s, glass)
        if best is None or (not bad[zi] and best[0] < kept[zi] + MIN_GAIN):
            tried.add(zi)  # no single sensor helps this zone: say so, do not loop
            continue
        _, s, glass = best
        crlb_after, kz, _ = ev.zone([*cur, s], zi)
        out.append(
            Suggestion(
                round(s.x, 2),
                round(s.y, 2),
                round(s.z, 2),
                layout.zones[zi].id,
                kept[zi],
                kz,
                glass,
                round(crlb_after, 3),
            )
        )
        cur.append(s)
        ids.add(s.id)
        kept, bad = _kept_and_bad(layout, ev, cur, zis)
    return out


def _kept_and_bad(
    layout: Layout, ev: _Evaluator, sensors: list[Sensor], zis: list[int]
) -> tuple[dict[int, float], dict[int, bool]]:
    kept: dict[int, float] = {}
    bad: dict[int, bool] = {}
    for i in zis:
        crlb, k, _ = ev.zone(sensors, i)
        kept[i] = k
        bad[i] = not _placeable(crlb, _size(layout.zones[i]))
    return kept, bad


# -- rendering --------------------------------------------------------------------------------------


def zone_line(z: ZoneCoverage, min_kept: float) -> str:
    where = ", borders the outside" if z.borders_outside else ""
    txt = (
        f"{z.zone} ({z.kind}{where}): position uncertainty {z.crlb_m:.2f} m, {z.kept:.0%} of a standing"
        f" visitor's fixes in the zone"
    )
    if z.borders_outside:
        txt += f", {z.outside:.0%} across the glass"
    if z.unplaceable:
        txt += (
            f" (uncertainty {z.crlb_m:.2f} m above half the zone's smaller side ({z.size_m:g} m / 2):"
            " the sensors cannot place a visitor in it)"
        )
    elif z.status == "warn":
        txt += f" (below {min_kept:.0%}: its dwell will read low, its neighbours' high)"
    return txt


def suggestion_line(s: Suggestion) -> str:
    where = f"within {GLASS_MAX_M:g} m of the glass ({s.glass_m:g} m inside it) " if s.glass_m is not None else ""
    return (
        f"add a sensor {where}at x={s.x:g} y={s.y:g} (z={s.z:g}) for {s.zone}: "
        f"{s.kept_before:.0%} -> {s.kept_after:.0%} of fixes kept, uncertainty {s.crlb_after:.2f} m"
    )


def too_small_line(t: TooSmall) -> str:
    return (
        f"{t.zone} is {t.size_m:g} m across at its smallest, smaller than the sensors can resolve: with every"
        f" suggested sensor its uncertainty is still {t.crlb_m:.2f} m and it keeps {t.kept:.0%} of the fixes;"
        f" make it at least ~{t.need_m:g} m across (about {RESOLVE_FACTOR:g} x the uncertainty) or merge it"
        " with a neighbour"
    )


def _count(n: int, verb: str) -> str:
    """``1 zone passes``, ``2 zones pass``, ``0 zones warn``."""
    if n != 1:
        return f"{n} zones {verb}"
    return f"1 zone {verb}es" if verb.endswith("s") else f"1 zone {verb}s"


def render(r: LayoutReport) -> str:
    m = r.model
    lines = [
        f"layout {r.store}: {r.sensors} sensors; standing visitor over {m.adverts:g} adverts, sigma "
        f"{m.sigma_db:g} dB, floor {m.floor_dbm:g} dBm, transmit power unknown (Cramér-Rao bound)"
    ]
    for z in r.zones:
        lines.append(f"  {z.status.upper():4s}  {zone_line(z, r.min_kept)}")
    if r.suggestions:
        lines.append("suggested sensors (greedy, best first; re-run the check after moving them onto the layout):")
        lines += [f"  - {suggestion_line(s)}" for s in r.suggestions]
    elif not r.ok and not r.too_small:
        lines.append("no single added sensor helps enough: split the zone or move the existing sensors")
    if r.too_small:
        lines.append("zones too small to resolve (resize them on the layout, docs/install.md):")
        lines += [f"  - {too_small_line(t)}" for t in r.too_small]
    warned = [z.zone for z in r.zones if z.status == "warn"]
    lines.append(
        f"{_count(len(r.zones) - len(warned), 'pass')}, {len(warned)} warn{'s' if len(warned) == 1 else ''}"
        + (f": {', '.join(warned)}" if warned else "")
    )
    return "\n".join(lines)


def doctor_summary(r: LayoutReport) -> tuple[str, str]:
    """(detail, remedy) for ``gateway doctor``'s coverage row."""
    warned = [z for z in r.zones if z.status == "warn"]
    if not warned:
        worst = min(r.zones, key=lambda z: z.kept) if r.zones else None
        return (
            f"every zone keeps >= {r.min_kept:.0%} of fixes"
            + (f" (lowest {worst.zone} {worst.kept:.0%})" if worst else ""),
            "",
        )
    detail = "; ".join(f"{z.zone} {z.kept:.0%} kept, {z.crlb_m:.2f} m" for z in warned)
    remedy = (
        "; ".join(
            [too_small_line(t) for t in r.too_small[:1]]
            + [suggestion_line(s) for s in r.suggestions[: 3 - min(1, len(r.too_small))]]
        )
        or "move or add sensors near these zones"
    ) + " (`gateway layout check` for every figure)"
    return detail, remedy


# -- command ------------------------------------------------------------------------------------------


def _cmd(args: argparse.Namespace) -> int:
    from gateway.config import ConfigError, Settings, load_settings
    from gateway.layout import LayoutError, embedded_layout, load_layout

    def usage(msg: str) -> int:
        print(f"gateway layout check: error: {msg}", file=sys.stderr)
        return 2

    try:
        settings = load_settings(Path(args.config)) if args.config else Settings()
    except ConfigError as e:
        return usage(str(e))
    if not (math.isfinite(args.min_kept) and 0.0 < args.min_kept < 1.0):
        return usage(f"--min-kept {args.min_kept:g}: must be a share between 0 and 1")
    try:
        if args.file:
            layout = load_layout(args.file)
        elif settings.paths.layout is not None:
            layout = load_layout(settings.paths.layout)
        else:
            layout = embedded_layout()
    except LayoutError as e:
        return usage(str(e))
    model = RadioModel.from_settings(settings.localization)
    report = check_layout_coverage(layout, model, args.min_kept)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report))
    return 0 if report.ok else 1


def add_commands(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("layout", help="check a store layout")
    lsub = p.add_subparsers(dest="layout_cmd", required=True)
    c = lsub.add_parser(
        "check",
        help="per zone: can the sensors place a standing visitor in it? (Cramér-Rao bound; sensors to add)",
        description="Exit 0: every zone passes; 1: some zone warns (sensors suggested); 2: bad input.",
    )
    c.add_argument("file", nargs="?", help="layout TOML (default: the config's paths.layout, else the example store)")
    c.add_argument("--config", "-c", default=os.environ.get("GATEWAY_CONFIG"), help="config file (radio model)")
    c.add_argument("--min-kept", type=float, default=MIN_KEPT, help=f"warn below this share (default {MIN_KEPT})")
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=_cmd)
