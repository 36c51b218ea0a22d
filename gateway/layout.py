"""Store layout: floor size, sensors (with calibrated path-loss), zones as polygons.

The same TOML file drives the simulator, the localizer, presence and the status page map.

```toml
[store]
id = "demo-store"
width_m = 30.0
depth_m = 20.0

[[sensors]]
id = "gw"
x = 15.0
y = 10.0
z = 2.5                # optional, metres above the phones' plane
rssi_at_1m = -59.0     # calibrated, dBm at 1 m for a reference transmitter
path_loss_exponent = 2.2

[[zones]]
id = "entrance"
kind = "entrance"      # entrance | checkout | aisle | outside | other | front
polygon = [[0, 0], [6, 0], [6, 4], [0, 4]]
```
"""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ZoneKind = Literal["entrance", "checkout", "aisle", "outside", "other", "front"]
"""``front``: inside the store along a shop front that borders the pavement (window displays): a
visit there counts only after ``presence.visitor_min_s``, like the entrance, because a passer-by's
position estimate strays into it."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FloorPlan(_Strict):
    image: str
    px_per_m: float = Field(gt=0)


class Store(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    name: str | None = None
    width_m: float = Field(gt=0, le=1000)
    depth_m: float = Field(gt=0, le=1000)
    floor_plan: FloorPlan | None = None


class Sensor(_Strict):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    x: float
    y: float
    z: float = Field(default=0.0, ge=0, le=20)
    rssi_at_1m: float = Field(default=-59.0, ge=-120, le=20)
    path_loss_exponent: float = Field(default=2.0, gt=0.5, le=6)
    kind: Literal["gateway", "node"] = "node"


class Zone(_Strict):
    id: str = Field(min_length=1, max_length=64)
    name: str | None = None
    kind: ZoneKind = "other"
    polygon: list[tuple[float, float]] = Field(min_length=3)

    @field_validator("polygon")
    @classmethod
    def _non_degenerate(cls, poly: list[tuple[float, float]]) -> list[tuple[float, float]]:
        if abs(polygon_area(poly)) < 1e-6:
            raise ValueError("polygon has zero area")
        crossing = _self_crossing(poly)
        if crossing is not None:
            raise ValueError(
                f"polygon edges {crossing[0]} and {crossing[1]} cross (a bow tie?): list the corners in order"
            )
        return poly


class Layout(_Strict):
    store: Store
    sensors: list[Sensor] = Field(min_length=1)
    zones: list[Zone] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> Layout:
        ids = [s.id for s in self.sensors]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise ValueError(f"duplicate sensor id(s): {sorted(dup)}")
        zids = [z.id for z in self.zones]
        zdup = {i for i in zids if zids.count(i) > 1}
        if zdup:
            raise ValueError(f"duplicate zone id(s): {sorted(zdup)}")
        w, d = self.store.width_m, self.store.depth_m
        for s in self.sensors:
            if not (-0.5 * w <= s.x <= 1.5 * w and -0.5 * d <= s.y <= 1.5 * d):
                raise ValueError(f"sensor {s.id!r} at ({s.x}, {s.y}) is far outside the store")
        return self

    # -- numpy views used by the localizer / simulator -------------------------------------

    def sensor_index(self) -> dict[str, int]:
        return {s.id: i for i, s in enumerate(self.sensors)}

    def sensor_xy(self) -> NDArray[np.float64]:
        return np.array([[s.x, s.y] for s in self.sensors], dtype=np.float64)

    def sensor_z(self) -> NDArray[np.float64]:
        return np.array([s.z for s in self.sensors], dtype=np.float64)

    def sensor_p0(self) -> NDArray[np.float64]:
        return np.array([s.rssi_at_1m for s in self.sensors], dtype=np.float64)

    def sensor_n(self) -> NDArray[np.float64]:
        return np.array([s.path_loss_exponent for s in self.sensors], dtype=np.float64)

    def zone(self, zone_id: str) -> Zone | None:
        return next((z for z in self.zones if z.id == zone_id), None)


class LayoutError(ValueError):
    """A layout file that cannot be used; the message names the file, field and reason."""


def _self_crossing(poly: list[tuple[float, float]]) -> tuple[int, int] | None:
    """The first pair of non-adjacent edges that cross (edge i joins corner i and i+1), or None."""

    def orient(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> float:
        return (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])

    n = len(poly)
    edges = [(poly[i], poly[(i + 1) % n]) for i in range(n)]
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:  # the closing edge shares corner 0 with the first
                continue
            (a, b), (c, d) = edges[i], edges[j]
            d1, d2, d3, d4 = orient(a, b, c), orient(a, b, d), orient(c, d, a), orient(c, d, b)
            if d1 * d2 < 0 and d3 * d4 < 0:
                return i, j
    return None


def polygon_area(poly: list[tuple[float, float]]) -> float:
    a = 0.0
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        a += x1 * y2 - x2 * y1
    return a / 2.0


def points_in_polygon(
    xy: NDArray[np.float64], poly: list[tuple[float, float]] | NDArray[np.float64]
) -> NDArray[np.bool_]:
    """Vectorised even-odd point-in-polygon test for an (N, 2) array of points."""
    p = np.asarray(poly, dtype=np.float64)
    x = xy[:, 0][:, None]
    y = xy[:, 1][:, None]
    x1, y1 = p[:, 0][None, :], p[:, 1][None, :]
    x2, y2 = np.roll(p[:, 0], -1)[None, :], np.roll(p[:, 1], -1)[None, :]
    cond = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = (x2 - x1) * (y - y1) / (y2 - y1) + x1
    crossings = cond & (x < xint)
    return np.asarray(np.count_nonzero(crossings, axis=1) % 2 == 1)


def zone_index(layout: Layout, xy: NDArray[np.float64]) -> NDArray[np.int64]:
    """Index in ``layout.zones`` of the first zone holding each row of an (N, 2) array, -1 for none
    (zones listed earlier win where they overlap)."""
    lab = np.full(len(xy), -1, dtype=np.int64)
    for i, z in enumerate(layout.zones):
        hit = points_in_polygon(xy, z.polygon) & (lab < 0)
        lab[hit] = i
    return lab


def format_validation_error(err: ValidationError, source: str) -> list[str]:
    """One readable line per error: ``source: a.b[2].c: reason``."""
    lines = []
    for e in err.errors():
        path = ""
        for part in e["loc"]:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (not allowed)"
        lines.append(f"{source}: {path or '<root>'}: {msg}")
    return lines


def parse_layout(data: dict[str, object], source: str = "<layout>") -> Layout:
    try:
        return Layout.model_validate(data)
    except ValidationError as e:
        raise LayoutError("\n".join(format_validation_error(e, source))) from None


def load_layout(path: str | Path) -> Layout:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise LayoutError(f"{p}: cannot read layout: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise LayoutError(f"{p}: not valid TOML: {e}") from None
    return parse_layout(data, str(p))


def embedded_layout() -> Layout:
    """The example store shipped in the package (``gateway/data/demo-store.toml``): the demo's, and
    the daemon's when ``paths.layout`` is not set."""
    text = importlib.resources.files("gateway").joinpath("data/demo-store.toml").read_text(encoding="utf-8")
    return parse_layout(tomllib.loads(text), "<embedded demo-store.toml>")
