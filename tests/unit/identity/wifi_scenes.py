"""Small Wi-Fi scenes for the grouping tests: a few phones of given models, decoded as the daemon
decodes them, and both groupings run over them (ground truth kept per frame)."""

from __future__ import annotations

import collections
import math
from collections.abc import Callable

from gateway.identity.wifi_chains import ChainGrouper, ChainParams
from gateway.identity.wifi_groups import GroupParams, WifiGrouper
from gateway.parsers.wifi_probe import Probe, ProbeDecoder
from gateway.sim.wifi_population import Crowd, generate_store

Labelled = list[tuple[int, Probe]]  # (true device, probe)


def decode(crowd: Crowd) -> Labelled:
    dec = ProbeDecoder()
    return [(f.device, p) for f in crowd.frames if (p := dec.decode(f.ts, 127, f.frame)) is not None]


def scene(models: list[str], levels: list[float], duration_s: float = 900.0, seed: int = 1, **kw: object) -> Labelled:
    crowd = generate_store(
        len(models),
        duration_s,
        seed=seed,
        models=models,
        levels_db=levels,
        whole_run=True,
        **kw,  # type: ignore[arg-type]
    )
    return decode(crowd)


def capture(probes: Labelled, params: ChainParams | None = None) -> tuple[list[tuple[int, str]], ChainGrouper]:
    g = ChainGrouper(params)
    for _d, p in probes:
        g.add(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, p.ssid)
    groups = g.solve()
    return [(d, groups[p.mac]) for d, p in probes], g


def stream(probes: Labelled, params: GroupParams | None = None) -> tuple[list[tuple[int, str]], WifiGrouper]:
    g = WifiGrouper(params or GroupParams(max_delay_s=30.0))
    out: list[tuple[int, str]] = []
    for d, p in probes:
        gid = g.offer(p.mac, p.randomized, p.fingerprint, p.seq, p.ts, p.rssi, d, p.ssid)
        if gid is not None:
            out.append((d, gid))
        for item, gid2 in g.ready:
            assert isinstance(item, int)
            out.append((item, gid2))
        g.ready.clear()
    for item, gid2 in g.flush():
        assert isinstance(item, int)
        out.append((item, gid2))
    return out, g


GROUPINGS: dict[str, Callable[[Labelled], tuple[list[tuple[int, str]], object]]] = {
    "capture": capture,
    "stream": stream,
}


def v_measure(pairs: list[tuple[int, str]]) -> tuple[float, float, int]:
    """(V-measure, frame-weighted purity, groups) of ``(true device, group)`` per frame."""
    n = len(pairs)
    joint = collections.Counter(pairs)
    truth = collections.Counter(t for t, _ in pairs)
    group = collections.Counter(g for _, g in pairs)
    h_c = -sum(v / n * math.log(v / n) for v in truth.values())
    h_k = -sum(v / n * math.log(v / n) for v in group.values())
    h_c_k = -sum(v / n * math.log(v / group[g]) for (t, g), v in joint.items())
    h_k_c = -sum(v / n * math.log(v / truth[t]) for (t, g), v in joint.items())
    hom = 1.0 - h_c_k / h_c if h_c else 1.0
    com = 1.0 - h_k_c / h_k if h_k else 1.0
    v = 2 * hom * com / (hom + com) if hom + com else 0.0
    by: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for t, g in pairs:
        by[g][t] += 1
    purity = sum(c.most_common(1)[0][1] for c in by.values()) / n
    return v, purity, len(group)
