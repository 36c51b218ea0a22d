"""The status web app over aiohttp's real test server: access control, CSRF, throttling,
headers, escaping, actions and the event stream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.status.app import AUTH, CSP, MAX_PENDING_LOGINS
from gateway.status.metrics import GatewayMetrics
from tests.unit.status.support import (
    PASSWORD,
    USER,
    XSS_STORE,
    FakeClock,
    login,
    make_provider,
    status_client,
)

PROTECTED_GET = ["/api/session", "/api/layout", "/api/status", "/api/devices", "/api/coverage", "/api/stream"]
POSTS = ["/api/actions/test-event", "/api/actions/optout", "/logout"]


async def test_nothing_without_login(credential: Path) -> None:
    async with status_client(credential) as c:
        r = await c.get("/", allow_redirects=False)
        assert r.status == 302
        assert r.headers["Location"] == "/login"
        for path in PROTECTED_GET:
            r = await c.get(path)
            assert r.status == 401, path
            assert (await r.json())["error"] == "login required"
        for path in POSTS:
            r = await c.post(path, json={"identifier": "02:00:00:00:00:01"})
            assert r.status == 401, path
        # a forged cookie is not a session
        assert (await c.get("/api/status", headers={"Cookie": "gw_session=" + "A" * 43})).status == 401
        # public endpoints
        assert (await c.get("/login")).status == 200
        assert (await c.get("/static/app.js")).status == 200
        assert (await c.get("/healthz")).status == 200


async def test_login_sets_strict_httponly_cookie(credential: Path) -> None:
    async with status_client(credential) as c:
        r = await c.post("/login", json={"user": USER, "password": PASSWORD})
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/" in cookie
        assert "Secure" not in cookie
        csrf = (await r.json())["csrf"]
        assert len(csrf) >= 40
        r = await c.get("/api/session")
        assert await r.json() == {"user": USER, "csrf": csrf}
        r = await c.get("/")
        assert r.status == 200
        assert f'<meta name="csrf-token" content="{csrf}">' in await r.text()
    async with status_client(credential, secure_cookie=True) as c:
        r = await c.post("/login", json={"user": USER, "password": PASSWORD})
        assert "Secure" in r.headers["Set-Cookie"]


async def test_login_rejections(credential: Path, tmp_path: Path) -> None:
    async with status_client(credential) as c:
        assert (await c.post("/login", json={"user": USER, "password": "wrong password"})).status == 401
        assert (await c.post("/login", json={"user": "root", "password": PASSWORD})).status == 401
        # a classic form post (what a cross-site form could send) is refused
        r = await c.post("/login", data={"user": USER, "password": PASSWORD})
        assert r.status == 415
        r = await c.post("/login", data=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status == 400
        r = await c.post("/login", json={"user": USER})
        assert r.status == 400
        r = await c.post("/login", json=["x"])
        assert r.status == 400
    # no credential file: nobody gets in, and nothing crashes
    async with status_client(tmp_path / "missing.json") as c:
        assert (await c.post("/login", json={"user": USER, "password": PASSWORD})).status == 401
    bad = tmp_path / "bad.json"
    bad.write_text('{"user": "tech", "hash": "plain"}')
    async with status_client(bad) as c:
        assert (await c.post("/login", json={"user": "tech", "password": "plain"})).status == 401


async def test_login_throttling_is_exponential_and_clears_on_success(credential: Path) -> None:
    clock = FakeClock()
    async with status_client(credential, clock=clock, login_free_attempts=2, login_lockout_base_s=2.0) as c:
        bad = {"user": USER, "password": "nope-nope"}
        r1 = await c.post("/login", json=bad)
        r2 = await c.post("/login", json=bad)
        assert (r1.status, r2.status) == (401, 401)
        assert (await r2.json())["retry_after"] == 0
        r3 = await c.post("/login", json=bad)
        assert r3.status == 401
        assert (await r3.json())["retry_after"] == 2.0
        # locked: even the right password is refused without being checked
        r = await c.post("/login", json={"user": USER, "password": PASSWORD})
        assert r.status == 429
        assert r.headers["Retry-After"] == "2"
        clock.advance(2.1)
        r4 = await c.post("/login", json=bad)
        assert (await r4.json())["retry_after"] == 4.0  # doubled
        clock.advance(3.0)
        assert (await c.post("/login", json={"user": USER, "password": PASSWORD})).status == 429
        clock.advance(1.1)
        assert (await c.post("/login", json={"user": USER, "password": PASSWORD})).status == 200
        # success cleared the record: a new failure starts from scratch
        r = await c.post("/login", json=bad)
        assert (await r.json())["retry_after"] == 0


async def test_csrf_token_required_on_every_post(credential: Path) -> None:
    async with status_client(credential) as c:
        csrf = await login(c)
        r = await c.post("/api/actions/test-event", json={})
        assert r.status == 403
        assert "CSRF" in (await r.json())["error"]
        r = await c.post("/api/actions/test-event", json={}, headers={"X-CSRF-Token": csrf[:-1] + "x"})
        assert r.status == 403
        r = await c.post("/logout", json={})
        assert r.status == 403
        # right token but foreign origin
        r = await c.post(
            "/api/actions/test-event", json={}, headers={"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
        )
        assert r.status == 403
        r = await c.post("/api/actions/test-event", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status == 200
        assert (await r.json())["ok"] is True
        # the same-origin header a browser sends is accepted
        origin = f"http://{c.host}:{c.port}"
        r = await c.post("/api/actions/test-event", json={}, headers={"X-CSRF-Token": csrf, "Origin": origin})
        assert r.status == 200
        # a token from another session is useless
        async with status_client(credential) as c2:
            other = await login(c2)
        assert other != csrf
        r = await c.post("/api/actions/test-event", json={}, headers={"X-CSRF-Token": other})
        assert r.status == 403


async def test_cross_origin_login_refused(credential: Path) -> None:
    async with status_client(credential) as c:
        r = await c.post("/login", json={"user": USER, "password": PASSWORD}, headers={"Origin": "http://evil.example"})
        assert r.status == 403
        assert "Set-Cookie" not in r.headers


async def test_security_headers_everywhere(credential: Path) -> None:
    async with status_client(credential) as c:
        await login(c)
        for path in ["/", "/login", "/static/app.js", "/api/status", "/nope", "/healthz", "/metrics"]:
            r = await c.get(path, allow_redirects=False)
            assert r.headers["Content-Security-Policy"] == CSP, path
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Referrer-Policy"] == "no-referrer"
        assert "'unsafe-inline'" not in CSP
        assert "default-src 'self'" in CSP
        assert (await c.get("/api/status")).headers["Cache-Control"] == "no-store"


async def test_pages_have_no_inline_script_or_style_and_escape_names(credential: Path) -> None:
    async with status_client(credential) as c:
        login_html = await (await c.get("/login")).text()
        await login(c)
        index_html = await (await c.get("/")).text()
    for page in (login_html, index_html):
        assert "<script>" not in page  # every script has a src
        assert "style=" not in page
        assert "<style" not in page
        assert XSS_STORE not in page
        assert "&lt;/title&gt;&lt;script&gt;window.__xss=3&lt;/script&gt;&quot;Shop" in page
    static = Path(__file__).parents[3] / "gateway" / "status" / "static"
    for name in ["app.js", "login.js"]:
        js = (static / name).read_text()
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", 'setAttribute("style']:
            assert sink not in js, (name, sink)


async def test_api_payloads(credential: Path) -> None:
    async with status_client(credential) as c:
        await login(c)
        lay = await (await c.get("/api/layout")).json()
        assert lay["store"]["width_m"] == 30.0
        assert len(lay["sensors"]) == 12
        devs = await (await c.get("/api/devices")).json()
        assert len(devs["devices"]) == 30
        d = devs["devices"][0]
        assert set(d) == {"subject", "x", "y", "sigma_m", "zone"}
        assert ":" not in d["subject"]  # a pseudonym, not a MAC
        status = await (await c.get("/api/status")).json()
        for key in [
            "version",
            "uptime_s",
            "sources",
            "sensors_last_heard",
            "uplink",
            "outbox",
            "disk",
            "clock",
            "recent_events",
            "campaigns",
            "actors",
            "zone_occupancy",
        ]:
            assert key in status, key
        assert sum(status["zone_occupancy"].values()) <= 30
        cov = await (await c.get("/api/coverage")).json()
        assert cov["grid"]["nx"] == 30
        assert cov["grid"]["ny"] == 20


async def test_actions(credential: Path) -> None:
    provider = make_provider(n=5)
    async with status_client(credential, provider=provider) as c:
        csrf = await login(c)
        h = {"X-CSRF-Token": csrf}
        r = await c.post("/api/actions/restart-scanner", json={}, headers=h)
        assert (await r.json())["message"] == "scanner restarted (recoveries: 1)"
        r = await c.post("/api/actions/reload-config", headers=h)
        assert r.status == 200
        r = await c.post("/api/actions/self-destruct", json={}, headers=h)
        assert r.status == 404
        for bad in [{}, {"identifier": ""}, {"identifier": "x" * 65}, {"identifier": 5}]:
            r = await c.post("/api/actions/optout", json=bad, headers=h)
            assert r.status == 400, bad
        r = await c.post("/api/actions/optout", data=b"identifier=x", headers=h)
        assert r.status == 415
        before = {d["subject"] for d in (await (await c.get("/api/devices")).json())["devices"]}
        r = await c.post("/api/actions/optout", json={"identifier": "02:00:00:00:00:03"}, headers=h)
        body = await r.json()
        assert body["ok"] is True
        assert "02:00" not in body["message"]  # the identifier is never echoed
        after = {d["subject"] for d in (await (await c.get("/api/devices")).json())["devices"]}
        assert len(before) == 5
        assert len(after) == 4
        assert after < before
        status = await (await c.get("/api/status")).json()
        assert status["optouts"] == 1
        assert status["extra"]["reloads"] == 1


async def test_session_idle_expiry_and_logout(credential: Path) -> None:
    clock = FakeClock()
    async with status_client(credential, clock=clock, session_idle_s=60, session_ttl_s=600) as c:
        csrf = await login(c)
        clock.advance(50)
        assert (await c.get("/api/status")).status == 200
        clock.advance(50)  # 50 s since last use: still alive
        assert (await c.get("/api/status")).status == 200
        clock.advance(61)
        assert (await c.get("/api/status")).status == 401
        csrf = await login(c)
        r = await c.post("/logout", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status == 200
        assert (await c.get("/api/status")).status == 401
        csrf = await login(c)
        for _ in range(10):
            clock.advance(55)
            assert (await c.get("/api/status")).status == 200
        clock.advance(55)
        assert (await c.get("/api/status")).status == 401  # absolute lifetime (600 s) reached


async def test_login_replaces_previous_session(credential: Path) -> None:
    async with status_client(credential) as c:
        await login(c)
        old = c.session.cookie_jar.filter_cookies(c.make_url("/"))["gw_session"].value
        await login(c)
        new = c.session.cookie_jar.filter_cookies(c.make_url("/"))["gw_session"].value
        assert old != new
        c.session.cookie_jar.clear()
        assert (await c.get("/api/status", headers={"Cookie": f"gw_session={old}"})).status == 401
        assert (await c.get("/api/status", headers={"Cookie": f"gw_session={new}"})).status == 200


async def _read_event(resp: Any, name: str, limit: int = 50) -> dict[str, Any]:
    current = None
    for _ in range(limit):
        line = (await asyncio.wait_for(resp.content.readline(), 5)).decode().rstrip("\n")
        if line.startswith("event: "):
            current = line[7:]
        elif line.startswith("data: ") and current == name:
            return dict(json.loads(line[6:]))
    raise AssertionError(f"no {name!r} event in {limit} lines")


async def test_event_stream_pushes_moving_dots_and_ends_on_logout(credential: Path) -> None:
    metrics = GatewayMetrics()
    async with status_client(credential, metrics=metrics, stream_interval_s=0.05, status_interval_s=0.2) as c:
        csrf = await login(c)
        resp = await c.get("/api/stream")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        first = await _read_event(resp, "devices")
        status = await _read_event(resp, "status")
        assert "uplink" in status
        assert b"gateway_status_sse_clients 1.0" in metrics.render()
        moved = False
        for _ in range(40):
            later = await _read_event(resp, "devices")
            a = {d["subject"]: (d["x"], d["y"]) for d in first["devices"]}
            b = {d["subject"]: (d["x"], d["y"]) for d in later["devices"]}
            if any(a[k] != b[k] for k in a):
                moved = True
                break
        assert moved, "dots did not move"
        r = await c.post("/logout", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status == 200
        await _read_event(resp, "logout")
        assert await asyncio.wait_for(resp.content.read(), 5) == b"\n"  # the end of the last event; then EOF
        resp.release()
        await asyncio.sleep(0)
        assert b"gateway_status_sse_clients 0.0" in metrics.render()


async def test_stream_client_cap(credential: Path) -> None:
    async with status_client(credential, max_stream_clients=1, stream_interval_s=0.05) as c:
        await login(c)
        r1 = await c.get("/api/stream")
        await _read_event(r1, "devices")
        r2 = await c.get("/api/stream")
        assert r2.status == 503
        r1.close()


async def test_healthz_follows_provider_readiness(credential: Path) -> None:
    provider = make_provider(n=2)
    async with status_client(credential, provider=provider) as c:
        assert (await c.get("/healthz")).status == 200
        provider.ready = lambda: False  # type: ignore[method-assign]
        r = await c.get("/healthz")
        assert r.status == 503
        assert await r.json() == {"ready": False}


@pytest.mark.parametrize("public", [True, False])
async def test_metrics_endpoint(credential: Path, public: bool) -> None:
    m = GatewayMetrics()
    m.observed("ble", 42)
    async with status_client(credential, metrics=m, metrics_public=public) as c:
        r = await c.get("/metrics")
        if not public:
            assert r.status == 401
            await login(c)
            r = await c.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=")
        assert 'gateway_observations_total{source="ble"} 42.0' in await r.text()


async def test_parallel_guesses_cannot_outrun_the_lockout(credential: Path) -> None:
    clock = FakeClock()
    async with status_client(credential, clock=clock, login_free_attempts=2) as c:
        bad = {"user": USER, "password": "wrong-guess"}
        rs = await asyncio.gather(*(c.post("/login", json=bad) for _ in range(8)))
        codes = sorted(r.status for r in rs)
        # verifications are serialised and re-check the lockout: only free + 1 guesses are checked
        assert codes == [401, 401, 401, 429, 429, 429, 429, 429]

    async with status_client(credential) as c:
        auth = c.server.app[AUTH]
        auth.pending = MAX_PENDING_LOGINS  # as if 8 logins were queued for the argon2 slot
        r = await c.post("/login", json={"user": USER, "password": PASSWORD})
        assert r.status == 503
        auth.pending = 0
        assert (await c.post("/login", json={"user": USER, "password": PASSWORD})).status == 200


async def test_stream_sends_status_at_its_own_cadence(credential: Path) -> None:
    async with status_client(credential, stream_interval_s=0.05, status_interval_s=0.5) as c:
        await login(c)
        resp = await c.get("/api/stream")
        names: list[str] = []
        loop = asyncio.get_running_loop()
        t_end = loop.time() + 1.2
        while loop.time() < t_end:
            line = (await asyncio.wait_for(resp.content.readline(), 5)).decode()
            if line.startswith("event: "):
                names.append(line[7:].strip())
        resp.close()
    n_dev, n_status = names.count("devices"), names.count("status")
    assert n_dev >= 8
    assert 2 <= n_status <= 4  # ~every 0.5 s over 1.2 s, not once per device tick


async def test_stream_survives_a_failing_provider(credential: Path) -> None:
    provider = make_provider(n=3)

    def broken() -> list[dict[str, Any]]:
        raise RuntimeError("pipeline exploded")

    provider.devices = broken  # type: ignore[method-assign]
    async with status_client(credential, provider=provider, stream_interval_s=0.05) as c:
        await login(c)
        resp = await c.get("/api/stream")
        await _read_event(resp, "error")
        assert await asyncio.wait_for(resp.content.read(), 5) == b"\n"
        assert (await c.get("/api/status")).status == 200  # the server is fine


async def test_host_header_must_name_this_box(credential: Path) -> None:
    """DNS rebinding: a page on attacker.example resolving to the box gets nothing, not even the
    unauthenticated endpoints; the box's own address, localhost and configured names work."""
    async with status_client(credential, allowed_hosts=["gw-42.store.lan"]) as c:
        port = c.server.port
        for path in ("/metrics", "/login", "/healthz", "/", "/static/app.js"):
            r = await c.get(path, headers={"Host": f"attacker.example:{port}"}, allow_redirects=False)
            assert r.status == 421, path
            assert r.headers["Server"] == "gateway"
        r = await c.post("/login", json={"user": USER, "password": PASSWORD}, headers={"Host": "attacker.example"})
        assert r.status == 421 and "Set-Cookie" not in r.headers
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "gw-42.store.lan", f"GW-42.store.lan.:{port}"):
            assert (await c.get("/healthz", headers={"Host": host})).status == 200, host
        for host in ("10.1.2.3", "[::1]:80", "", "127.0.0.1.nip.io"):
            assert (await c.get("/healthz", headers={"Host": host})).status == 421, host
    # bound to every interface: any IP address of the box, still no foreign names
    async with status_client(credential, bind=["0.0.0.0"]) as c:
        assert (await c.get("/healthz", headers={"Host": "10.1.2.3:8080"})).status == 200
        assert (await c.get("/healthz", headers={"Host": "[fe80::1]:8080"})).status == 200
        assert (await c.get("/healthz", headers={"Host": "rebind.attacker.example"})).status == 421


async def test_server_header_discloses_no_versions(credential: Path) -> None:
    async with status_client(credential) as c:
        for path in ("/login", "/nope", "/static/app.js", "/metrics"):
            r = await c.get(path)
            assert r.headers["Server"] == "gateway", path
        await login(c)
        r = await c.get("/api/status")
        assert r.headers["Server"] == "gateway"
        assert "aiohttp" not in str(r.headers) and "Python" not in str(r.headers)


async def test_session_cookie_secure_over_tls(credential: Path, tmp_path: Path) -> None:
    import ssl

    from aiohttp import TCPConnector
    from aiohttp.test_utils import TestClient, TestServer

    from gateway.config import StatusSettings
    from gateway.status.app import make_app
    from tests.pki import make_pki
    from tests.unit.status.support import FakeClock

    pki = make_pki(tmp_path / "pki")
    cert, key = pki.server_files()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    client_ctx.check_hostname = False
    app = make_app(make_provider(), StatusSettings(loop_lag_interval_s=0), credential, clock=FakeClock())
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(ssl=server_ctx)  # TestServer's constructor ignores ssl=
    async with TestClient(server, connector=TCPConnector(ssl=client_ctx)) as c:
        assert str(c.make_url("/")).startswith("https://")
        r = await c.post("/login", json={"user": USER, "password": PASSWORD})
        assert r.status == 200, await r.text()
        assert "Secure" in r.headers["Set-Cookie"] and "HttpOnly" in r.headers["Set-Cookie"]


async def test_malformed_http_answer_names_no_versions(credential: Path) -> None:
    """A 400 aiohttp writes before the app sees the request (bad header syntax) says Server: gateway too."""
    async with status_client(credential) as c:
        reader, writer = await asyncio.open_connection("127.0.0.1", c.server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n")
        await writer.drain()
        head = (await asyncio.wait_for(reader.read(4096), 5)).split(b"\r\n\r\n")[0].decode()
        writer.close()
        assert head.startswith("HTTP/1.") and " 400 " in head
        assert "Server: gateway" in head and "aiohttp" not in head and "Python" not in head
