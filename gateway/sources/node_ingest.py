"""Pure core of the sensor-node source: MQTT messages in, observations and per-node health out.

No I/O and no clock: every call takes the arrival time as an argument (the async adapter in
``gateway/sources/nodes.py`` reads the clock once per drained chunk of messages).

* **Mapping is the trust boundary.** A node is known by the name in its topic (ESPresense room,
  native node id; the local broker's ACL ties each node's credential to its own topics). Only
  nodes listed in ``[nodes] mapping`` produce observations, and only for the one sensor they are
  mapped to; a native batch naming another node is refused. Unmapped names are counted (a bounded
  set of names, so a flood of made-up topics cannot grow memory) and dropped.
* **Per-node accounting.** Malformed payloads, rate-limit drops and clock-skew drops are counted per
  node (and per reason on the source's health); the last error says which field, never the data.
* **Clock.** Node messages carry no trustworthy time (ESPresense none at all; our native firmware a
  node clock that may drift). An observation's ``ts`` is its arrival time minus the node's latency
  estimate, which is bounded by ``latency_max_s``: ESPresense nodes use the configured
  ``latency_s``; native nodes measure theirs (arrival minus node time of the newest advert; fast
  down, slow up, so queueing bursts do not inflate it) and keep the node's own spacing between the
  adverts of a batch. docs/nodes.md measures what arrival-time jitter costs in accuracy.
* **Liveness.** ``check(now)`` classifies each node: ``down`` (its last will said ``offline``, or
  nothing at all for ``silent_after_s``), ``quiet`` (silent for ``quiet_gap_factor`` of its recent
  mean message gap, at least ``min_quiet_s``), ``up``. A node that is not ``up`` is reported as an
  inactive sensor so the localizer stops expecting it: its silence then no longer reads as "every
  device is far from this sensor".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from gateway.config import NodesSettings
from gateway.identity.addresses import IrkResolver
from gateway.identity.wifi_merge import NodeProbe
from gateway.models import Observation, WifiNodeReport
from gateway.parsers.node_payloads import (
    EspDevice,
    NodePayloadError,
    NodeTelemetry,
    TopicKind,
    TopicRouter,
    decode_espresense_devices,
    decode_espresense_telemetry,
    decode_native_adv,
    decode_status,
)
from gateway.sources.base import NodeStateName, NodeStatus

RATE_TAU_S = 10.0  # time constant of the per-node message-rate average
MAX_UNMAPPED_NAMES = 64
_TOPIC_CACHE_MAX = 200_000


class NodeMappingError(ValueError):
    """``[nodes] mapping`` refers to sensors the layout does not have, or maps two nodes to one."""


@dataclass(slots=True)
class NodeState:
    name: str
    sensor: str
    kind: str | None = None  # "espresense" | "native", from the first message
    first_seen: float | None = None
    last_seen: float | None = None
    last_observation: float | None = None
    messages: int = 0
    observations: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    online: bool | None = None  # from the status topic / last will
    telemetry: NodeTelemetry | None = None
    telemetry_at: float | None = None
    latency_s: float = 0.0
    state: NodeStateName = "unknown"
    active: bool = True  # what the localizer was last told
    # message-rate average (updated in check(), not per message)
    rate: float = 0.0
    rate_at_last: float = 0.0
    _count_since: int = 0
    _rate_ts: float | None = None
    # token bucket
    _tokens: float = 0.0
    _tokens_ts: float | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def as_dict(self, now: float) -> NodeStatus:
        tele = self.telemetry
        uptime: float | None = None
        if tele is not None and tele.uptime_s is not None and self.telemetry_at is not None:
            uptime = round(tele.uptime_s + max(0.0, now - self.telemetry_at), 1)
        return {
            "name": self.name,
            "sensor": self.sensor,
            "kind": self.kind,
            "state": self.state,
            "online": self.online,
            "last_seen": self.last_seen,
            "silent_s": None if self.last_seen is None else round(max(0.0, now - self.last_seen), 2),
            "rate_per_s": round(self.rate, 2),
            "messages": self.messages,
            "observations": self.observations,
            "dropped": dict(self.dropped),
            "last_error": self.last_error,
            "latency_s": round(self.latency_s, 4),
            "uptime_s": uptime,
            "version": tele.version if tele else None,
            "wifi_rssi": tele.wifi_rssi if tele else None,
        }


class NodeIngest:
    def __init__(self, settings: NodesSettings, sensors: Iterable[str], resolver: IrkResolver | None = None) -> None:
        self.settings = settings
        # native nodes forward raw random addresses: resolve RPAs with the known IRKs, as the BLE stage does
        self.resolver = resolver
        known = set(sensors)
        bad = sorted({v for v in settings.mapping.values() if v not in known})
        if bad:
            raise NodeMappingError(f"nodes.mapping: sensor id(s) not in the layout: {', '.join(bad)}")
        seen: dict[str, str] = {}
        for node, sensor in settings.mapping.items():
            if sensor in seen:
                raise NodeMappingError(f"nodes.mapping: nodes {seen[sensor]!r} and {node!r} both map to {sensor!r}")
            seen[sensor] = node
        self.router = TopicRouter(settings.topic_prefix, settings.native_prefix)
        lat0 = min(settings.latency_s, settings.latency_max_s)
        self.nodes: dict[str, NodeState] = {
            n: NodeState(n, s, latency_s=lat0, _tokens=settings.max_rate_per_node) for n, s in settings.mapping.items()
        }
        self.unmapped: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.messages = 0
        self.observations = 0
        self.started: float | None = None
        self._topics: dict[str, tuple[TopicKind, str]] = {}
        # Wi-Fi probe requests nodes heard (models.WifiNodeReport): handed to the Wi-Fi source,
        # which merges them with its capture (identity/wifi_merge.py); dropped when there is none
        self.on_wifi: Callable[[list[NodeProbe]], None] | None = None
        self.wifi_probes = 0

    # -- hot path ---------------------------------------------------------------------------

    def drop(self, reason: str, n: int = 1) -> None:
        """Count a message refused before it reached a node (source-level reasons)."""
        self.messages += n
        self._drop(reason, n)

    def _drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _unmapped(self, name: str) -> None:
        self._drop("unmapped_node")
        key = name if (name in self.unmapped or len(self.unmapped) < MAX_UNMAPPED_NAMES) else "<other>"
        self.unmapped[key] = self.unmapped.get(key, 0) + 1

    def _admit(self, st: NodeState, now: float) -> bool:
        """Token bucket: ``max_rate_per_node`` per second, one second of burst."""
        rate = self.settings.max_rate_per_node
        if st._tokens_ts is not None and now > st._tokens_ts:
            st._tokens = min(rate, st._tokens + (now - st._tokens_ts) * rate)
        st._tokens_ts = now
        if st._tokens < 1.0:
            return False
        st._tokens -= 1.0
        return True

    def _malformed(self, st: NodeState, e: NodePayloadError) -> None:
        st.drop("malformed")
        st.last_error = str(e)
        self._drop("malformed")

    def _route(self, topic: str, arrival: float) -> tuple[NodeState, TopicKind] | None:
        """Topic -> (mapped node, kind), counting and refusing what must not pass; None if dropped."""
        self.messages += 1
        kt = self._topics.get(topic)
        if kt is None:
            kt = self.router.classify(topic)
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = kt
        kind, name = kt
        if kind == "ignored":
            self._drop("ignored_topic")
            return None
        st = self.nodes.get(name)
        if st is None:
            self._unmapped(name)
            return None
        if not self._admit(st, arrival):
            st.drop("rate_limited")
            self._drop("rate_limited")
            return None
        st.messages += 1
        st._count_since += 1
        if st.first_seen is None:
            st.first_seen = arrival
        st.last_seen = arrival
        return st, kind

    def _other(self, st: NodeState, kind: TopicKind, payload: bytes, arrival: float, out: list[Observation]) -> None:
        try:
            if kind == "native_adv":
                self._native(st, payload, st.name, arrival, out)
            elif kind == "native_wifi":
                self._wifi(st, payload, arrival)
            elif kind == "esp_telemetry":
                st.telemetry = decode_espresense_telemetry(payload)
                st.telemetry_at = arrival
                st.kind = st.kind or "espresense"
                st.online = True
            else:  # esp_status / native_status
                online, tele = decode_status(payload)
                st.online = online
                if tele is not None:
                    st.telemetry, st.telemetry_at = tele, arrival
        except NodePayloadError as e:
            self._malformed(st, e)

    def ingest(self, topic: str, payload: bytes, arrival: float, out: list[Observation]) -> None:
        """Handle one message; append its observations (if any) to ``out``."""
        out.extend(self.ingest_many([(topic, payload)], arrival))

    def _native(self, st: NodeState, payload: bytes, name: str, arrival: float, out: list[Observation]) -> None:
        b = decode_native_adv(payload, name)
        st.kind = "native"
        st.online = True
        if b.bad_adverts:
            st.drop("malformed_advert", b.bad_adverts)
            self._drop("malformed_advert", b.bad_adverts)
        if b.version:
            st.telemetry = st.telemetry or NodeTelemetry(version=b.version)
        if not b.adverts:
            return
        newest = max(a.dt_s for a in b.adverts)
        sample = arrival - (b.t0 + newest)
        if self._skewed(st, sample):
            return
        # fast down, slow up: a queueing burst raises one sample, not the estimate
        lat = st.latency_s
        lat = sample if sample < lat else lat + 0.05 * (sample - lat)
        lat = min(max(lat, 0.0), self.settings.latency_max_s)
        st.latency_s = lat
        anchor = arrival - lat - newest  # node time t0 mapped onto the gateway's clock
        sensor = st.sensor
        links: list[str | None] = [None] * len(b.adverts)
        if self.resolver is not None and len(self.resolver):
            links = self.resolver.resolve_many(["" if a.public else a.device for a in b.adverts])
        for a, link in zip(b.adverts, links, strict=True):
            out.append(Observation(anchor + a.dt_s, sensor, a.device, a.rssi, "node", a.rssi_at_1m, link))
        n = len(b.adverts)
        st.observations += n
        st.last_observation = arrival
        self.observations += n

    def _skewed(self, st: NodeState, sample: float) -> bool:
        """Whether a report's clock sample (arrival - node time) is past ``max_clock_skew_s``:
        then the report is dropped and counted, and the node's error says by how much."""
        if abs(sample) <= self.settings.max_clock_skew_s:
            return False
        st.drop("clock_skew")
        self._drop("clock_skew")
        st.last_error = f"t0_ms: node clock {sample:+.1f} s off the gateway's"
        return True

    def _wifi(self, st: NodeState, payload: bytes, arrival: float) -> None:
        """A node's probe requests (``models.WifiNodeReport``): on the gateway's clock as native
        adverts are (the node's latency estimate, its spacing kept), to :attr:`on_wifi`."""
        try:
            r = WifiNodeReport.model_validate_json(payload)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"]) or "payload"
            raise NodePayloadError(loc, err["msg"]) from None
        if r.node != st.name:
            raise NodePayloadError("node", "does not match the topic's node")
        st.kind = "native"
        st.online = True
        if not r.probes:
            return
        newest = max(p.dt for p in r.probes) / 1000.0
        sample = arrival - (r.t0_ms / 1000.0 + newest)
        if self._skewed(st, sample):
            return
        anchor = arrival - min(max(st.latency_s, 0.0), self.settings.latency_max_s) - newest
        n = len(r.probes)
        self.wifi_probes += n
        if self.on_wifi is None:
            st.drop("wifi_no_capture", n)
            self._drop("wifi_no_capture", n)
            return
        sensor = st.sensor
        self.on_wifi([NodeProbe(anchor + p.dt / 1000.0, sensor, p.addr.lower(), p.seq, p.rssi) for p in r.probes])

    def ingest_many(self, messages: Iterable[tuple[str, bytes]], arrival: float) -> list[Observation]:
        """All messages that arrived together (one clock read); observations in time order.

        ESPresense device reports are grouped per node and JSON-decoded per node in one call
        (``decode_espresense_devices``); everything else is handled message by message.
        """
        out: list[Observation] = []
        groups: dict[str, list[bytes]] = {}
        route = self._route
        for topic, payload in messages:
            r = route(topic, arrival)
            if r is None:
                continue
            st, kind = r
            if kind == "esp_device":
                g = groups.get(st.name)
                if g is None:
                    g = groups[st.name] = []
                g.append(payload)
            else:
                self._other(st, kind, payload, arrival, out)
        for name, payloads in groups.items():
            st = self.nodes[name]
            ts = arrival - st.latency_s
            sensor = st.sensor
            ok = 0
            append = out.append
            for d in decode_espresense_devices(payloads):
                if type(d) is EspDevice:
                    append(Observation(ts, sensor, d.device, d.rssi, "node", d.rssi_at_1m, d.link))
                    ok += 1
                else:
                    assert isinstance(d, NodePayloadError)
                    self._malformed(st, d)
            st.kind = "espresense"
            if ok:
                st.online = True
                st.observations += ok
                st.last_observation = arrival
                self.observations += ok
        if len(out) > 1 and any(out[i].ts > out[i + 1].ts for i in range(len(out) - 1)):
            out.sort(key=lambda o: o.ts)
        return out

    # -- liveness ---------------------------------------------------------------------------

    def quiet_after(self, st: NodeState) -> float:
        s = self.settings
        if st.rate_at_last <= 0:
            return s.silent_after_s
        return min(max(s.quiet_gap_factor / st.rate_at_last, s.min_quiet_s), s.silent_after_s)

    def check(self, now: float) -> list[tuple[str, bool]]:
        """Update rates and states at ``now``; return (sensor, active) for sensors whose flag changed."""
        if self.started is None:
            self.started = now
        changes: list[tuple[str, bool]] = []
        for st in self.nodes.values():
            if st._rate_ts is None:
                st._rate_ts = now
            dt = max(0.0, now - st._rate_ts)
            if dt > 0 or st._count_since:
                a = math.exp(-dt / RATE_TAU_S)
                st.rate = st.rate * a + st._count_since / RATE_TAU_S
                if st._count_since:
                    st.rate_at_last = st.rate
                st._count_since = 0
                st._rate_ts = now
            if st.online is False:
                state: NodeStateName = "down"
            elif st.last_seen is None:
                state = "down" if now - self.started >= self.settings.silent_after_s else "unknown"
            else:
                silent = now - st.last_seen
                if silent >= self.settings.silent_after_s:
                    state = "down"
                elif silent >= self.quiet_after(st):
                    state = "quiet"
                else:
                    state = "up"
            st.state = state
            active = state in ("up", "unknown")
            if active != st.active:
                st.active = active
                changes.append((st.sensor, active))
        return changes

    def sensor_active(self) -> dict[str, bool]:
        return {st.sensor: st.active for st in self.nodes.values()}

    def status(self, now: float) -> list[NodeStatus]:
        return [st.as_dict(now) for st in self.nodes.values()]
