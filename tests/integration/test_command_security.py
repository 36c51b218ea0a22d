"""A provisioned box over a real mosquitto refuses every command it should: unsigned, signed with
another key, signed for another gateway, expired, issued in the future, replayed - and replayed
again after its whole state directory was wiped. Only the platform's own, fresh, in-order
commands change anything.

The box is provisioned with `gateway provision` into a directory (as an image would be) and run
with that config; environment variables (which take precedence over the TOML file) map the box
paths into the directory and point the uplink at the test broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.content.commands import Ed25519Signer, HmacKey
from gateway.mqtt.client import AsyncMqttClient
from tests.conftest import LAYOUT, Mosquitto, gateway_cmd, gateway_env
from tests.pki import make_pki
from tests.signing import Platform

pytestmark = pytest.mark.integration

GW = "gw-sec-1"
STORE = "demo-store"
CMD_TOPIC = f"retail/{STORE}/{GW}/commands"
REPLY_TOPIC = f"retail/{STORE}/{GW}/replies"


def provision(tmp_path: Path, platform: Platform) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    pki = make_pki(tmp_path / "pki")
    pub = platform.write_public_key(tmp_path / "platform-command.pub")
    args = [
        "--root", str(root), "--store-id", STORE, "--gateway-id", GW, "--broker", "mqtts://mqtt.example.net:8883",
        "--ca", str(pki.ca_file), "--layout", str(LAYOUT), "--command-pubkey", str(pub),
    ]  # fmt: skip
    r = subprocess.run(
        gateway_cmd("provision", *args),
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    return root


class Box:
    """`gateway run` on the provisioned config; box paths mapped into ``root`` by env vars."""

    def __init__(self, root: Path, broker: Mosquitto) -> None:
        self.root = root
        self.state = root / "var/lib/gateway"
        self.env = gateway_env(
            GATEWAY_PATHS__STATE_DIR=str(self.state),
            GATEWAY_PATHS__LAYOUT=str(root / "etc/gateway/layout.toml"),
            GATEWAY_CONTENT__COMMAND_PUBLIC_KEY_FILE=str(root / "etc/gateway/command.pub"),
            GATEWAY_MQTT__HOST=broker.host,
            GATEWAY_MQTT__PORT=str(broker.port),
            GATEWAY_MQTT__TLS="false",
            GATEWAY_MQTT__RECONNECT_MAX_S="1",
            GATEWAY_SIMULATOR__ENABLED="true",
            GATEWAY_STATUS__ENABLED="false",
            GATEWAY_LOCAL_BROKER__HOST=broker.host,
            GATEWAY_LOCAL_BROKER__PORT=str(broker.port),
        )
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *gateway_cmd("run", "--config", str(self.root / "etc/gateway/gateway.toml")),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def stop(self) -> str:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(self.proc.communicate(), 30)
        assert self.proc.returncode == 0, err.decode()[-3000:]
        return err.decode()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


class Cloud:
    def __init__(self, broker: Mosquitto) -> None:
        self.client = AsyncMqttClient(broker.host, broker.port, client_id="platform")
        self.replies: dict[str | None, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.client.connect()
        await self.client.subscribe(REPLY_TOPIC, qos=1)
        self._task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        with contextlib.suppress(Exception):
            async for m in self.client.messages():
                doc = json.loads(m.payload)
                self.replies[doc.get("id")] = doc

    async def send(self, payload: bytes, cid: str, timeout: float = 15.0) -> dict[str, Any]:
        self.replies.pop(cid, None)
        await self.client.publish(CMD_TOPIC, payload, qos=1)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cid in self.replies:
                return self.replies[cid]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no reply to {cid} within {timeout}s")

    async def until_listening(self, platform: Platform, tag: str) -> None:
        """The box subscribes to its command topic a moment after connecting: ping until answered.
        Its session is persistent, so pings sent while it was down arrive when it connects; after a
        state wipe those are refused (issued before its new history began), later ones accepted."""
        for i in range(150):
            cid = f"hello-{tag}-{i}"
            await self.client.publish(CMD_TOPIC, platform.cmd("ping", {}, id=cid), qos=1)
            for _ in range(4):
                if cid in self.replies:
                    r = self.replies[cid]
                    if r["ok"]:
                        return
                    assert "issued before this gateway's command history began" in r["error"]["reason"], r
                await asyncio.sleep(0.05)
        raise AssertionError("the box never accepted a ping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.disconnect()


def refused(reply: dict[str, Any], path: str, text: str) -> None:
    assert reply["ok"] is False, reply
    assert reply["error"]["path"] == path and text in reply["error"]["reason"], reply


def actors(state: Path) -> set[str]:
    db = state / "content.sqlite3"
    if not db.exists():
        return set()
    with contextlib.closing(sqlite3.connect(db)) as con:
        return {r[0] for r in con.execute("SELECT id FROM actors")}


async def test_provisioned_box_refuses_what_it_must(tmp_path: Path, mosquitto: Mosquitto) -> None:
    platform = Platform(GW)
    root = provision(tmp_path, platform)
    box = Box(root, mosquitto)
    cloud = Cloud(mosquitto)
    await cloud.start()
    await box.start()
    try:
        await cloud.until_listening(platform, "a")

        def actor(n: int) -> dict[str, Any]:
            return {"actor": {"id": f"screen-{n}", "categories": ["promo"]}}

        now = time.time()
        mallory = Ed25519Signer.generate()
        other_gw = Platform("gw-sec-2", platform.signer)
        cases: list[tuple[str, bytes, str, str]] = [
            ("unsigned", platform.cmd("actors.put", actor(1), id="unsigned", revision=1, signer=None),
             "/sig", "signature required"),
            ("other-key", platform.cmd("actors.put", actor(1), id="other-key", revision=1, signer=mallory),
             "/sig", "bad signature"),
            # an HMAC keyed with the (public) platform key: the algorithm is not the box's
            ("alg-confusion", platform.cmd("actors.put", actor(1), id="alg-confusion", revision=1,
                                           signer=HmacKey(platform.signer.public_pem())),
             "/alg", "accepts ed25519 signatures only"),
            ("other-gateway", other_gw.cmd("actors.put", actor(1), id="other-gateway", revision=1),
             "/aud", "command is for gateway 'gw-sec-2'"),
            ("expired", platform.cmd("actors.put", actor(1), id="expired", revision=1, issued_at=now - 7200,
                                     ttl_s=600), "/expires_at", "expired at"),
            ("year-old-ping", platform.cmd("ping", {}, id="year-old-ping", issued_at=now - 365 * 86400),
             "/expires_at", "expired at"),
            ("future", platform.cmd("actors.put", actor(1), id="future", revision=1, issued_at=4_102_444_800.0),
             "/issued_at", "issued in the future"),
            ("too-long", platform.cmd("actors.put", actor(1), id="too-long", revision=1, ttl_s=30 * 86400),
             "/expires_at", "longer than the 86400 s allowed"),
            ("webhook-metadata", platform.cmd("actors.put", {"actor": {"id": "w", "transport": "webhook",
                                                                       "url": "https://169.254.169.254/x"}},
                                              id="webhook-metadata", revision=1),
             "/body/actor/url", "link-local"),
        ]  # fmt: skip
        tampered = json.loads(platform.cmd("actors.put", actor(1), id="tampered", revision=1))
        tampered["body"] = actor(666)
        cases.append(("tampered", json.dumps(tampered).encode(), "/sig", "bad signature"))
        for cid, payload, path, text in cases:
            refused(await cloud.send(payload, cid), path, text)
        assert actors(box.state) == set()

        # the platform's own commands apply, in order
        first = platform.cmd("actors.put", actor(1), id="first", revision=5, ttl_s=3600)
        second = platform.cmd("actors.put", actor(2), id="second", revision=6, ttl_s=3600)
        assert (await cloud.send(first, "first"))["ok"]
        assert (await cloud.send(second, "second"))["applied_revision"] == 6
        # replayed: an older revision is refused; the exact re-delivery of the last one changes nothing
        refused(await cloud.send(first, "first"), "/revision", "stale revision 5: actors already at revision 6")
        r = await cloud.send(second, "second")
        assert r["ok"] and r["applied_revision"] == 6
        err = await box.stop()
        assert actors(box.state) == {"screen-1", "screen-2"}
        assert "Traceback" not in err

        # content.sqlite3 lost: the floor kept with the outbox still refuses both
        for f in box.state.glob("content.*"):
            f.unlink()
        await box.start()
        await cloud.until_listening(platform, "b")
        for cid, payload in (("first", first), ("second", second)):
            refused(await cloud.send(payload, cid), "/revision", "already at revision 6")
        await box.stop()
        assert actors(box.state) == set()

        # the whole state directory wiped: the captured (unexpired) commands are refused all the same
        shutil.rmtree(box.state)
        await box.start()
        await cloud.until_listening(platform, "c")
        for cid, payload in (("first", first), ("second", second)):
            refused(await cloud.send(payload, cid), "/issued_at", "issued before this gateway's command history")
        fresh = platform.cmd("actors.put", actor(3), id="fresh", revision=7)
        assert (await cloud.send(fresh, "fresh"))["ok"]
        await box.stop()
        assert actors(box.state) == {"screen-3"}
        # what is on disk for the floor: in the outbox's file, beside the events
        with contextlib.closing(sqlite3.connect(box.state / "outbox.sqlite3")) as con:
            assert con.execute("SELECT revision FROM command_floor WHERE kind = 'actors'").fetchone() == (7,)
    finally:
        box.kill()
        await cloud.stop()
