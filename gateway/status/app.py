"""The status web application (aiohttp): pages, JSON API, live stream, actions, metrics.

Security model, in order of the request path:

1. ``security_headers`` (on_response_prepare, so it also covers errors, static files and the
   event stream): strict CSP with no inline script/style, frame denial, nosniff, no referrer, and
   ``Server: gateway`` (no aiohttp/Python versions).
2. ``guard`` middleware: the ``Host`` header must name this box - ``localhost``, a bound address
   (any IP address when bound to 0.0.0.0 / ::) or a name in ``status.allowed_hosts`` - so a
   DNS-rebinding page (its own name pointing at the box) reaches nothing, not even ``/metrics``
   or the login; every non-GET request must come from this origin (Origin header, when
   the browser sends one, must equal our own); everything but the login page, static assets,
   ``/healthz`` and (configurably) ``/metrics`` needs a live session; every authenticated POST
   needs the session's CSRF token in ``X-CSRF-Token`` (SameSite=Strict cookies are the first
   line, the token the second).
3. Login: JSON only, per-address exponential lockout, argon2 verification in an executor behind
   a one-slot semaphore (a login flood cannot pin the CPU or block the loop). The session cookie
   is HttpOnly, SameSite=Strict, and Secure on https requests (or always: ``status.secure_cookie``).

Rendering: the server emits two fixed HTML templates whose only substitutions go through
``html.escape``; all live data is JSON, and the page builds its DOM with ``textContent`` /
``setAttribute`` only. The event stream shares one serialised payload per tick across clients, so
a second technician costs a socket write, not another pass over the devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web, web_response

from gateway.config import StatusSettings
from gateway.log import get_logger
from gateway.status.auth import (
    Credential,
    CredentialError,
    LoginThrottle,
    Session,
    SessionStore,
    csrf_ok,
    load_credential,
    verify_password,
)
from gateway.status.metrics import CONTENT_TYPE_LATEST, GatewayMetrics, monitor_loop_lag
from gateway.status.provider import ActionResult, StatusProvider

log = get_logger(__name__)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATE_DIR = HERE / "templates"

COOKIE = "gw_session"
CSRF_HEADER = "X-CSRF-Token"
MAX_BODY = 16 * 1024
MAX_IDENTIFIER = 64
MAX_PENDING_LOGINS = 8  # each verification costs 64 MiB and ~50 ms: queue a few, refuse the rest

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SERVER_NAME = "gateway"
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - compared against, never bound here
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


@dataclass(frozen=True)
class HostPolicy:
    """Which ``Host`` header values name this box."""

    names: frozenset[str]
    any_ip: bool

    @classmethod
    def from_settings(cls, s: StatusSettings) -> HostPolicy:
        names = {"localhost"} | {h.lower().rstrip(".") for h in s.allowed_hosts}
        for b in s.bind:
            if b not in WILDCARD_BINDS:
                names.add(_normal_ip(b) or b.lower())
        return cls(frozenset(names), any(b in WILDCARD_BINDS for b in s.bind))

    def allows(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        host = host_header.strip()
        if host.startswith("["):  # [v6]:port
            host = host[1 : host.find("]")] if "]" in host else ""
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        ip = _normal_ip(host)
        if ip is not None:
            return self.any_ip or ip in self.names
        return host.lower().rstrip(".") in self.names


def _normal_ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.split("%", 1)[0]))
    except ValueError:
        return None


class AuthState:
    """Credential (re-read when the file changes), sessions, throttle, verification slot."""

    def __init__(self, settings: StatusSettings, credential_path: Path | None) -> None:
        self.path = credential_path
        self.sessions = SessionStore(ttl_s=settings.session_ttl_s, idle_s=settings.session_idle_s)
        self.throttle = LoginThrottle(
            free=settings.login_free_attempts,
            base_s=settings.login_lockout_base_s,
            max_s=settings.login_lockout_max_s,
        )
        self.verify_slot = asyncio.Semaphore(1)
        self.pending = 0  # logins waiting for / in the verification slot
        self._cred: Credential | None = None
        self._mtime: float | None = None

    def credential(self) -> Credential | None:
        """The current credential; None (nobody can log in) when unset or unreadable."""
        if self.path is None:
            return None
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            if self._cred is not None or self._mtime is None:
                log.warning("status.credential_missing", path=str(self.path))
            self._cred, self._mtime = None, -1.0
            return None
        if mtime != self._mtime:
            self._mtime = mtime
            try:
                self._cred = load_credential(self.path)
            except CredentialError as e:
                log.error("status.credential_invalid", error=str(e))
                self._cred = None
        return self._cred


@dataclass
class StreamHub:
    """Serialised stream payloads, rebuilt at most once per interval whatever the client count.

    Each payload carries a generation number; a client sends a payload only when its generation
    is newer than the one it last sent, so the status panel goes out every ``status_every_s``,
    not on every device tick.
    """

    provider: StatusProvider
    devices_every_s: float
    status_every_s: float
    clients: int = 0
    _dev: tuple[float, int, bytes] = (float("-inf"), 0, b"")
    _status: tuple[float, int, bytes] = (float("-inf"), 0, b"")
    _dev_version: object = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)

    def devices_event(self, now: float) -> tuple[int, bytes]:
        ts, gen, payload = self._dev
        if now - ts >= self.devices_every_s * 0.9:
            # a provider that can tell when its dots changed (the daemon's: once per fix tick) saves
            # rebuilding and resending the same map; the others (version None) are rebuilt every interval
            version = self.provider.devices_version()
            if version is not None and gen > 0 and version == self._dev_version:
                self._dev = (now, gen, payload)
                return gen, payload
            self._dev_version = version
            body = dumps({"ts": time.time(), "devices": self.provider.devices()})
            gen, payload = gen + 1, b"event: devices\ndata: " + body + b"\n\n"
            self._dev = (now, gen, payload)
        return gen, payload

    def status_event(self, now: float) -> tuple[int, bytes]:
        ts, gen, payload = self._status
        if now - ts >= self.status_every_s * 0.9:
            gen, payload = gen + 1, b"event: status\ndata: " + dumps(self.provider.snapshot().as_dict()) + b"\n\n"
            self._status = (now, gen, payload)
        return gen, payload


PROVIDER = web.AppKey("provider", StatusProvider)
SETTINGS = web.AppKey("settings", StatusSettings)
AUTH = web.AppKey("auth", AuthState)
METRICS = web.AppKey("metrics", GatewayMetrics)
HUB = web.AppKey("hub", StreamHub)
Clock = Callable[[], float]
CLOCK: web.AppKey[Clock] = web.AppKey("clock")
TEMPLATES = web.AppKey("templates", dict[str, str])
HOSTS = web.AppKey("hosts", HostPolicy)
SESSION = web.RequestKey("session", Session)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str, allow_nan=False).encode()


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(obj), status=status, content_type="application/json")


def render(template: str, **values: str) -> str:
    """Fill ``{{name}}`` slots; every value is HTML-escaped (quotes included)."""
    out = template
    for k, v in values.items():
        out = out.replace("{{" + k + "}}", html.escape(v, quote=True))
    return out


# ---------------------------------------------------------------------------------------------
# Middleware and signals
# ---------------------------------------------------------------------------------------------


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
    response.headers["Server"] = SERVER_NAME  # aiohttp would add its and Python's versions
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


def _public(request: web.Request) -> bool:
    path = request.path
    if path in ("/login", "/healthz") or path.startswith("/static/"):
        return True
    return path == "/metrics" and request.app[SETTINGS].metrics_public


def _same_origin(request: web.Request) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:  # non-browser clients; the CSRF token still applies
        return True
    return origin == f"{request.scheme}://{request.host}"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    if not request.app[HOSTS].allows(request.headers.get("Host")):
        # DNS rebinding: a page on another name reaching the box through the browser
        return json_response({"error": "unknown Host; use the box's address or a name in status.allowed_hosts"}, 421)
    unsafe = request.method not in ("GET", "HEAD", "OPTIONS")
    if unsafe and not _same_origin(request):
        return json_response({"error": "cross-origin request refused"}, 403)
    if _public(request):
        return await handler(request)
    auth = request.app[AUTH]
    session = auth.sessions.get(request.cookies.get(COOKIE), request.app[CLOCK]())
    if session is None:
        if request.path == "/" and not unsafe:  # the page itself: send the browser to log in
            raise web.HTTPFound("/login")
        return json_response({"error": "login required"}, 401)
    if unsafe and not csrf_ok(session, request.headers.get(CSRF_HEADER)):
        return json_response({"error": "CSRF token missing or invalid"}, 403)
    request[SESSION] = session
    return await handler(request)


# ---------------------------------------------------------------------------------------------
# Pages and auth
# ---------------------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    s = request[SESSION]
    store = request.app[PROVIDER].layout().store
    page = render(request.app[TEMPLATES]["index"], store=store.name or store.id, user=s.user, csrf=s.csrf)
    return web.Response(text=page, content_type="text/html")


async def login_page(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    if auth.sessions.get(request.cookies.get(COOKIE), request.app[CLOCK]()) is not None:
        raise web.HTTPFound("/")
    store = request.app[PROVIDER].layout().store
    return web.Response(
        text=render(request.app[TEMPLATES]["login"], store=store.name or store.id), content_type="text/html"
    )


def _throttled(metrics: GatewayMetrics, wait: float) -> web.Response:
    metrics.status_logins.labels("throttled").inc()
    r = json_response({"error": "too many attempts; try again later", "retry_after": round(wait, 1)}, 429)
    r.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
    return r


async def login(request: web.Request) -> web.Response:
    app = request.app
    auth, metrics, now = app[AUTH], app[METRICS], app[CLOCK]()
    addr = request.remote or "unknown"
    wait = auth.throttle.retry_after(addr, now)
    if wait > 0:
        return _throttled(metrics, wait)
    if request.content_type != "application/json":
        return json_response({"error": "expected application/json"}, 415)
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return json_response({"error": "body is not valid JSON"}, 400)
    if not isinstance(body, dict) or not isinstance(body.get("user"), str) or not isinstance(body.get("password"), str):
        return json_response({"error": "fields 'user' and 'password' (strings) are required"}, 400)
    if auth.pending >= MAX_PENDING_LOGINS:
        return json_response({"error": "busy; try again later"}, 503)
    cred = auth.credential()
    loop = asyncio.get_running_loop()
    auth.pending += 1
    lock = 0.0
    try:
        async with auth.verify_slot:
            # checked again in the slot: parallel guesses queued before a lockout must not get through
            wait = auth.throttle.retry_after(addr, app[CLOCK]())
            if wait > 0:
                return _throttled(metrics, wait)
            ok = await loop.run_in_executor(None, verify_password, cred, body["user"], body["password"])
            now = app[CLOCK]()
            if not ok:
                lock = auth.throttle.failure(addr, now)
    finally:
        auth.pending -= 1
    if not ok:
        metrics.status_logins.labels("failure").inc()
        log.warning("status.login_failed", client=addr, lockout_s=lock, configured=cred is not None)
        return json_response({"error": "invalid user or password", "retry_after": round(lock, 1)}, 401)
    auth.throttle.success(addr)
    old = request.cookies.get(COOKIE)
    if old:
        auth.sessions.delete(old)
    session = auth.sessions.create(body["user"], now)
    metrics.status_logins.labels("success").inc()
    log.info("status.login", client=addr, user=session.user)
    resp = json_response({"ok": True, "csrf": session.csrf})
    settings = app[SETTINGS]
    resp.set_cookie(
        COOKIE,
        session.sid,
        httponly=True,
        samesite="Strict",
        secure=settings.secure_cookie or request.secure,
        path="/",
        max_age=int(settings.session_ttl_s),
    )
    return resp


async def logout(request: web.Request) -> web.Response:
    request.app[AUTH].sessions.delete(request[SESSION].sid)
    resp = json_response({"ok": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


# ---------------------------------------------------------------------------------------------
# JSON API
# ---------------------------------------------------------------------------------------------


async def api_session(request: web.Request) -> web.Response:
    s = request[SESSION]
    return json_response({"user": s.user, "csrf": s.csrf})


async def api_layout(request: web.Request) -> web.Response:
    return json_response(request.app[PROVIDER].layout().model_dump(mode="json"))


async def api_status(request: web.Request) -> web.Response:
    snap = request.app[PROVIDER].snapshot().as_dict()
    snap["status_page"] = {"stream_clients": request.app[HUB].clients, "sessions": len(request.app[AUTH].sessions)}
    return json_response(snap)


async def api_devices(request: web.Request) -> web.Response:
    return json_response({"ts": time.time(), "devices": request.app[PROVIDER].devices()})


async def api_coverage(request: web.Request) -> web.Response:
    return json_response({"grid": request.app[PROVIDER].crlb_grid()})


async def api_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    hub, clock, sessions = app[HUB], app[CLOCK], app[AUTH].sessions
    if hub.clients >= app[SETTINGS].max_stream_clients:
        return json_response({"error": "too many live streams"}, 503)
    sid = request[SESSION].sid
    loop = asyncio.get_running_loop()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    hub.clients += 1
    app[METRICS].status_sse_clients.set(hub.clients)
    sent_dev = sent_st = -1
    try:
        await resp.write(b"retry: 2000\n\n")
        while not hub.closing.is_set():
            now = clock()
            if not sessions.alive(sid, now):
                await resp.write(b"event: logout\ndata: {}\n\n")
                break
            tick = loop.time()  # the payload cache runs on real time, sessions on the app clock
            try:
                dev_gen, dev = hub.devices_event(tick)
                st_gen, st = hub.status_event(tick)
            except Exception as e:  # a provider bug must not take the server down; the page reconnects
                log.error("status.stream_provider_failed", error_type=type(e).__name__, error=str(e))
                await resp.write(b"event: error\ndata: {}\n\n")
                break
            out = b""
            if dev_gen != sent_dev:
                out, sent_dev = dev, dev_gen
            if st_gen != sent_st:
                out, sent_st = out + st, st_gen
            if out:
                await resp.write(out)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hub.closing.wait(), hub.devices_every_s)
    except ConnectionResetError:
        pass  # the browser went away
    finally:
        hub.clients -= 1
        app[METRICS].status_sse_clients.set(hub.clients)
    return resp


ActionFn = Callable[[StatusProvider, dict[str, Any]], Awaitable[ActionResult]]


async def _optout(p: StatusProvider, body: dict[str, Any]) -> ActionResult:
    ident = body.get("identifier")
    if not isinstance(ident, str) or not ident.strip() or len(ident) > MAX_IDENTIFIER:
        raise ValueError(f"field 'identifier' must be a non-empty string of at most {MAX_IDENTIFIER} characters")
    return await p.add_optout(ident.strip())


ACTIONS: dict[str, ActionFn] = {
    "restart-scanner": lambda p, _b: p.restart_scanner(),
    "reload-config": lambda p, _b: p.reload_config(),
    "test-event": lambda p, _b: p.send_test_event(),
    "optout": _optout,
}


async def api_action(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    fn = ACTIONS.get(name)
    if fn is None:
        return json_response({"ok": False, "message": "unknown action"}, 404)
    body: Any = {}
    if request.can_read_body:
        if request.content_type != "application/json":
            return json_response({"ok": False, "message": "expected application/json"}, 415)
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return json_response({"ok": False, "message": "body is not valid JSON"}, 400)
    if not isinstance(body, dict):
        return json_response({"ok": False, "message": "body must be a JSON object"}, 400)
    try:
        result = await fn(request.app[PROVIDER], body)
    except ValueError as e:
        return json_response({"ok": False, "message": str(e)}, 400)
    except Exception as e:
        log.error("status.action_failed", action=name, error_type=type(e).__name__)
        return json_response({"ok": False, "message": f"{name} failed ({type(e).__name__})"}, 500)
    log.info("status.action", action=name, user=request[SESSION].user, ok=result.ok)
    return json_response(result.as_dict(), 200 if result.ok else 409)


async def metrics_handler(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    try:
        ready = bool(request.app[PROVIDER].ready())
    except Exception:
        ready = False
    return json_response({"ready": ready}, 200 if ready else 503)


# ---------------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------------


async def _lag_probe(app: web.Application) -> AsyncIterator[None]:
    interval = app[SETTINGS].loop_lag_interval_s
    task = asyncio.create_task(monitor_loop_lag(app[METRICS], interval)) if interval > 0 else None
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _stop_streams(app: web.Application) -> None:
    app[HUB].closing.set()


def make_app(
    provider: StatusProvider,
    settings: StatusSettings,
    credential_path: Path | None = None,
    *,
    metrics: GatewayMetrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """Build the application; the caller runs it (``StatusServer`` or aiohttp's test server)."""
    # responses made before a request reaches the app (malformed HTTP: 400) skip on_response_prepare;
    # aiohttp names its and Python's versions there through this module constant
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]
    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app[PROVIDER] = provider
    app[SETTINGS] = settings
    app[AUTH] = AuthState(settings, credential_path if credential_path is not None else settings.credential_file)
    app[METRICS] = metrics if metrics is not None else GatewayMetrics()
    app[HUB] = StreamHub(provider, settings.stream_interval_s, settings.status_interval_s)
    app[CLOCK] = clock
    app[HOSTS] = HostPolicy.from_settings(settings)
    app[TEMPLATES] = {n: (TEMPLATE_DIR / f"{n}.html").read_text(encoding="utf-8") for n in ("index", "login")}
    app.on_response_prepare.append(security_headers)
    app.on_shutdown.append(_stop_streams)
    app.cleanup_ctx.append(_lag_probe)
    r = app.router
    r.add_get("/", index)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/api/session", api_session)
    r.add_get("/api/layout", api_layout)
    r.add_get("/api/status", api_status)
    r.add_get("/api/devices", api_devices)
    r.add_get("/api/coverage", api_coverage)
    r.add_get("/api/stream", api_stream)
    r.add_post("/api/actions/{name}", api_action)
    r.add_get("/metrics", metrics_handler)
    r.add_get("/healthz", healthz)
    r.add_static("/static/", STATIC_DIR, append_version=False)
    return app
