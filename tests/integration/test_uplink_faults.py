"""Outages and crashes: broker restart under load, kill -9 of a real gateway process mid-drain."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import signal
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from gateway.config import GatewayIdentity, MqttSettings
from gateway.models import EventBase, ZoneEntered
from gateway.ops import outbox_tool
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox
from tests.conftest import Mosquitto, gateway_env, make_mosquitto
from tests.integration.uplink_support import Cloud, assert_in_order, until

pytestmark = pytest.mark.integration

IDENT = GatewayIdentity(id="gw-1", store_id="store-1")


def persistent_broker(tmp_path: Path) -> Mosquitto:
    """A broker that keeps sessions and queued messages across its own restarts (like the platform's)."""
    store = tmp_path / "mosq-data"
    store.mkdir()
    return make_mosquitto(
        tmp_path,
        f"persistence true\npersistence_location {store}/\nautosave_interval 0\nuser root\n",
    )


def events(n: int, start: int) -> list[EventBase]:
    return [ZoneEntered(ts=1000.0 + i, store_id="store-1", subject=f"p{i}", zone="z") for i in range(start, start + n)]


async def test_broker_restart_under_load_loses_nothing(tmp_path: Path) -> None:
    m = persistent_broker(tmp_path)
    m.start()
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    up = Uplink(
        MqttSettings(
            host=m.host, port=m.port, tls=False, reconnect_min_s=0.05, reconnect_max_s=0.3, batch_threshold=300
        ),
        IDENT,
        ob,
    )
    stop_load = asyncio.Event()

    async def load() -> None:
        i = 0
        for _ in range(10_000):  # bounded
            if stop_load.is_set():
                return
            await ob.append(events(25, i))
            i += 25
            await asyncio.sleep(0.01)

    try:
        async with Cloud(m) as cloud:
            task = asyncio.create_task(up.run())
            loader = asyncio.create_task(load())
            await cloud.wait_for(500)
            m.stop()  # broker down while events keep coming
            await until(lambda: up.status()["link"] in ("backoff", "connecting"), 5)
            await asyncio.sleep(1.5)
            backlog_during_outage = ob.stats().backlog
            assert backlog_during_outage > 0
            assert up.status()["last_error"]
            m.start()
            await asyncio.sleep(1.0)
            stop_load.set()
            await loader
            last = ob.stats().last_seq
            await cloud.wait_for(last, 20)
            assert_in_order(cloud.seqs, last)
            await until(lambda: ob.stats().backlog == 0, 5)
            st = up.status()
            assert st["reconnects"] >= 1
            assert cloud.reconnects >= 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        m.stop()
        await ob.close()


def drive_args(db: Path, port: int, n: int, *extra: str) -> list[str]:
    return [
        "drive",
        "--db",
        str(db),
        "--port",
        str(port),
        "--gateway-id",
        "gw-k",
        "--store-id",
        "store-k",
        "--events",
        str(n),
        "--batch",
        "200",
        "--interval",
        "0.002",
        "--batch-threshold",
        "150",
        "--batch-max",
        "30",
        *extra,
    ]


async def test_kill_9_during_drain_leaves_no_gap(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """10 SIGKILLs at random moments while appending and draining; then a clean run finishes.

    The killed runs are real processes forked from a forkserver that has the gateway imported
    (so each start costs milliseconds, not a Python start-up); the final run is a plain
    ``python -m gateway.ops.outbox_tool`` subprocess.
    """
    db = tmp_path / "outbox.db"
    endless = 10_000_000  # killed runs never finish appending: every kill lands mid-run
    rng = random.Random(8)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["gateway.ops.outbox_tool"])
    kills = 0
    in_flight_at_kill: list[int] = []
    t_start = time.monotonic()
    async with Cloud(mosquitto, topic="retail/store-k/gw-k/#") as cloud:
        for k in range(10):
            ready = tmp_path / f"ready-{k}"
            proc = ctx.Process(
                target=outbox_tool.main, args=(drive_args(db, mosquitto.port, endless, "--ready-file", str(ready)),)
            )
            n_status = len(cloud.status)
            proc.start()
            await until(ready.exists, 20)
            if k % 2 == 0:  # half the kills land after the session is up (the will must fire) ...
                await until(lambda n=n_status: len(cloud.status) > n and cloud.status[-1].state == "online", 20)
            await asyncio.sleep(rng.uniform(0.05, 0.4))  # ... the rest at any moment, connecting included
            assert proc.is_alive()
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            await asyncio.to_thread(proc.join, 10)
            assert proc.exitcode == -signal.SIGKILL
            con = sqlite3.connect(db)
            in_flight_at_kill.append(con.execute("SELECT count(*) FROM events").fetchone()[0])
            con.close()
        assert kills == 10
        # A box that vanished without DISCONNECT gets its last will published: every 'online' is
        # followed by an 'offline' from the broker.
        states = lambda: [st.state for st in cloud.status]  # noqa: E731
        await until(lambda: states().count("offline") >= states().count("online"), 10)
        wills = states().count("offline")
        assert states()[-1] == "offline"
        assert wills >= 5  # at least every run that was waited for said 'online', then its will fired
        con = sqlite3.connect(db)
        killed_at = int(con.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
        con.close()
        assert killed_at > 0
        total = killed_at + 200  # the clean run appends a little more, then drains everything
        t0 = time.monotonic()
        final = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.ops.outbox_tool",
            *drive_args(db, mosquitto.port, total),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=gateway_env(),
        )
        out, err = await asyncio.wait_for(final.communicate(), 60)
        print(f"final run {time.monotonic() - t0:.1f}s, killed phase {t0 - t_start:.1f}s, backlogs {in_flight_at_kill}")
        assert final.returncode == 0, err.decode()[-2000:]
        done = json.loads(out.decode().strip().splitlines()[-1])
        assert done["last_seq"] == total
        assert done["backlog"] == 0
        await cloud.wait_for(total, 10)
    # Every seq 1..total arrived, first arrivals in order; the Cloud asserts no seq was reused
    # with a different event id (a torn or replayed batch would show up there).
    assert_in_order(cloud.seqs, total)
    assert len(cloud.seqs) >= total
    ob = await Outbox.open(db, "gw-k")
    st = ob.stats()
    assert (st.last_seq, st.backlog, st.evicted_total) == (total, 0, 0)
    await ob.close()
