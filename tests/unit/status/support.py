"""Shared helpers for the status page tests (unit and browser)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer
from argon2 import PasswordHasher

from gateway.config import StatusSettings
from gateway.demo.status_demo import SimulatedStatusProvider
from gateway.layout import Layout, load_layout
from gateway.status.app import make_app
from gateway.status.metrics import GatewayMetrics

REPO = Path(__file__).resolve().parents[3]
DEMO_LAYOUT = REPO / "hardware" / "layouts" / "demo-store.toml"

USER = "tech"
PASSWORD = "correct horse battery"  # test-only credential
XSS_ZONE = '<img src=x onerror="window.__xss=1">Bakery'
XSS_CAMPAIGN = "<script>window.__xss=2</script>Promo"
XSS_STORE = '</title><script>window.__xss=3</script>"Shop'


def write_test_credential(path: Path, user: str = USER, password: str = PASSWORD) -> Path:
    """A credential with *cheap* argon2id parameters (encoded in the hash, so verification follows
    them): the tests log in dozens of times on a shared 2-core box. Production hashes use the
    library defaults (64 MiB, t=3), checked in test_status_auth."""
    h = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(password)
    path.write_text(json.dumps({"user": user, "hash": h}))
    path.chmod(0o600)
    return path


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def xss_layout() -> Layout:
    """The demo store with hostile names in the store and in one zone."""
    lay = load_layout(DEMO_LAYOUT)
    data = lay.model_dump(mode="json")
    data["store"]["name"] = XSS_STORE
    data["zones"][2]["name"] = XSS_ZONE
    return Layout.model_validate(data)


def xss_campaigns() -> list[dict[str, Any]]:
    return [
        {"id": "welcome", "name": XSS_CAMPAIGN, "active": True, "zones": ["entrance", "service"]},
        {"id": "quiet", "name": "Quiet hours", "active": False, "zones": []},
    ]


def make_provider(n: int = 30, clock: Any = None, layout: Layout | None = None) -> SimulatedStatusProvider:
    kwargs: dict[str, Any] = {} if clock is None else {"clock": clock}
    return SimulatedStatusProvider(layout or xss_layout(), n_devices=n, seed=7, campaigns=xss_campaigns(), **kwargs)


@asynccontextmanager
async def status_client(
    credential: Path | None,
    *,
    provider: Any = None,
    clock: FakeClock | None = None,
    metrics: GatewayMetrics | None = None,
    **settings: Any,
) -> AsyncIterator[TestClient[Any, Any]]:
    settings.setdefault("loop_lag_interval_s", 0)
    st = StatusSettings(**settings)
    app = make_app(
        provider or make_provider(), st, credential, metrics=metrics or GatewayMetrics(), clock=clock or FakeClock()
    )
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def login(client: TestClient[Any, Any], user: str = USER, password: str = PASSWORD) -> str:
    """Log in; return the CSRF token."""
    r = await client.post("/login", json={"user": user, "password": password})
    assert r.status == 200, await r.text()
    return str((await r.json())["csrf"])
