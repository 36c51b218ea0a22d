"""The foundation's end-to-end path with real parts: replay file -> `gateway run` (subprocess) ->
SQLite outbox -> real mosquitto on 127.0.0.1 -> subscriber. Every event must arrive, with
contiguous per-gateway sequence numbers starting at 1."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.config import SimulatorSettings
from gateway.demo.cloud_standin import CloudStandIn
from gateway.layout import load_layout
from gateway.sim.store import StoreSimulator
from tests.conftest import LAYOUT, Mosquitto, gateway_cmd, gateway_env

pytestmark = pytest.mark.integration


def make_replay(path: Path, seconds: float, seed: int = 4) -> int:
    s = SimulatorSettings(seed=seed, shoppers_per_hour=400)
    sim = StoreSimulator(load_layout(LAYOUT), s)
    n = 0
    with path.open("w") as f:
        for k in range(1, int(seconds / s.tick_s) + 1):
            for o in sim.step(s.start_ts + k * s.tick_s):
                f.write(json.dumps({"ts": o.ts, "sensor": o.sensor, "device": o.device, "rssi": o.rssi}) + "\n")
                n += 1
        f.write("this line is not json\n")
        f.write('{"ts": 1, "sensor": "n11"}\n')
    return n


def write_config(tmp_path: Path, broker: Mosquitto, extra: str = "") -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
id = "gw-test"
store_id = "demo-store"
[paths]
state_dir = "{tmp_path / "state"}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
tls = false
[status]
enabled = false
[log]
format = "json"
{extra}
"""
    )
    return cfg


async def start_cloud(broker: Mosquitto) -> tuple[CloudStandIn, asyncio.Task[None]]:
    cloud = CloudStandIn(broker.host, broker.port, verbose=False, out=sys.stderr)
    task = asyncio.create_task(cloud.run())
    await asyncio.wait_for(cloud.connected.wait(), 10)
    return cloud, task


async def wait_for(pred, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        if pred():
            return True
        await asyncio.sleep(0.1)
    return pred()


async def test_replay_run_delivers_every_event_in_order(tmp_path: Path, mosquitto: Mosquitto) -> None:
    replay = tmp_path / "obs.jsonl"
    make_replay(replay, seconds=600)
    cfg = write_config(tmp_path, mosquitto, f'[replay]\nenabled = true\npath = "{replay}"\n')
    cloud, task = await start_cloud(mosquitto)
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)),
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    stopped = next(r for r in logs if r["event"] == "gateway stopped")
    assert "unknown_sensor" not in stopped["stats"]["dropped"]
    assert await wait_for(lambda: "gw-test" in cloud.ledgers, 10)
    led = cloud.ledgers["gw-test"]
    total = sum(stopped["stats"]["events"].values())
    assert total > 50
    assert await wait_for(lambda: led.received == total, 10), (led.received, total)
    assert led.gaps == []
    assert led.next_seq == total + 1
    # the outbox is empty: rows are deleted only once the broker acknowledged them
    db = sqlite3.connect(tmp_path / "state" / "outbox.sqlite3")
    try:
        tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
        assert tables
    finally:
        db.close()
    task.cancel()


async def test_sigterm_drains_and_notifies_systemd(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(tmp_path, mosquitto, "[simulator]\nenabled = true\nspeed = 60\nshoppers_per_hour = 600\n")
    notify_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.setblocking(False)
    cloud, task = await start_cloud(mosquitto)
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)),
        env=gateway_env(NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="2000000"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    loop = asyncio.get_running_loop()
    msgs: list[str] = []
    try:

        async def recv_until(needle: str, timeout: float) -> None:
            end = loop.time() + timeout
            while loop.time() < end:
                try:
                    msgs.append(sock.recv(4096).decode())
                except BlockingIOError:
                    await asyncio.sleep(0.05)
                if any(needle in m for m in msgs):
                    return
            raise AssertionError(f"{needle} not received; got {msgs}")

        await recv_until("READY=1", 30)
        await recv_until("WATCHDOG=1", 10)
        assert await wait_for(lambda: "gw-test" in cloud.ledgers and cloud.ledgers["gw-test"].received > 20, 60)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()[-3000:]
        await recv_until("STOPPING=1", 5)
        logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
        stopped = next(r for r in logs if r["event"] == "gateway stopped")
        total = sum(stopped["stats"]["events"].values())
        led = cloud.ledgers["gw-test"]
        # everything committed during the drain was published before exit
        assert await wait_for(lambda: led.received == total, 10), (led.received, total)
        assert led.gaps == []
        # no raw MAC in what the daemon logged
        assert "redacted" not in err.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        sock.close()
        task.cancel()


async def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[mqtt]\nport = 0\n[outbox]\nmax_bytes = 'lots'\n")
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)), env=gateway_env(), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    text = err.decode()
    assert "mqtt.port" in text and "outbox.max_bytes" in text
    assert "Traceback" not in text


CROWD_PCAP = Path(__file__).resolve().parent.parent / "fixtures" / "wifi" / "crowd.pcap"


async def test_pcap_replay_is_a_recording_not_a_live_radio(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """A months-old capture replayed through ``wifi.pcap``: the wall clock must not drive event time
    (it once ran a tick per second of the gap and stalled the loop), and its end is a clean stop."""
    cfg = write_config(tmp_path, mosquitto, f'[wifi]\nenabled = true\npcap = "{CROWD_PCAP}"\nsensor_id = "gw"\n')
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)),
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert not [r for r in logs if r["event"] == "event loop lagging; watchdog ping withheld"]
    stopped = next(r for r in logs if r["event"] == "gateway stopped")
    assert stopped["reason"] == "all finite tasks done"
    assert stopped["stats"]["observations"] > 0


async def test_a_start_up_that_fails_half_way_exits_instead_of_hanging(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The outbox is open when the presence database turns out unusable: every opened SQLite
    connection is closed (their threads would keep the process alive) and the error is named."""
    bad = tmp_path / "presence-is-a-directory"
    bad.mkdir()
    cfg = write_config(tmp_path, mosquitto, f'[privacy]\npresence_db = "{bad}"\n[simulator]\nenabled = true\n')
    proc = await asyncio.create_subprocess_exec(
        *gateway_cmd("run", "--config", str(cfg)),
        env=gateway_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    failed = next(r for r in logs if r["event"] == "gateway could not run")
    assert "presence-is-a-directory" in failed["reason"] or "database" in failed["reason"]
