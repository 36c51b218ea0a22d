"""Capture relay throughput: frames/s from a relay *process* (Relay.forward) over the Unix datagram
socket into CaptureReceiver.recv_batch on an asyncio loop -- the production arrangement.

Reference measured in the same run: the same sender process with bare ``sendto`` into a plain
blocking ``recv`` loop (what the relay framing and the event loop cost on top of the kernel). A
busy 2.4 GHz channel gives a few thousand frames/s in monitor mode.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gateway.capture.relay import CaptureReceiver

FRAME_LEN = 256  # ~ a probe request with radiotap header and IEs

SENDER = """
import socket, sys, time
from gateway.capture.relay import Relay, LINKTYPE_RADIOTAP
path, n, raw = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "raw"
frame = bytes(range(256))[:{n_bytes}]
retries = 0
if raw:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    for _ in range(n):
        s.sendto(frame, path)  # blocking: paced by the reader
else:
    r = Relay(__import__("pathlib").Path(path))
    for _ in range(n):
        while not r.forward(frame, LINKTYPE_RADIOTAP):  # the bench retries; production drops
            retries += 1
            time.sleep(0.0001)
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
    rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    rx.bind(str(path))
    proc = _sender(path, n, raw=True)
    rx.recv(65536)
    t0 = time.perf_counter()
    for _ in range(n - 1):
        rx.recv(65536)
    dt = time.perf_counter() - t0
    proc.communicate(timeout=60)
    rx.close()
    return (n - 1) / dt


async def _relay(path: Path, n: int) -> tuple[float, int]:
    async with CaptureReceiver(path) as rx:
        proc = _sender(path, n, raw=False)
        got = len(await rx.recv_batch())
        t0 = time.perf_counter()
        while got < n:
            got += len(await asyncio.wait_for(rx.recv_batch(), 10))
        dt = time.perf_counter() - t0
        out, _ = proc.communicate(timeout=60)
    return (n - 1) / dt, int(out.strip() or 0)


def main(quick: bool = False) -> None:
    n = 50_000 if quick else 500_000
    with tempfile.TemporaryDirectory() as d:
        ref = _reference(Path(d) / "ref.sock", n)
        rate, retries = asyncio.run(_relay(Path(d) / "relay.sock", n))
    print(
        f"capture.relay_throughput: {rate:,.0f} frames/s of {FRAME_LEN} B "
        f"(reference raw sendto/recv loop {ref:,.0f}/s, ratio {rate / ref:.2f}; sender busy retries {retries})"
    )


if __name__ == "__main__":
    main("--quick" in sys.argv)
