"""Outbox and uplink figures, each beside a reference measured in the same run.

* outbox.append: events/s through `Outbox.append` (durable: WAL + synchronous=FULL, one transaction
  per 500-event batch, JSON envelope built per event) vs raw sqlite3 ``executemany`` of the same
  pre-built rows with the same pragmas and batch size (no JSON, no asyncio).
* uplink.drain: messages/s from the outbox to a local mosquitto at QoS 1 (one event per message,
  acks deleting rows) vs raw paho publishing the same payloads at QoS 1 with its own thread; and
  events/s with batching (UplinkBatch of 100).
* outbox.rss: process RSS while the outbox fills to N events and while the uplink drains it.
* outbox.restart: `Outbox.open` + first `pending(1000)` with an N-event backlog (time to READY).
* outbox.append_at_disk_cap / outbox.append_full_disk (as root: a real 16 MiB tmpfs, no max_bytes):
  events/s (90 % raw fixes) while the disk-derived cap evicts in every batch, and once another writer
  has taken every free byte (file frozen, a checkpoint after every commit); reference: raw sqlite3
  deleting the oldest fixes and inserting the same batch in one transaction, same pragmas, same disk.

Full mode uses N = 1,000,000; ``--quick`` uses 100,000 (and smaller drain runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import GatewayIdentity, MqttSettings
from gateway.log import configure_logging
from gateway.models import EventBase, PositionFix, ZoneEntered
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox

BATCH = 500
IDENT = GatewayIdentity(id="gw-bench", store_id="store-bench")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def make_events(n: int, start: int) -> list[EventBase]:
    return [
        ZoneEntered(ts=1_767_261_600.0 + i, store_id="store-bench", subject=f"{i:024x}", zone=f"zone-{i % 12}")
        for i in range(start, start + n)
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, d: Path) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = free_port()
        conf = d / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            "max_inflight_messages 0\nmax_queued_messages 100000\n"
        )
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


# -- append -------------------------------------------------------------------------------------


async def bench_append(path: Path, n: int, samples: list[tuple[int, float]]) -> float:
    ob = await Outbox.open(path, IDENT.id, max_bytes=4 * 1024**3)
    spent = 0.0
    done = 0
    while done < n:
        evs = make_events(min(BATCH, n - done), done)
        t0 = time.perf_counter()
        await ob.append(evs)
        spent += time.perf_counter() - t0
        done += len(evs)
        if done % (n // 10) < BATCH:
            samples.append((done, rss_mb()))
    await ob.close()
    return n / spent


def bench_append_reference(path: Path, n: int) -> float:
    """Raw sqlite3: same schema, pragmas, batch size and payload sizes; rows pre-built."""
    payload = (
        b'{"v":1,"gateway_id":"gw-bench","seq":1,"event":' + make_events(1, 0)[0].model_dump_json().encode() + b"}"
    )
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL,"
        " priority INTEGER NOT NULL, ts REAL NOT NULL, payload BLOB NOT NULL)"
    )
    con.execute("CREATE INDEX events_by_priority ON events (priority, seq)")
    spent = 0.0
    for start in range(0, n, BATCH):
        rows = [(s, f"{s:032x}", "zone.entered", 2, float(s), payload) for s in range(start + 1, start + BATCH + 1)]
        t0 = time.perf_counter()
        con.execute("BEGIN IMMEDIATE")
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        con.execute("COMMIT")
        spent += time.perf_counter() - t0
    con.close()
    return n / spent


# -- at the disk's cap ---------------------------------------------------------------------------


def mixed_events(n: int, start: int) -> list[EventBase]:
    """The daemon's mix with raw fixes published: 9 fixes for each zone event."""
    return [
        ZoneEntered(ts=1_767_261_600.0 + i, store_id="store-bench", subject=f"{i % 50:024x}", zone=f"zone-{i % 12}")
        if i % 10 == 0
        else PositionFix(
            ts=1_767_261_600.0 + i, store_id="store-bench", subject=f"{i % 50:024x}", x=3.25, y=7.5, sigma_m=1.2
        )
        for i in range(start, start + n)
    ]


@contextlib.contextmanager
def small_tmpfs(where: Path, size: int) -> Iterator[Path | None]:
    """A real small filesystem (needs root); yields None where it cannot be mounted."""
    where.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, check=False
        ).returncode
    ):
        yield None
        return
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


def fill_filesystem(path: Path) -> None:
    with open(path, "ab", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)


async def bench_at_cap(d: Path, batches: int) -> tuple[float, float, dict[str, int]]:
    """(events/s at the disk-derived cap, events/s on the full disk, evictions by priority)."""
    ob = await Outbox.open(d / "outbox.sqlite3", IDENT.id)
    k = 0
    while ob.stats().disk_state == "ok" and k < 10_000:  # fill to the cap (not timed)
        await ob.append(mixed_events(BATCH, k * BATCH))
        k += 1
    rates = []
    for phase in ("cap", "full"):
        if phase == "full":
            fill_filesystem(d / "other-process.bin")
            await ob.append(mixed_events(BATCH, k * BATCH))  # notices the full disk (not timed)
            k += 1
        t0 = time.perf_counter()
        for _ in range(batches):
            await ob.append(mixed_events(BATCH, k * BATCH))
            k += 1
        rates.append(batches * BATCH / (time.perf_counter() - t0))
    st = ob.stats()
    await ob.close()
    (d / "other-process.bin").unlink()
    return rates[0], rates[1], st.evicted_by_priority


def reference_at_cap(d: Path, batches: int) -> float:
    """Raw sqlite3 at a fixed size: each transaction deletes the oldest BATCH fixes and inserts BATCH
    pre-built rows (same schema, pragmas and payload sizes, the same filesystem)."""
    evs = mixed_events(BATCH, 0)
    rows = [(e.type, int(e.type != "fix") * 2, e.model_dump_json().encode()) for e in evs]
    con = sqlite3.connect(d / "ref.sqlite3", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, type TEXT NOT NULL,"
        " priority INTEGER NOT NULL, ts REAL NOT NULL, payload BLOB NOT NULL)"
    )
    con.execute("CREATE INDEX events_by_priority ON events (priority, seq)")

    def batch(k: int) -> list[tuple[int, str, str, int, float, bytes]]:
        return [(k * BATCH + i + 1, f"{k * BATCH + i:032x}", t, p, float(i), b) for i, (t, p, b) in enumerate(rows)]

    for k in range(8):  # a standing backlog to delete from
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", batch(k))
    t0 = time.perf_counter()
    for k in range(8, 8 + batches):
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE priority = 0 ORDER BY seq LIMIT ?)",
            (int(BATCH * 0.9),),
        )
        con.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", batch(k))
        con.execute("COMMIT")
    rate = batches * BATCH / (time.perf_counter() - t0)
    con.close()
    return rate


# -- drain --------------------------------------------------------------------------------------


async def bench_drain(
    path: Path, port: int, n: int, *, batched: bool, rss: list[float] | None = None, limit_s: float = 120.0
) -> tuple[float, int]:
    """Drain n events from a pre-filled outbox; return (rate, messages published)."""
    ob = await Outbox.open(path, IDENT.id, max_bytes=4 * 1024**3)
    if ob.backlog < n:
        for start in range(ob.last_seq, n, BATCH):
            await ob.append(make_events(min(BATCH, n - start), start))
    settings = MqttSettings(
        host="127.0.0.1",
        port=port,
        tls=False,
        inflight=256,
        batch_threshold=1 if batched else 10**12,
        batch_max=100,
    )
    up = Uplink(settings, IDENT, ob)
    start_backlog = ob.backlog
    target = start_backlog - n
    t0 = time.perf_counter()
    task = asyncio.create_task(up.run())
    for _ in range(int(limit_s / 0.01)):
        if ob.backlog <= target:
            break
        if rss is not None and int((time.perf_counter() - t0) * 100) % 50 == 0:
            rss.append(rss_mb())
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - t0
    sent = start_backlog - ob.backlog
    msgs = up.published_messages
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await ob.close()
    return sent / elapsed, msgs


def bench_paho_reference(port: int, n: int, payload: bytes) -> float:
    """Raw paho: its own network thread, QoS 1, the same 256-message window, wait for every PUBACK.

    The window is kept by the publisher (a semaphore released in on_publish): handing paho all n
    messages at once would measure paho's O(n) queue scan per PUBACK instead of the link.
    """
    done = threading.Event()
    window = threading.Semaphore(256)
    acked = 0

    def on_publish(*_a: object) -> None:
        nonlocal acked
        acked += 1
        window.release()
        if acked == n:
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-ref", protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(256)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for _ in range(n):
        if not window.acquire(timeout=30):
            break
        c.publish("retail/ref/gw/events", payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return n / elapsed


# -- restart ------------------------------------------------------------------------------------


async def bench_restart(path: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    ob = await Outbox.open(path, IDENT.id, max_bytes=4 * 1024**3)
    rows = await ob.pending(1000)
    elapsed = time.perf_counter() - t0
    backlog = ob.backlog
    assert rows
    assert rows[0].seq <= rows[-1].seq
    await ob.close()
    return elapsed, backlog


def sqlite_open_reference(path: Path) -> float:
    t0 = time.perf_counter()
    con = sqlite3.connect(path)
    con.execute("SELECT seq, payload FROM events ORDER BY seq LIMIT 1000").fetchall()
    con.close()
    return time.perf_counter() - t0


def main(quick: bool = False) -> None:
    configure_logging("error", "json", sys.stderr)
    n = 100_000 if quick else 1_000_000
    n_drain = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        d = Path(tmp)
        rss0 = rss_mb()
        samples: list[tuple[int, float]] = []
        rate = asyncio.run(bench_append(d / "big.db", n, samples))
        ref = bench_append_reference(d / "ref.db", n)
        print(
            f"outbox.append: {rate:,.0f} events/s durable (reference raw sqlite3 executemany {ref:,.0f} rows/s,"
            f" ratio {rate / ref:.2f}; bar >= 20,000)"
        )
        grow = [r for _, r in samples]
        print(
            f"outbox.rss_filling: {min(grow):.0f}..{max(grow):.0f} MB while filling to {n:,} events"
            f" (reference: interpreter with modules loaded {rss0:.0f} MB; bar < 100 MB, flat)"
        )
        size_mb = (d / "big.db").stat().st_size / 1e6
        t_open, backlog = asyncio.run(bench_restart(d / "big.db"))
        t_ref = sqlite_open_reference(d / "big.db")
        print(
            f"outbox.restart: {t_open * 1000:,.0f} ms open + first pending with {backlog:,} events backlog"
            f" ({size_mb:,.0f} MB file; reference raw sqlite3 open + first page {t_ref * 1000:,.1f} ms; bar < 2000 ms)"
        )
        with small_tmpfs(d / "small", 16 * 1024**2) as fs:
            if fs is None:
                print("outbox.append_at_disk_cap: skipped (mounting a 16 MiB tmpfs needs root)")
            else:
                batches = 40 if quick else 200
                ref_cap = reference_at_cap(fs, batches)  # first, and removed: the outbox gets the disk
                for f in fs.glob("ref.sqlite3*"):
                    f.unlink()
                at_cap, full, evicted = asyncio.run(bench_at_cap(fs, batches))
                print(
                    f"outbox.append_at_disk_cap: {at_cap:,.0f} events/s on a 16 MiB tmpfs, no max_bytes, evicting"
                    f" every batch (reference raw sqlite3 delete+insert {ref_cap:,.0f} rows/s, ratio"
                    f" {at_cap / ref_cap:.2f}; evicted {evicted})"
                )
                print(
                    f"outbox.append_full_disk: {full:,.0f} events/s after another writer took every free byte"
                    f" (file frozen, checkpoint per commit; reference raw sqlite3 delete+insert {ref_cap:,.0f} rows/s,"
                    f" ratio {full / ref_cap:.2f})"
                )
        broker = Broker(d)
        try:
            # RSS first: the paho reference below leaves its 100k queued messages' memory behind.
            rss: list[float] = []
            big_rate, _ = asyncio.run(
                bench_drain(d / "big.db", broker.port, n_drain, batched=True, rss=rss, limit_s=60)
            )
            print(
                f"outbox.rss_draining: {min(rss):.0f}..{max(rss):.0f} MB while draining from a {n:,}-event backlog"
                f" at {big_rate:,.0f} events/s (reference at start {rss0:.0f} MB; bar < 100 MB)"
            )
            single, msgs = asyncio.run(bench_drain(d / "drain1.db", broker.port, n_drain, batched=False))
            batched, msgs_b = asyncio.run(
                bench_drain(d / "drain2.db", broker.port, n_drain * 5 if not quick else n_drain * 2, batched=True)
            )
            payload = (
                b'{"v":1,"gateway_id":"gw-bench","seq":1,"event":'
                + make_events(1, 0)[0].model_dump_json().encode()
                + b"}"
            )
            ref_rate = bench_paho_reference(broker.port, n_drain, payload)
            print(
                f"uplink.drain: {single:,.0f} msgs/s QoS 1 one event per message, acked rows deleted"
                f" ({msgs:,} messages; reference raw paho threaded publish {ref_rate:,.0f} msgs/s,"
                f" ratio {single / ref_rate:.2f}; bar >= 5,000)"
            )
            print(
                f"uplink.drain_batched: {batched:,.0f} events/s in UplinkBatch of 100 ({msgs_b:,} messages;"
                f" reference raw paho {ref_rate:,.0f} msgs/s; bar >= 20,000 events/s)"
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    main("--quick" in sys.argv)
