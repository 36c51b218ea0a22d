"""StatusServer embedding: one site per bind address, port 0, prompt stop with open streams,
loop-lag probe, clean failure on a taken port; the ``gateway status demo`` command."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
from pathlib import Path

import aiohttp
import pytest

from gateway.config import StatusSettings
from gateway.status.metrics import GatewayMetrics
from gateway.status.server import StatusServer
from tests.conftest import gateway_cmd, gateway_env
from tests.unit.status.support import PASSWORD, USER, make_provider


async def test_binds_each_address_and_stops_promptly_with_open_streams(credential: Path) -> None:
    metrics = GatewayMetrics()
    settings = StatusSettings(bind=["127.0.0.1", "::1"], port=0, stream_interval_s=0.1, loop_lag_interval_s=0.05)
    server = StatusServer(make_provider(n=5), settings, credential, metrics=metrics)
    await server.start()
    assert len(server.bound_ports) == 2
    assert all(p > 0 for p in server.bound_ports)
    hosts = {h for h, _p in server.addresses}
    assert hosts == {"127.0.0.1", "::1"}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        for host, port in server.addresses:
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            async with s.get(url + "/healthz") as r:
                assert r.status == 200
        host, port = server.addresses[0]
        base = f"http://{host}:{port}"
        async with s.post(base + "/login", json={"user": USER, "password": PASSWORD}) as r:
            assert r.status == 200
        stream = await s.get(base + "/api/stream")
        assert stream.status == 200
        await stream.content.readline()
        await asyncio.sleep(0.3)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await server.stop()
        assert loop.time() - t0 < 2.0  # the stream ended at once, not after the shutdown timeout
        await asyncio.wait_for(stream.content.read(), 5)  # the server closed the stream: EOF
        assert stream.content.at_eof()
        stream.release()
    assert server.bound_ports == []
    assert "gateway_event_loop_lag_distribution_seconds_count" in metrics.render().decode()
    count = re.search(rb"gateway_event_loop_lag_distribution_seconds_count (\S+)", metrics.render())
    assert count is not None and float(count.group(1)) >= 3


async def test_taken_port_fails_cleanly(credential: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = StatusServer(make_provider(n=2), StatusSettings(bind=["127.0.0.1"], port=port), credential)
        with pytest.raises(OSError):
            await server.start()
        assert server.app is None
        await server.stop()  # idempotent


@pytest.mark.integration
def test_demo_command_serves_the_page(credential: Path) -> None:
    proc = subprocess.Popen(
        gateway_cmd("status", "demo", "--credential", str(credential), "--port", "0", "--devices", "7"),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=gateway_env(),
    )
    try:
        assert proc.stdout is not None
        m = None
        for _ in range(20):  # a few log lines may come first
            m = re.search(r"http://127\.0\.0\.1:(\d+)/", proc.stdout.readline())
            if m:
                break
        assert m

        async def check() -> None:
            base = f"http://127.0.0.1:{m.group(1)}"
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                async with s.get(base + "/api/devices") as r:
                    assert r.status == 401
                async with s.post(base + "/login", json={"user": USER, "password": PASSWORD}) as r:
                    assert r.status == 200
                async with s.get(base + "/api/devices") as r:
                    assert len((await r.json())["devices"]) == 7

        asyncio.run(check())
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
