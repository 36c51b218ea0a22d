"""The technician page in a real headless Chromium (selenium), served by the real StatusServer on
127.0.0.1, fed by the store simulator through the real pipeline (pseudonyms -> localizer ->
presence): login + throttling, live dots that follow the localizer, actions (opt-out removes a
phone from the map), CSRF, XSS payloads shown as text, screenshot."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from gateway.config import StatusSettings, load_settings
from gateway.demo.status_sim import SimPipelineProvider
from gateway.status.metrics import GatewayMetrics
from gateway.status.server import StatusServer
from tests.unit.status.support import (
    PASSWORD,
    USER,
    XSS_CAMPAIGN,
    XSS_STORE,
    XSS_ZONE,
    write_test_credential,
    xss_campaigns,
    xss_layout,
)

SEED = 5

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")


class PausableClock:
    """Wall-clock time for the simulation that the test can stop, to compare page and provider."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offset = 0.0
        self._paused_at: float | None = None

    def __call__(self) -> float:
        with self._lock:
            return self._paused_at if self._paused_at is not None else time.monotonic() - self._offset

    def pause(self) -> None:
        now = self()
        with self._lock:
            self._paused_at = now

    def resume(self) -> None:
        with self._lock:
            assert self._paused_at is not None
            self._offset = time.monotonic() - self._paused_at
            self._paused_at = None


class ServerThread:
    """The status server on its own event loop thread (selenium's API is synchronous)."""

    def __init__(self, provider: SimPipelineProvider, settings: StatusSettings, credential: Path) -> None:
        self.provider = provider
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="status-server", daemon=True)
        self.thread.start()
        self.server = StatusServer(provider, settings, credential, metrics=GatewayMetrics())
        self.call(self.server.start())
        self.base = f"http://127.0.0.1:{self.server.bound_ports[0]}"

    def call(self, coro: Any, timeout: float = 10) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def run(self, fn: Callable[[], T]) -> T:
        async def wrap() -> T:
            return fn()

        return self.call(wrap())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def make_driver(tmp_path: Path) -> WebDriver:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium / chromium-driver are not installed")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1700",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ]:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))


def wait_for(cond: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def dom_dots(driver: WebDriver) -> dict[str, tuple[float, float]]:
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('#layer-dots circle.dot'))"
        ".map(c => [c.getAttribute('data-subject'), +c.getAttribute('data-x'), +c.getAttribute('data-y')]);"
    )
    return {r[0]: (r[1], r[2]) for r in rows}


def text(driver: WebDriver, css: str) -> str:
    """Rendered text of an element, read in one script call (panels are rebuilt on every update)."""
    js = "const e = document.querySelector(arguments[0]); return e ? (e.innerText ?? e.textContent) : '';"
    return str(driver.execute_script(js, css))


def http_status(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # loopback only
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def find_phone_on_map(p: SimPipelineProvider, shown: set[str]) -> tuple[str, str]:
    """(current MAC, subject) of a simulated phone whose dot is on the map and stays a while."""
    kr = p.keyring
    for pid, person in sorted(p.sim.people.items()):
        if person.kind == "fixture" or person.t_end < p.sim_now + 30:
            continue
        subject = kr.pseudonym(f"sim-{SEED}-{pid}", p.sim_now)  # the simulator's linked identity
        if subject in shown:
            return p.sim.device_id(person, p.sim_now), subject
    raise AssertionError("no simulated phone on the map")


@pytest.fixture
def clock() -> PausableClock:
    return PausableClock()


@pytest.fixture
def served(tmp_path: Path, clock: PausableClock) -> Iterator[ServerThread]:
    cred = tmp_path / "cred.json"
    write_test_credential(cred)
    settings = StatusSettings(
        bind=["127.0.0.1"],
        port=0,
        stream_interval_s=0.2,
        status_interval_s=0.5,
        login_free_attempts=3,
        login_lockout_base_s=1.0,
        loop_lag_interval_s=0.5,
    )
    sim = load_settings(simulator={"seed": SEED, "speed": 2.0, "shoppers_per_hour": 1800, "link_rotations": True})
    provider = SimPipelineProvider(sim, xss_layout(), clock=clock, campaigns=xss_campaigns(), warmup_s=45)
    st = ServerThread(provider, settings, cred)
    try:
        yield st
    finally:
        st.close()


def test_status_page_in_chromium(served: ServerThread, clock: PausableClock, tmp_path: Path) -> None:
    base = served.base
    # -- no access without login (plain HTTP, no cookie) --------------------------------------
    assert http_status(base + "/api/status") == 401
    assert http_status(base + "/api/devices") == 401
    assert http_status(base + "/api/actions/test-event", b"{}", {"Content-Type": "application/json"}) == 401
    assert http_status(base + "/healthz") == 200

    driver = make_driver(tmp_path)
    try:
        driver.set_page_load_timeout(15)
        driver.get(base + "/")
        wait_for(lambda: driver.current_url.endswith("/login"), what="redirect to /login")
        assert driver.title.startswith(XSS_STORE)  # the hostile store name is the title, as text

        # -- throttling: 3 free failures, then a 1 s lockout that refuses even the right password
        def attempt(pw: str) -> str:
            driver.find_element(By.ID, "user").clear()
            driver.find_element(By.ID, "user").send_keys(USER)
            driver.find_element(By.ID, "password").clear()
            driver.find_element(By.ID, "password").send_keys(pw)
            driver.execute_script("document.getElementById('login-error').textContent = ''")
            driver.find_element(By.ID, "login-button").click()
            return str(
                wait_for(
                    lambda: driver.current_url.rstrip("/") == base or text(driver, "#login-error"),
                    what="login outcome",
                )
            )

        for _ in range(3):
            assert attempt("wrong-password") == "invalid user or password"
        assert attempt("wrong-password") == "invalid user or password - wait 1 s"
        assert attempt(PASSWORD).startswith("too many attempts")
        time.sleep(1.1)
        attempt(PASSWORD)
        wait_for(lambda: driver.execute_script("return document.body.dataset.ready === '1'"), what="map ready")
        assert driver.current_url.rstrip("/") == base
        early = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert early, "the refused logins (401/429) should show in the console"
        assert all("/login" in m and ("401" in m or "429" in m) for m in early), early

        # -- live map: the localizer's dots, and they move -----------------------------------
        def updates() -> int:
            return int(driver.find_element(By.ID, "map").get_attribute("data-updates") or 0)

        first = wait_for(lambda: dom_dots(driver), what="dots")
        assert len(first) >= 10
        u0 = updates()
        wait_for(lambda: updates() >= u0 + 5, what="five stream updates")
        later = dom_dots(driver)
        common = [k for k in first if k in later]
        moved = [k for k in common if first[k] != later[k]]
        assert len(moved) >= len(common) // 2, f"only {len(moved)} of {len(common)} dots moved"
        # freeze the simulation: the page must then show exactly the localizer's current fixes
        clock.pause()
        u1 = updates()
        wait_for(lambda: updates() >= u1 + 2, what="two updates while frozen")
        truth = {d["subject"]: (d["x"], d["y"]) for d in served.run(served.provider.devices)}
        assert dom_dots(driver) == truth
        clock.resume()
        # per-sensor last-heard badges and zone occupancy are filled from the status stream
        wait_for(
            lambda: text(driver, "[data-sensor='gw'] .sensor-badge") != "",
            what="sensor badge",
        )
        assert text(driver, "[data-sensor='gw'] .sensor-badge").endswith(" s")
        occupancy = driver.execute_script(
            "return Array.from(document.querySelectorAll('#layer-zones .zone-occ')).map(e => e.textContent)"
        )
        assert sum(int(t.split()[0]) for t in occupancy if t) >= 1

        # -- health panels ----------------------------------------------------------------------
        assert "simulated" in text(driver, "#sources")
        assert "running" in text(driver, "#sources")
        assert "not connected (simulation)" in text(driver, "#uplink")

        # -- XSS payloads are shown as text ---------------------------------------------------
        labels = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#layer-zones .zone-name")]
        assert XSS_ZONE in labels
        wait_for(lambda: XSS_CAMPAIGN in text(driver, "#campaigns"), what="campaign row")
        assert driver.execute_script("return window.__xss === undefined")
        assert driver.find_elements(By.TAG_NAME, "img") == []
        assert not driver.find_elements(By.CSS_SELECTOR, "main script, #campaigns script, svg script")

        # -- actions: opting out a phone's MAC removes its dot, for good -----------------------
        mac, victim = served.run(lambda: find_phone_on_map(served.provider, set(dom_dots(driver))))
        driver.find_element(By.ID, "optout-id").send_keys(mac.lower())
        driver.find_element(By.CSS_SELECTOR, "#optout-form button[type=submit]").click()
        wait_for(lambda: "opt-out recorded" in text(driver, "#action-result"), what="opt-out")
        wait_for(lambda: victim not in dom_dots(driver), what="opted-out dot to disappear")
        u2 = updates()
        wait_for(lambda: updates() >= u2 + 8, what="more updates")
        assert victim not in dom_dots(driver)
        assert served.run(lambda: served.provider.identity.stats.dropped_optout) > 0
        # the identifier's keyed digests (its forms, and the identity it was seen linked to)
        digests = served.run(lambda: served.provider.identity.optout_count)
        assert digests >= 2
        wait_for(lambda: f"opt-outs\n{digests}" in text(driver, "#overview"), what="opt-out count")
        # the pipeline panel (this provider runs the pipeline inline: no queue or thread to show)
        assert text(driver, "#pipeline").startswith("queued\n-\nwait\n- (longest -)")
        driver.find_element(By.CSS_SELECTOR, "button[data-action='test-event']").click()
        wait_for(lambda: text(driver, "#action-result") == "test event queued", what="test event")
        wait_for(lambda: "heartbeat" in text(driver, "#events"), what="test event listed")
        driver.find_element(By.CSS_SELECTOR, "button[data-action='restart-scanner']").click()
        wait_for(lambda: "recoveries: 1" in text(driver, "#action-result"), what="restart")

        # -- CSRF: the page's own token works, a request without it is refused ----------------
        post_js = (
            "const done = arguments[arguments.length - 1];"
            "const h = {'Content-Type': 'application/json'}; if (arguments[0]) h['X-CSRF-Token'] = arguments[0];"
            "fetch('/api/actions/reload-config', {method: 'POST', headers: h, body: '{}'})"
            ".then(r => done(r.status), e => done(String(e)));"
        )
        token = driver.find_element(By.CSS_SELECTOR, "meta[name=csrf-token]").get_attribute("content")
        assert driver.execute_async_script(post_js, "") == 403
        assert driver.execute_async_script(post_js, "forged-token") == 403
        assert driver.execute_async_script(post_js, token) == 200
        # the session cookie is invisible to scripts (HttpOnly)
        assert "gw_session" not in driver.execute_script("return document.cookie")

        # -- coverage overlay -----------------------------------------------------------------
        driver.find_element(By.ID, "show-coverage").click()
        wait_for(
            lambda: len(driver.find_elements(By.CSS_SELECTOR, "#layer-coverage rect")) == 30 * 20, what="coverage grid"
        )

        # -- no CSP violations, no script errors ----------------------------------------------
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        errors = [m for m in errors if "/api/actions/reload-config" not in m]  # the two refused POSTs above
        assert errors == []

        shot = tmp_path / "status-page.png"
        driver.find_element(By.ID, "action-result")  # page settled
        time.sleep(0.3)
        assert driver.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":  # refresh docs/status-page.png on request only
            shutil.copyfile(shot, REPO / "docs" / "status-page.png")

        # -- logout ends the session ----------------------------------------------------------
        driver.find_element(By.ID, "logout").click()
        wait_for(lambda: driver.current_url.endswith("/login"), what="back to login")
        status = driver.execute_async_script(
            "const done = arguments[0]; fetch('/api/status').then(r => done(r.status));"
        )
        assert status == 401
    finally:
        driver.quit()
    metrics = served.server.metrics.render().decode()
    assert 'gateway_status_logins_total{result="throttled"} 1.0' in metrics
    assert 'gateway_status_logins_total{result="failure"} 4.0' in metrics
