"""Status page: time to an interactive map with 500 devices, and the web server's CPU cost.

* ``status.page_interactive``: headless Chromium navigates to the page (already logged in) and the
  page's own performance mark ``status-map-rendered`` (layout drawn + 500 dots + panels) is read
  relative to navigation start; median of several loads. Reference in the same run: the plain
  login page (static HTML + one script) to its load event. Bar: < 1000 ms.
* ``status.sse_cpu``: CPU share of the server process (``gateway status demo`` in its own process,
  read from /proc) while one client follows the live stream, minus the same process idle.
  Three set-ups: (a) the real ``Daemon`` (simulator source at 1x -> pipeline -> SQLite outbox ->
  uplink to a local mosquitto) with the status server embedded via ``DaemonStatusProvider`` - the
  reference is that daemon's own CPU without page clients; (b) the store simulator + pipeline
  driven by ``gateway status demo --sim``; (c) a synthetic crowd of 500 dots (the worst case for
  the stream). Bar: the stream adds < 5 % (of the daemon's CPU, and of one core).
* ``status.stream_dots_cpu``: in process, deterministic: CPU per second of the daemon provider +
  stream hub turning 500 fixes a second into the live-map payload (two stream intervals per fix
  tick), for fixes with a tracker zone and without one (zone found from the polygons), beside the
  reference of serialising the same dots with ``json.dumps`` alone.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
USER, PASSWORD = "bench", "bench-password-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"status server not listening on {port}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc (fields 14, 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


class Demo:
    def __init__(self, cred: Path, *extra: str, cmd: list[str] | None = None) -> None:
        self.port = free_port()
        base = cmd or [sys.executable, "-m", "gateway", "status", "demo"]
        self.proc = subprocess.Popen(
            [*base, "--credential", str(cred), "--port", str(self.port), *extra],
            env=env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        wait_port(self.port)
        self.base = f"http://127.0.0.1:{self.port}"

    def login_cookie(self) -> str:
        req = urllib.request.Request(
            self.base + "/login",
            data=json.dumps({"user": USER, "password": PASSWORD}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:  # loopback only
            cookie = r.headers["Set-Cookie"].split(";", 1)[0]
        return str(cookie)

    def cpu_share(self, seconds: float) -> float:
        c0, t0 = cpu_seconds(self.proc.pid), time.monotonic()
        time.sleep(seconds)
        return (cpu_seconds(self.proc.pid) - c0) / (time.monotonic() - t0)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def sse_cpu(
    cred: Path, label: str, window: float, *extra: str, cmd: list[str] | None = None, settle_s: float = 3.0
) -> None:
    """Alternate idle / streaming windows (A B A B A) and compare each streaming window with the
    mean of its idle neighbours: the simulated store fills up over the run, so the daemon's own
    load drifts, and a plain before/after comparison would charge that drift to the web server."""
    demo = Demo(cred, *extra, cmd=cmd)
    idle: list[float] = []
    added: list[float] = []
    try:
        time.sleep(settle_s)  # start-up settles (and the simulated store fills)
        cookie = demo.login_cookie()
        idle.append(demo.cpu_share(window))
        for _ in range(2):
            client = subprocess.Popen(
                ["curl", "-sN", "-H", f"Cookie: {cookie}", demo.base + "/api/stream", "-o", "/dev/null"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                time.sleep(0.3)
                streaming = demo.cpu_share(window)
            finally:
                client.terminate()
                client.wait(5)
            time.sleep(0.3)
            idle.append(demo.cpu_share(window))
            added.append(streaming - (idle[-2] + idle[-1]) / 2)
    finally:
        demo.close()
    add, base = statistics.mean(added), statistics.mean(idle)
    rel = f"{100 * add / base:+.0f} % of it" if base > 0.005 else "idle ~0"
    print(
        f"status.sse_cpu[{label}]: {100 * add:+.2f} % of one core with one live-map client "
        f"(reference: same process without clients {100 * base:.2f} % -> {rel}; bar < 5 %)",
        flush=True,
    )


def page_interactive(cred: Path, loads: int) -> None:
    from selenium import webdriver

    demo = Demo(cred, "--devices", "500")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    with tempfile.TemporaryDirectory() as profile:
        for arg in [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1400,1000",
            f"--user-data-dir={profile}",
        ]:
            opts.add_argument(arg)
        driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(20)
            ref, page = [], []
            for _ in range(loads):
                driver.get(demo.base + "/login")
                ref.append(
                    driver.execute_script(
                        "const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd || n.duration;"
                    )
                )
            driver.find_element("id", "user").send_keys(USER)
            driver.find_element("id", "password").send_keys(PASSWORD)
            driver.find_element("id", "login-button").click()
            deadline = time.monotonic() + 20
            while driver.execute_script("return document.body.dataset.ready") != "1":
                if time.monotonic() > deadline:
                    raise TimeoutError("page never became ready")
                time.sleep(0.02)
            for _ in range(loads):
                driver.get(demo.base + "/")
                deadline = time.monotonic() + 20
                while True:
                    t = driver.execute_script(
                        "const m = performance.getEntriesByName('status-map-rendered');"
                        "return m.length ? m[0].startTime : null;"
                    )
                    if t is not None:
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError("map never rendered")
                    time.sleep(0.02)
                n = driver.execute_script("return document.getElementById('map').dataset.dots")
                assert n == "500", n
                page.append(float(t))
        finally:
            driver.quit()
            demo.close()
    med, ref_med = statistics.median(page), statistics.median(ref)
    print(
        f"status.page_interactive: {med:.0f} ms navigation -> map with 500 dots (median of {loads}, max "
        f"{max(page):.0f} ms; reference login page load {ref_med:.0f} ms, ratio {med / ref_med:.1f}; bar < 1000 ms)",
        flush=True,
    )


def serve_daemon(argv: list[str]) -> None:
    """Child process: the real Daemon with the status server embedded (as ``gateway run`` will)."""
    import argparse
    import asyncio

    from gateway.config import StatusSettings, load_settings
    from gateway.log import configure_logging
    from gateway.runtime.daemon import Daemon, load_store_layout
    from gateway.runtime.status_provider import DaemonStatusProvider
    from gateway.status.server import StatusServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--credential", type=Path)
    ap.add_argument("--port", type=int)
    ap.add_argument("--mqtt-port", type=int)
    ap.add_argument("--state-dir")
    a = ap.parse_args(argv)
    configure_logging("warning", "json")
    settings = load_settings(
        paths={"state_dir": a.state_dir},
        simulator={"enabled": True, "speed": 1.0, "seed": 2, "shoppers_per_hour": 7200},
        mqtt={"host": "127.0.0.1", "port": a.mqtt_port, "tls": False},
        status={"enabled": False},
    )
    daemon = Daemon(settings, load_store_layout(settings))

    async def run() -> None:
        server = StatusServer(
            DaemonStatusProvider(daemon), StatusSettings(bind=["127.0.0.1"], port=a.port), a.credential
        )
        task = asyncio.create_task(daemon.run())
        await server.start()
        try:
            await task
        finally:
            await server.stop()

    asyncio.run(run())


def daemon_cpu(cred: Path, window: float, td: Path, settle_s: float) -> None:
    mqtt_port = free_port()
    conf = td / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen(
        ["/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(mqtt_port)
        cmd = [
            sys.executable,
            "-m",
            "bench.bench_status",
            "--serve-daemon",
            "--mqtt-port",
            str(mqtt_port),
            "--state-dir",
            str(td / "state"),
        ]
        sse_cpu(cred, "real daemon, simulator 1x", window, cmd=cmd, settle_s=settle_s)
    finally:
        broker.terminate()
        broker.wait(5)


def stream_dots_cpu(ticks: int) -> None:
    from types import SimpleNamespace

    import numpy as np

    from gateway.layout import load_layout
    from gateway.models import Fix
    from gateway.runtime.status_provider import DaemonStatusProvider
    from gateway.status.app import StreamHub, dumps

    layout = load_layout(REPO / "hardware" / "layouts" / "demo-store.toml")
    rng = np.random.default_rng(0)
    frames = [(rng.uniform(0, 30, 500).tolist(), rng.uniform(0, 20, 500).tolist()) for _ in range(ticks)]
    for zoned in (True, False):
        fake = SimpleNamespace(layout=layout, runtime=SimpleNamespace(last_fixes=None))
        hub = StreamHub(DaemonStatusProvider(fake), 0.5, 2.0)  # type: ignore[arg-type]
        cpu = ref = 0.0
        for tick, (xs, ys) in enumerate(frames):
            zone = "grocery" if zoned else None
            fixes = [Fix(100.0 + tick, f"d{i}", x, y, 1.0, zone) for i, (x, y) in enumerate(zip(xs, ys, strict=True))]
            c = time.process_time()
            fake.runtime.last_fixes = fixes
            hub.devices_event(float(tick))
            hub.devices_event(tick + 0.5)
            cpu += time.process_time() - c
            c = time.process_time()
            dots = [{"subject": f.device, "x": f.x, "y": f.y, "sigma_m": f.sigma_m, "zone": f.zone} for f in fixes]
            dumps({"ts": 0.0, "devices": dots})
            ref += time.process_time() - c
        print(
            f"status.stream_dots_cpu[500 dots/s, {'tracker zones' if zoned else 'zones from polygons'}]: "
            f"{100 * cpu / ticks:.2f} % of one core (reference json.dumps of the same dots "
            f"{100 * ref / ticks:.2f} %, ratio {cpu / ref:.1f})",
            flush=True,
        )


def main(quick: bool = False) -> None:
    sys.path.insert(0, str(REPO))
    stream_dots_cpu(20 if quick else 100)
    from gateway.status.auth import write_credential

    with tempfile.TemporaryDirectory() as td:
        cred = Path(td) / "cred.json"
        write_credential(cred, USER, PASSWORD)
        page_interactive(cred, 3 if quick else 10)
        window = 2.0 if quick else 10.0
        daemon_cpu(cred, window, Path(td), settle_s=6.0 if quick else 10.0)
        if not quick:  # the real daemon above is the reference that matters; this one is for comparison
            sse_cpu(cred, "sim pipeline 1x", window, "--sim", "--speed", "1", "--rate", "600", "--warmup", "60")
        sse_cpu(cred, "500 synthetic dots", window, "--devices", "500")


if __name__ == "__main__":
    if "--serve-daemon" in sys.argv:
        serve_daemon([a for a in sys.argv[1:] if a != "--serve-daemon"])
    else:
        main("--quick" in sys.argv)
