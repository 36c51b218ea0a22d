"""TLS with client certificates and broker ACLs, against a real mosquitto (loopback only)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway.config import GatewayIdentity, MqttSettings
from gateway.models import ZoneEntered
from gateway.mqtt.client import AsyncMqttClient, MqttTlsError, TlsFiles
from gateway.uplink.link import Uplink
from gateway.uplink.outbox import Outbox
from tests.conftest import REPO, Mosquitto, free_port, make_mosquitto
from tests.integration.certs import Ca, Issued
from tests.integration.uplink_support import Cloud, assert_in_order, until

pytestmark = pytest.mark.integration

ACL_EXAMPLE = REPO / "hardware" / "mosquitto" / "acl.example"


class Pki:
    def __init__(self, d: Path) -> None:
        self.ca = Ca.create(d, "store-ca")
        self.other_ca = Ca.create(d, "rogue-ca")
        self.server = self.ca.issue(d, "broker", server=True)
        self.server_expired = self.ca.issue(d, "broker", server=True, expired=True)
        self.client = self.ca.issue(d, "gw-1")
        self.client_expired = self.ca.issue(d, "gw-1", expired=True)
        self.client_foreign = self.other_ca.issue(d, "gw-1")


@pytest.fixture
def tls_broker(tmp_path: Path) -> Any:
    """Two TLS listeners (good / expired broker cert), client certificates required."""
    pki = Pki(tmp_path)
    port2 = free_port()

    def listener(port: int, server: Issued) -> str:
        return (
            f"listener {port} 127.0.0.1\n"
            f"cafile {pki.ca.path}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            "require_certificate true\nuse_identity_as_username true\n"
        )

    # root: it must read the keys in pytest's private tmp dir. The ACL is the shipped example.
    m = make_mosquitto(tmp_path, f"user root\nacl_file {ACL_EXAMPLE}\n")
    tls_port = free_port()
    listeners = listener(tls_port, pki.server) + listener(port2, pki.server_expired)
    conf = m.conf.read_text().replace("max_queued_messages 0", "max_queued_messages 10000")  # see ACL test
    m.conf.write_text(conf + "per_listener_settings false\n" + listeners)
    m.start()
    try:
        yield m, pki, tls_port, port2
    finally:
        m.stop()


IDENT = GatewayIdentity(id="gw-1", store_id="store-1")


def tls_settings(port: int, ca: Path, client: Issued | None) -> MqttSettings:
    return MqttSettings(
        host="localhost",
        port=port,
        tls=True,
        ca_file=ca,
        cert_file=client.cert if client else None,
        key_file=client.key if client else None,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        connect_timeout_s=3,
    )


async def first_failure(settings: MqttSettings, ob: Outbox) -> tuple[str, list[dict[str, Any]]]:
    up = Uplink(settings, IDENT, ob)
    with capture_logs() as logs:
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: up.status()["connect_failures"] >= 1, 8)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert up.status()["published_events"] == 0
    failures = [e for e in logs if e["event"] == "uplink.connect_failed"]
    assert failures, logs
    return str(up.status()["last_error"]), failures


# What the technician sees when the broker refuses this device's client certificate. TLS 1.3
# checks it after the client's side of the handshake; the broker's alert races its close and a
# busy machine often sees only the EOF/reset - the link then names the client certificate instead.
CLIENT_CERT_HINT = "did not accept this device's client certificate"


async def test_tls_good_and_bad_certificates(tls_broker: Any, tmp_path: Path) -> None:
    _m, pki, port, expired_port = tls_broker
    ob = await Outbox.open(tmp_path / "o.db", IDENT.id)
    try:
        await ob.append([ZoneEntered(ts=1.0 + i, store_id="store-1", subject="p", zone="z") for i in range(20)])
        cases = [
            # (what is wrong, settings, texts the technician may see: the alert's, or the hint)
            ("wrong CA", tls_settings(port, pki.other_ca.path, pki.client), ("broker certificate rejected",)),
            ("expired broker cert", tls_settings(expired_port, pki.ca.path, pki.client), ("certificate has expired",)),
            (
                "expired client cert",
                tls_settings(port, pki.ca.path, pki.client_expired),
                ("certificate expired", CLIENT_CERT_HINT),
            ),
            (
                "client cert from another CA",
                tls_settings(port, pki.ca.path, pki.client_foreign),
                ("unknown ca", CLIENT_CERT_HINT),
            ),
            ("no client cert", tls_settings(port, pki.ca.path, None), ("certificate required", CLIENT_CERT_HINT)),
        ]
        for what, settings, texts in cases:
            last_error, failures = await first_failure(settings, ob)
            assert any(t in last_error.lower() for t in texts), f"{what}: {last_error}"
            assert "TLS" in last_error, f"{what}: {last_error}"
            assert any(t in failures[0]["reason"].lower() for t in texts), f"{what}: {failures[0]}"
            assert ob.stats().backlog == 20
        # The good certificate connects and delivers; the broker knows the device by its CN.
        up = Uplink(tls_settings(port, pki.ca.path, pki.client), IDENT, ob)
        task = asyncio.create_task(up.run())
        try:
            await until(lambda: ob.stats().backlog == 0, 10)
            assert up.status()["link"] == "connected"
            assert up.status()["published_events"] == 20
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await ob.close()
    # The shipped ACL keys on the certificate CN (%u): gw-1's certificate cannot publish as gw-2.
    other = await Outbox.open(tmp_path / "other.db", "gw-2")
    try:
        await other.append([ZoneEntered(ts=1.0, store_id="store-1", subject="p", zone="z")])
        impostor = Uplink(
            tls_settings(port, pki.ca.path, pki.client), GatewayIdentity(id="gw-2", store_id="store-1"), other
        )
        task = asyncio.create_task(impostor.run())
        try:
            await until(lambda: impostor.status()["last_reason_code"] == 0x87, 10)
            assert "Not authorized" in str(impostor.status()["last_error"])
            assert other.stats().backlog == 1
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        await other.close()


async def test_a_broker_that_drops_the_tls_session_unannounced_names_the_client_certificate(tmp_path: Path) -> None:
    """The race CI met: the broker ends the session after the client's handshake without an alert
    (what a lost ``unknown ca`` looks like). The link says the client certificate is the likely cause."""
    pki = Pki(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server.cert, pki.server.key)
    dropped = 0

    async def drop(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal dropped
        dropped += 1
        w.transport.abort()  # no alert, no close_notify

    server = await asyncio.start_server(drop, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client = AsyncMqttClient(
        "localhost",
        port,
        client_id="gw-1",
        connect_timeout_s=3,
        tls=TlsFiles(pki.ca.path, pki.client_foreign.cert, pki.client_foreign.key),
    )
    try:
        with pytest.raises(MqttTlsError) as err:
            await client.connect()
        assert CLIENT_CERT_HINT in str(err.value), err.value
        assert str(err.value).startswith("TLS: connection refused by the broker"), err.value
        assert dropped == 1
    finally:
        server.close()
        await server.wait_closed()


ACL = """\
# The platform reads everything.
user cloud
topic read retail/#

# Each gateway writes only below its own id (client id = gateway id) and reads its commands.
pattern write retail/+/%c/#
pattern read retail/+/%c/commands
"""


async def test_acl_confines_gateway_to_its_subtree(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    m: Mosquitto = make_mosquitto(tmp_path, f"acl_file {acl}\nuser root\n")
    # mosquitto 2.0.11 drops the connection after a denied QoS 1 PUBLISH when max_queued_messages
    # is 0 (unlimited); a production broker has a finite queue, so this test uses one too.
    m.conf.write_text(m.conf.read_text().replace("max_queued_messages 0", "max_queued_messages 10000"))
    m.start()
    good = await Outbox.open(tmp_path / "good.db", "gw-a")
    bad = await Outbox.open(tmp_path / "bad.db", "gw-b")
    evs = [ZoneEntered(ts=1.0 + i, store_id="store-1", subject="p", zone="z") for i in range(10)]
    await good.append(evs)
    await bad.append(evs)
    base: dict[str, Any] = {
        "host": m.host,
        "port": m.port,
        "tls": False,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    # gw-b's topics are .../gw-b/..., but its broker identity (client id) is gw-a's neighbour "gw-x".
    up_bad = Uplink(MqttSettings(**base, client_id="gw-x"), GatewayIdentity(id="gw-b", store_id="store-1"), bad)
    up_good = Uplink(MqttSettings(**base), GatewayIdentity(id="gw-a", store_id="store-1"), good)
    try:
        async with Cloud(m, username="cloud") as cloud:
            with capture_logs() as logs:
                tasks = [asyncio.create_task(up_bad.run()), asyncio.create_task(up_good.run())]
                await until(lambda: good.stats().backlog == 0, 10)
                await until(lambda: up_bad.status()["publish_failures"].get("Not authorized", 0) >= 2, 10)
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with pytest.raises(asyncio.CancelledError):
                        await t
            st = up_bad.status()
            assert "Not authorized (0x87)" in st["last_error"]
            assert st["last_reason_code"] == 0x87
            assert st["published_events"] == 0
            assert bad.stats().backlog == 10  # refused rows are kept, not deleted as sent
            refused = [e for e in logs if e["event"] == "uplink.publish_refused"]
            assert refused
            assert refused[0]["reason_code"] == 0x87
            await cloud.wait_for(10, 5)
            assert_in_order(cloud.seqs, 10)
            assert {s.gateway_id for s in cloud.status} == {"gw-a"}  # gw-b's birth was refused too
    finally:
        m.stop()
        await good.close()
        await bad.close()
