"""Capture relay throughput: frames/s from a relay *process* (``Relay.forward``) over the Unix
``SOCK_SEQPACKET`` connection into the daemon's ``RelaySocket`` drained on an asyncio loop
(``add_reader``, as ``WifiRelaySource`` does) -- the production arrangement.

References measured in the same run:

* ``capture.relay_throughput``: the same sender process with bare blocking ``send`` on the same kind
  of connection into a plain blocking ``recv`` loop (what the relay framing, the decoding of the
  header and the event loop cost on top of the kernel). A busy 2.4 GHz channel gives a few thousand
  probe requests/s in monitor mode at most.
* ``capture.burst_kept``: 500 frames sent while the daemon's loop is busy (it reads nothing for
  the whole burst): how many arrive over the relay's connection, against an unconnected datagram
  socket (the relay's former transport), which keeps only ``net.unix.max_dgram_qlen`` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.capture.relay import Relay
from gateway.capture.wire import LINKTYPE_RADIOTAP, CapturedFrame
from gateway.sources.wifi import RelaySocket

FRAME_LEN = 256  # ~ a probe request with radiotap header and IEs

SENDER = """
import socket, sys, time
from pathlib import Path
from gateway.capture.relay import Relay
from gateway.capture.wire import LINKTYPE_RADIOTAP
path, n, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "raw"
frame = bytes(range(256))[:{n_bytes}]
retries = 0
if raw:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(path)
    for _ in range(n):
        s.send(frame)  # blocking: paced by the reader
else:
    r = Relay(Path(path), reconnect_s=0.0)
    for _ in range(n):
        while not r.forward(frame, LINKTYPE_RADIOTAP, channel=6):  # the bench retries; production drops
            retries += 1
            time.sleep(0.0001)
    r.close()
print(retries)
""".replace("{n_bytes}", str(FRAME_LEN))


def _sender(path: Path, n: int, raw: bool) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SENDER, str(path), str(n), "raw" if raw else "relay"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )


def _reference(path: Path, n: int) -> float:
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    lst.bind(str(path))
    lst.listen(1)
    proc = _sender(path, n, raw=True)
    rx, _ = lst.accept()
    rx.recv(65536)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        rx.recv(65536)
    dt = time.perf_counter() - t0
    proc.communicate(timeout=120)
    rx.close()
    lst.close()
    return (n - 1) / dt


async def _relay(path: Path, n: int) -> tuple[float, int]:
    rx = RelaySocket(path)
    rx.open()
    assert rx.listener is not None
    loop = asyncio.get_running_loop()
    got = 0
    t0 = 0.0
    done = asyncio.Event()
    conn_fd: list[int] = []

    def readable() -> None:
        nonlocal got, t0
        for m in rx.read(512):
            if type(m) is CapturedFrame:
                if got == 0:
                    t0 = time.perf_counter()
                got += 1
        if got >= n:
            done.set()

    def accept() -> None:
        conn = rx.accept()
        if conn is not None:
            conn_fd.append(conn.fileno())
            loop.add_reader(conn.fileno(), readable)

    loop.add_reader(rx.listener.fileno(), accept)
    proc = _sender(path, n, raw=False)
    await asyncio.wait_for(done.wait(), 300)
    dt = time.perf_counter() - t0
    out, _ = proc.communicate(timeout=60)
    for fd in conn_fd:
        loop.remove_reader(fd)
    loop.remove_reader(rx.listener.fileno())
    rx.close()
    return (n - 1) / dt, int(out.strip() or 0)


def _burst(d: Path, n: int = 500) -> tuple[int, int, int]:
    """Frames of one burst that arrive when the reader is busy for the whole burst."""
    path = d / "burst.sock"
    rx = RelaySocket(path)
    rx.open()
    relay = Relay(path)
    for _ in range(n):
        relay.forward(b"x" * FRAME_LEN, LINKTYPE_RADIOTAP)
    rx.accept()
    kept = sum(1 for _ in rx.read(n + 10))
    relay.close()
    rx.close()
    dpath = d / "dgram.sock"
    drx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    drx.bind(str(dpath))
    drx.setblocking(False)
    tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    tx.setblocking(False)
    for _ in range(n):
        with contextlib.suppress(BlockingIOError):
            tx.sendto(b"x" * (FRAME_LEN + 20), str(dpath))
    dkept = 0
    while True:
        try:
            drx.recv(65536)
        except BlockingIOError:
            break
        dkept += 1
    tx.close()
    drx.close()
    return kept, dkept, n


def main(quick: bool = False) -> None:
    n = 50_000 if quick else 300_000
    with tempfile.TemporaryDirectory() as d:
        ref = _reference(Path(d) / "ref.sock", n)
        rate, retries = asyncio.run(_relay(Path(d) / "relay.sock", n))
        kept, dkept, burst = _burst(Path(d))
    qlen = Path("/proc/sys/net/unix/max_dgram_qlen")
    print(
        f"capture.relay_throughput: {rate:,.0f} frames/s of {FRAME_LEN} B "
        f"(reference raw seqpacket send/recv loop {ref:,.0f}/s, ratio {rate / ref:.2f}; sender busy retries {retries})"
    )
    print(
        f"capture.burst_kept: {kept} of {burst} frames sent while the daemon reads nothing arrive "
        f"(reference unconnected datagram socket: {dkept}; net.unix.max_dgram_qlen "
        f"{qlen.read_text().strip() if qlen.exists() else '?'})"
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
