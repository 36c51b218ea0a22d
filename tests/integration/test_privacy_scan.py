"""The privacy bar: every byte the daemon writes during a simulated store day holds no raw identifier.

1. ``gateway run`` (subprocess) on the simulated store, a simulated day at high speed, real mosquitto
   on 127.0.0.1, real SQLite files. We capture its logs (stdout+stderr), every MQTT message on
   every topic (payload *and* topic), and every file under its state dir (outbox, presence DB and
   their WAL/SHM journals, key file). The simulator is deterministic, so the test replays the same
   simulated day in-process to learn every raw device address the daemon heard, and every linking
   identity (the simulator's stand-in for IRK identities). None may appear - in any spelling
   (``AA:BB:..``, ``aa-bb-..``, ``aabb..``, ``aabb.ccdd.eeff``) or as raw bytes.
2. The same daemon in-process, with a consent (IRK + customer ref), opt-outs by IRK, by raw MAC and
   by linking identity pushed while it runs: no IRK, opted-out MAC or link appears anywhere; the
   opted-out person produces no event; the customer ref (not a raw id) is allowed.

3. Wi-Fi: ``gateway run`` replaying a generated capture of probe requests (rotating and public MACs,
   30 % directed probes naming saved networks, across the 21:00 rotation) through the real ``wifi``
   source: no transmitter MAC and no SSID (verbatim or hex) appears in logs, MQTT, state files or the
   status pages. The pipeline's ``Observation`` has no SSID field, so this checks that by experiment.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from gateway.config import SimulatorSettings, load_settings
from gateway.identity.subjects import ConsentRecord
from gateway.layout import load_layout
from gateway.log import configure_logging
from gateway.mqtt.client import AsyncMqttClient
from gateway.parsers.pcap import write_pcap
from gateway.sim.store import StoreSimulator
from gateway.sim.wifi_crowd import generate_crowd
from gateway.status.auth import write_credential
from tests.conftest import LAYOUT, Mosquitto, free_port, gateway_cmd, gateway_env

pytestmark = pytest.mark.integration

SIM_HOURS = 4.0  # the evening of a store day: 18:00 to 22:00 (crosses the 21:00 pseudonym rotation)
# A quiet evening keeps the test fast; phones rotate their address every 10 min, so it still holds
# over a hundred raw addresses. Coarser ticks/adverts only thin the stream; every code path is hit.
SIM = {
    "seed": 5,
    "start_ts": 1_767_290_400.0,  # 2026-01-01 18:00Z
    "shoppers_per_hour": 20,
    "mac_rotation_s": 600,
    "speed": 10000,
    "beacons": 1,
    "advert_interval_s": 4.0,
    "tick_s": 2.0,
    "link_rotations": True,  # the test follows phones by their simulated IRK identity
}
IRK = bytes.fromhex("0f1e2d3c4b5a69788796a5b4c3d2e1f0")
SSIDS = ["HomeWifi-Dupont", "FreeWifi_Secure"]
HEX_RUN = re.compile(rb"[0-9A-Fa-f]{12,}")
SEP_MAC = re.compile(rb"(?:[0-9A-Fa-f]{2}[:\-]){5}[0-9A-Fa-f]{2}|(?:[0-9A-Fa-f]{4}\.){2}[0-9A-Fa-f]{4}")
LINK_RE = re.compile(rb"sim-\d+-\d+")


@dataclass
class Secrets:
    macs: set[bytes] = field(default_factory=set)  # 12 lower-case hex chars
    links: set[bytes] = field(default_factory=set)
    irks: set[bytes] = field(default_factory=set)  # 32 lower-case hex chars
    strings: set[bytes] = field(default_factory=set)  # SSIDs and anything else verbatim

    def raw_bytes(self) -> set[bytes]:
        return {bytes.fromhex(m.decode()) for m in self.macs} | {bytes.fromhex(k.decode()) for k in self.irks}


def simulated_day_ids(duration_s: float, **sim: float) -> tuple[StoreSimulator, Secrets]:
    """Replay the daemon's simulated day (same seed, same tick schedule) to learn its raw ids."""
    s = SimulatorSettings(enabled=True, duration_s=duration_s, **sim)  # type: ignore[arg-type]
    st = StoreSimulator(load_layout(LAYOUT), s)
    k = 0
    while True:
        k += 1
        t = s.start_ts + k * s.tick_s
        if t > s.start_ts + duration_s:
            break
        st.step(t)
    sec = Secrets()
    sec.macs = {m.replace(":", "").lower().encode() for m in st.mac_owner}
    sec.links = {f"sim-{s.seed}-{pid}".encode() for pid in set(st.mac_owner.values())}
    return st, sec


def scan(name: str, blob: bytes, sec: Secrets, raw: set[bytes]) -> list[str]:
    """Every leak of a secret in ``blob``, as readable findings."""
    found: list[str] = []
    low = blob.lower()
    for m in HEX_RUN.finditer(low):
        run = m.group()
        for n, pool in ((12, sec.macs), (32, sec.irks)):
            for i in range(len(run) - n + 1):
                if run[i : i + n] in pool:
                    found.append(f"{name}: hex identifier {run[i : i + n]!r} at offset {m.start() + i}")
    for m in SEP_MAC.finditer(low):
        h = re.sub(rb"[^0-9a-f]", b"", m.group())
        if h in sec.macs:
            found.append(f"{name}: MAC {m.group()!r} at offset {m.start()}")
    for m in LINK_RE.finditer(blob):
        if m.group() in sec.links:
            found.append(f"{name}: linking identity {m.group()!r} at offset {m.start()}")
    for s in sec.strings:
        if s.lower() in low:
            found.append(f"{name}: string {s!r}")
    if raw:
        for i in range(len(blob) - 5):
            w = blob[i : i + 6]
            if w in raw:
                found.append(f"{name}: raw 6-byte address at offset {i}")
        for k in sec.irks:
            if bytes.fromhex(k.decode()) in blob:
                found.append(f"{name}: raw IRK bytes")
    return found


def state_files(state: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()}


def write_config(
    tmp_path: Path,
    broker: Mosquitto,
    duration_s: float,
    status_port: int | None = None,
    sources: str | None = None,
    **sim: object,
) -> Path:
    cfg = tmp_path / "gateway.toml"
    if status_port is None:
        status = "enabled = false"
    else:
        write_credential(tmp_path / "cred.json", "tech", "correct horse battery")
        status = f'enabled = true\nport = {status_port}\ncredential_file = "{tmp_path / "cred.json"}"'

    simlines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in sim.items())
    if sources is None:
        sources = f"[simulator]\nenabled = true\nduration_s = {duration_s}\n{simlines}"
    cfg.write_text(
        f"""
[gateway]
id = "gw-privacy"
store_id = "demo-store"
[paths]
state_dir = "{tmp_path / "state"}"
layout = "{LAYOUT}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
tls = false
[status]
{status}
[log]
format = "json"
level = "debug"
[presence]
publish_fixes = true
k_anonymity = 2
aggregate_interval_s = 900
{sources}
"""
    )
    return cfg


class PageScraper:
    """Logs in to the status page like a technician and keeps every byte it serves (HTML, JSON API,
    metrics), every 0.25 s while the daemon runs (a quiet machine plays the day in a few seconds)."""

    PATHS = ("/", "/api/status", "/api/devices", "/api/layout", "/metrics")

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.pages: list[bytes] = []
        self.fetches = 0
        self.served: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        # unsafe=True: keep the session cookie of a bare IP host (aiohttp drops those by default)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            for _ in range(600):  # bounded: the run lasts about a minute
                try:
                    r = await http.post(
                        f"{self.base}/login", json={"user": "tech", "password": "correct horse battery"}
                    )
                    if r.status == 200:
                        break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
            for _ in range(2400):  # bounded: 0.25 s apart, ten minutes at most
                for path in self.PATHS:
                    try:
                        async with http.get(self.base + path, allow_redirects=False) as r:
                            if r.status == 200:
                                self.served.add(path)
                                self.pages.append(await r.read())
                                self.fetches += 1
                    except aiohttp.ClientError:
                        return  # the daemon has stopped
                await asyncio.sleep(0.25)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Sniffer:
    """Subscribes to every topic on the broker and keeps every byte it receives."""

    def __init__(self, broker: Mosquitto) -> None:
        self.client = AsyncMqttClient(broker.host, broker.port, client_id="privacy-sniffer")
        self.messages: list[tuple[str, bytes]] = []
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        await self.client.connect()
        await self.client.subscribe("#", qos=1)
        self.ready.set()
        with contextlib.suppress(Exception):
            async for msg in self.client.messages():
                self.messages.append((msg.topic, msg.payload))

    async def start(self) -> None:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.ready.wait(), 10)

    async def stop(self) -> None:
        await asyncio.sleep(0.5)  # last publishes in flight
        with contextlib.suppress(Exception):
            await self.client.disconnect()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task

    def blob(self) -> bytes:
        return b"\n".join(t.encode() + b" " + p for t, p in self.messages)


async def run_gateway_observed(
    cfg: Path, broker: Mosquitto, port: int, timeout: float
) -> tuple[bytes, bytes, Sniffer, PageScraper]:
    """``gateway run`` as a subprocess while a sniffer keeps every MQTT message and a technician reads
    the status page; its stdout, stderr, the sniffer and the scraper once it has exited with 0."""
    sniffer = Sniffer(broker)
    await sniffer.start()
    scraper = PageScraper(port)
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)),
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    scraper.start()
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await scraper.stop()
    await sniffer.stop()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out, err, sniffer, scraper


def scan_everything(
    logs: bytes, sniffer: Sniffer, scraper: PageScraper, files: dict[str, bytes], sec: Secrets
) -> list[str]:
    """Findings over every byte the daemon wrote: logs, MQTT, status pages, state files."""
    findings = scan("logs", logs, sec, raw=set())
    findings += scan("mqtt", sniffer.blob(), sec, raw=sec.raw_bytes())
    findings += scan("status pages", b"\n".join(scraper.pages), sec, raw=set())
    for name, data in files.items():
        findings += scan(f"state/{name}", data, sec, raw=sec.raw_bytes())
    return findings


def events_of(messages: list[tuple[str, bytes]]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for topic, payload in messages:
        if not topic.endswith("/events"):
            continue
        doc = json.loads(payload)
        for item in doc.get("batch", [doc]):
            out.append(item["event"])
    return out


async def test_simulated_day_leaves_no_raw_identifier(tmp_path: Path, mosquitto: Mosquitto) -> None:
    duration = SIM_HOURS * 3600
    port = free_port()
    cfg = write_config(tmp_path, mosquitto, duration, status_port=port, **SIM)
    out, err, sniffer, scraper = await run_gateway_observed(cfg, mosquitto, port, 420)
    # the status page was served and read while devices were on the map
    assert scraper.served == set(PageScraper.PATHS), scraper.served
    assert scraper.fetches >= 3 * len(PageScraper.PATHS), scraper.fetches
    assert any(b'"subject"' in page for page in scraper.pages), "no device dot was ever served"

    sim, sec = await asyncio.to_thread(simulated_day_ids, duration, **SIM)
    sec.strings = {s.encode() for s in SSIDS}
    assert len(sec.macs) > 100, "the simulated evening should rotate many addresses"

    logs = out + err
    events = events_of(sniffer.messages)
    types = {str(e["type"]) for e in events}
    # the day really happened end to end (otherwise an empty scan proves nothing)
    assert {"visit.started", "zone.entered", "zone.left", "visit.ended", "fix", "aggregate"} <= types, types
    assert len(events) > 1000
    files = state_files(tmp_path / "state")
    assert "presence.sqlite3" in files and "outbox.sqlite3" in files
    # the SQLite files did hold presence data during the day (history for qualification)
    assert any(str(e["type"]) == "visit.ended" and e.get("visit_count") for e in events)

    findings = scan_everything(logs, sniffer, scraper, files, sec)
    assert findings == [], "\n".join(findings[:20])

    # the scanner does find a raw identifier when one is there (guards against a blind scan)
    mac = next(iter(sim.mac_owner))
    assert scan("probe", f'{{"x": "{mac}"}}'.encode(), sec, raw=set())
    assert scan("probe", bytes.fromhex(mac.replace(":", "")), sec, raw=sec.raw_bytes())


async def test_consent_and_optouts_leave_no_irk_mac_or_link(tmp_path: Path, mosquitto: Mosquitto) -> None:
    from gateway.runtime.daemon import Daemon, load_store_layout

    duration = 1.5 * 3600.0
    # slow enough that the opt-outs (pushed once the daemon is ready) are in before the chosen
    # visitors arrive, also on a loaded box: at 10,000x the first 10 minutes took 0.06 s
    sim_cfg = {**SIM, "shoppers_per_hour": 60, "speed": 300}
    cfg = write_config(tmp_path, mosquitto, duration, **sim_cfg)
    settings = load_settings(cfg)
    sim, sec = await asyncio.to_thread(simulated_day_ids, duration, **sim_cfg)
    sec.irks = {IRK.hex().encode()}
    # pick a visitor who arrives after the opt-out is pushed: every one of their addresses and
    # their linking identity is opted out by identity; one more visitor by one raw MAC
    t0 = settings.simulator.start_ts
    heard = set(sim.mac_owner.values())  # visitors whose phone advertises (some Android phones do not)
    visitors = [v for v in sim.visits if v.kind == "visitor" and v.start > t0 + 1800 and v.person in heard]
    target = visitors[0].person
    target_link = f"sim-{settings.simulator.seed}-{target}"
    raw_mac = next(m for m, pid in sim.mac_owner.items() if pid == visitors[1].person)

    logbuf = io.StringIO()
    configure_logging("debug", "json", stream=logbuf)
    sniffer = Sniffer(mosquitto)
    await sniffer.start()
    daemon = Daemon(settings, load_store_layout(settings))

    target_subjects: set[str] = set()
    pushed_at: list[float] = []

    async def push_privacy_commands() -> None:
        for _ in range(3000):  # bounded: 30 s
            if daemon.runtime.ready:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("daemon never became ready")
        rt = daemon.presence
        # what the target would be called today (the key is dropped at shutdown, so ask now)
        target_subjects.add(rt.keyring.pseudonym(target_link, t0))
        rt.put_consent(ConsentRecord("cust-0042", frozenset({"presence"}), irk=IRK))
        await rt.add_optout(IRK.hex(), t0)
        await rt.add_optout(target_link, t0)
        await rt.add_optout(raw_mac.lower(), t0)
        clock = daemon.event_clock()
        pushed_at.append(clock() if clock is not None else t0)

    pusher = asyncio.create_task(push_privacy_commands())
    try:
        rc = await asyncio.wait_for(daemon.run(), 240)
    finally:
        pusher.cancel()
        configure_logging("info", "json", stream=sys.stderr)
    await sniffer.stop()
    assert rc == 0

    events = events_of(sniffer.messages)
    assert len(events) > 100
    # the opted-out person produced nothing, and the opted-out MAC was dropped when heard
    assert visitors[0].start < t0 + duration
    assert len(target_subjects) == 1
    assert not [e for e in events if e.get("subject") in target_subjects]
    assert pushed_at and pushed_at[0] < visitors[0].start, "opt-outs pushed after the visitors came"
    assert daemon.presence.resolver.stats.dropped_optout > 0
    files = state_files(tmp_path / "state")
    digests = files["presence.sqlite3"]
    assert b"sim-" not in digests

    findings: list[str] = []
    findings += scan("logs", logbuf.getvalue().encode(), sec, raw=set())
    findings += scan("mqtt", sniffer.blob(), sec, raw=sec.raw_bytes())
    for name, data in files.items():
        findings += scan(f"state/{name}", data, sec, raw=sec.raw_bytes())
    assert findings == [], "\n".join(findings[:20])


WIFI_START = 1_767_302_100.0  # 2026-01-01 20:15Z: the capture crosses the 21:00 pseudonym rotation
WIFI_SSIDS = [b"HomeNet", b"Office-5", b"CoffeeShop", b"eduroam"]  # what the crowd generator names


async def test_wifi_probes_leave_no_mac_or_ssid(tmp_path: Path, mosquitto: Mosquitto) -> None:
    frames = await asyncio.to_thread(
        generate_crowd, 60, 5400.0, seed=3, start_ts=WIFI_START, ssid_share=0.3, public_share=0.2
    )
    pcap = tmp_path / "probes.pcap"
    with pcap.open("wb") as f:
        write_pcap(f, [(fr.ts, fr.frame) for fr in frames], 127)
    sec = Secrets()
    sec.macs = {fr.mac.hex().encode() for fr in frames}
    heard = {ssid for ssid in WIFI_SSIDS if any(ssid in fr.frame for fr in frames)}
    assert heard == set(WIFI_SSIDS), "every saved-network name is in the capture"
    sec.strings = heard | {ssid.hex().encode() for ssid in heard}
    assert len(sec.macs) > 100, "rotating phones should show many addresses"
    assert any(not fr.mac[0] & 0x02 for fr in frames), "public (never rotating) addresses too"

    port = free_port()
    # replayed at 300x (~18 s) so the status page is read while probes arrive
    wifi = f'[wifi]\nenabled = true\npcap = "{pcap}"\nsensor_id = "gw"\npcap_speed = 300\n'
    cfg = write_config(tmp_path, mosquitto, 0.0, status_port=port, sources=wifi)
    out, err, sniffer, scraper = await run_gateway_observed(cfg, mosquitto, port, 180)
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    stopped = next(r for r in logs if r["event"] == "gateway stopped")
    assert stopped["stats"]["observations"] > len(frames) // 2  # the probes really went through
    events = events_of(sniffer.messages)
    assert events, "the capture produced events on the uplink"
    assert scraper.served == set(PageScraper.PATHS), scraper.served
    assert any(b'"subject"' in page for page in scraper.pages), "no Wi-Fi device was ever on the map"

    findings = scan_everything(out + err, sniffer, scraper, state_files(tmp_path / "state"), sec)
    assert findings == [], "\n".join(findings[:20])
    # the scan does see an SSID or a transmitter address when one is there
    assert scan("probe", b"probe for " + WIFI_SSIDS[3], sec, raw=set())
    assert scan("probe", frames[0].frame, sec, raw=sec.raw_bytes())
