"""ContentService glue: commands change rules and identity, events produce activation reports,
state and identity consents are restored after a restart; signatures are always required (Ed25519
by default, HMAC when configured), replays are refused against the floor kept with the outbox -
also after content.sqlite3 or the whole state dir is lost - and webhook URLs follow the policy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.config import Settings, load_settings
from gateway.content.actors import ActorDispatcher
from gateway.content.commands import HmacKey, make_command
from gateway.content.service import ContentService
from gateway.models import ActivationReport, EventBase, ZoneEntered
from tests.signing import Platform

IRK = "00112233445566778899aabbccddeeff"
T0 = 1_767_261_600.0


class IdentityRecorder:
    """Implements the IdentityConsents protocol by recording calls (what identity would apply)."""

    def __init__(self) -> None:
        self.consents: dict[str, tuple[bytes | None, str | None]] = {}
        self.optouts: set[str] = set()
        self.scopes: dict[str, frozenset[str]] = {}

    async def add_consent(
        self, customer_ref: str, *, irk: bytes | None, app_token: str | None, scope: frozenset[str]
    ) -> None:
        self.consents[customer_ref] = (irk, app_token)
        self.scopes[customer_ref] = scope

    async def revoke_consent(self, customer_ref: str) -> None:
        self.consents.pop(customer_ref, None)

    async def add_optout(self, identifier: str) -> None:
        self.optouts.add(identifier)


PLATFORM = Platform("gw-demo")


def settings(tmp: Path, **content: Any) -> Settings:
    if "command_secret_file" not in content:
        content.setdefault("command_public_key_file", str(PLATFORM.write_public_key(tmp / "command.pub")))
    return load_settings(paths={"state_dir": str(tmp)}, content={"cap_per_subject": None, **content})


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def open_rt(
    s: Settings, ident: IdentityRecorder, out: list[EventBase], replies: list[bytes], clock: Clock | None = None
) -> ContentService:
    async def reply(b: bytes) -> None:
        replies.append(b)

    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    return await ContentService.open(
        s, emit=out.extend, dispatcher=ActorDispatcher(s.content), identity=ident, reply=reply, **kw
    )


async def test_commands_drive_rules_identity_and_reports(tmp_path: Path) -> None:
    s = settings(tmp_path)
    ident, out, replies = IdentityRecorder(), [], []  # type: ignore[var-annotated]
    rt = await open_rt(s, ident, out, replies)
    camp = {
        "id": "c1",
        "category": "promo",
        "content_id": "v1",
        "actors": ["s1"],
        "segment": {"trigger": "zone.entered", "zone": "produce"},
        "caps": {},
    }
    for i, (kind, body) in enumerate(
        [
            ("actors.put", {"actor": {"id": "s1", "categories": ["promo"]}}),
            ("campaigns.put", {"campaign": camp}),
            (
                "consents.put",
                {"customer_ref": "cust-1", "irk_hex": IRK, "scope": ["presence", "first_name"], "first_name": "Ada"},
            ),
            ("optouts.put", {"subjects": ["p-out"]}),
            ("config.patch", {"presence": {"visit_timeout_s": 42}}),
        ]
    ):
        r = await rt.handle_command("t", PLATFORM.cmd(kind, body, id=f"k{i}", revision=1))
        assert r.ok, r
    assert len(replies) == 5 and b'"ok":true' in replies[0]
    assert ident.consents == {"cust-1": (bytes.fromhex(IRK), None)} and ident.optouts == {"p-out"}
    assert ident.scopes["cust-1"] == {"presence", "first_name"}
    assert s.presence.visit_timeout_s == 42
    acts = rt.on_events([ZoneEntered(ts=T0, store_id="demo-store", subject="p1", zone="produce")])
    assert len(acts) == 1
    assert rt.on_events([ZoneEntered(ts=T0, store_id="demo-store", subject="p-out", zone="produce")]) == []
    await rt.drain(5)
    reps = [e for e in out if isinstance(e, ActivationReport)]
    assert len(reps) == 1 and reps[0].event_id == acts[0].activation_id
    assert (reps[0].result, reps[0].detail, reps[0].campaign_id, reps[0].actor_id) == (
        "failed",
        "local broker not connected",
        "c1",
        "s1",
    )
    r = await rt.handle_command("t", PLATFORM.cmd("consents.revoke", {"customer_ref": "cust-1"}, id="k9", revision=2))
    assert r.ok and ident.consents == {}
    await rt.handle_command(
        "t", PLATFORM.cmd("consents.put", {"customer_ref": "cust-2", "app_token": "tok-12345678"}, id="k10", revision=3)
    )
    await rt.close()

    # restart: campaigns, config and consents (to identity) come back from SQLite
    s2 = settings(tmp_path)
    ident2 = IdentityRecorder()
    rt2 = await open_rt(s2, ident2, out, replies)
    try:
        assert set(rt2.engine.campaigns) == {"c1"}
        # consents are re-sent (identity keeps them in RAM only); opt-outs are persisted by identity
        assert ident2.consents == {"cust-2": (None, "tok-12345678")} and ident2.optouts == set()
        assert rt2.state.optouts == {"p-out"}
        assert s2.presence.visit_timeout_s == 42
    finally:
        await rt2.close()


async def test_hmac_only_when_configured(tmp_path: Path) -> None:
    secret_file = tmp_path / "cmd.secret"
    secret_file.write_bytes(b"per-gateway-secret-of-32-bytes-at-least\n")
    key = HmacKey(b"per-gateway-secret-of-32-bytes-at-least")
    s = settings(
        tmp_path, command_auth="hmac-sha256", command_secret_file=str(secret_file), command_issuers=["platform"]
    )
    out: list[EventBase] = []
    rt = await open_rt(s, IdentityRecorder(), out, [])
    try:
        body = {"actor": {"id": "s1", "categories": ["promo"]}}
        r = await rt.handle_command("t", PLATFORM.cmd("actors.put", body, id="a", revision=1, signer=None))
        assert not r.ok and r.error is not None and r.error.path == "/sig" and rt.state.actors == {}
        r = await rt.handle_command("t", PLATFORM.cmd("actors.put", body, id="a", revision=1))  # ed25519
        assert not r.ok and r.error is not None and r.error.path == "/alg"
        r = await rt.handle_command("t", PLATFORM.cmd("actors.put", body, id="a", revision=1, signer=key))
        assert r.ok and set(rt.state.actors) == {"s1"}
        r = await rt.handle_command(
            "t", PLATFORM.cmd("actors.put", body, id="b", revision=2, issuer="other", signer=key)
        )
        assert not r.ok and r.error is not None and r.error.path == "/issuer"
        assert rt.counters == {"commands_ok": 1, "commands_rejected": 3, "activations": 0}
    finally:
        await rt.close()
    await asyncio.sleep(0)


async def test_unconfigured_gateway_refuses_every_command(tmp_path: Path) -> None:
    s = load_settings(paths={"state_dir": str(tmp_path)})
    rt = await open_rt(s, IdentityRecorder(), [], [])
    try:
        for payload in (
            PLATFORM.cmd("actors.put", {"actor": {"id": "s1"}}, id="a", revision=1),
            make_command("ping", {}, id="p", aud="gw-demo", signer=None),
        ):
            r = await rt.handle_command("t", payload)
            assert not r.ok and r.error is not None and "no command key" in r.error.reason
        assert rt.state.actors == {}
    finally:
        await rt.close()


def remove(d: Path, *patterns: str) -> None:
    for pat in patterns:
        for f in d.glob(pat):
            f.unlink()


def _reply(r: Any) -> tuple[str, str]:
    assert not r.ok and r.error is not None, r
    return r.error.path, r.error.reason


async def test_replays_are_refused_also_after_state_loss(tmp_path: Path) -> None:
    clock = Clock(T0)
    s = settings(tmp_path)
    rt = await open_rt(s, IdentityRecorder(), [], [], clock)
    camp = {
        "id": "c1",
        "category": "promo",
        "content_id": "v",
        "actors": ["s1"],
        "segment": {"trigger": "visit.started"},
    }
    put = PLATFORM.cmd("campaigns.put", {"campaign": camp}, id="c-1", revision=1, issued_at=T0 + 1, ttl_s=3600)
    delete = PLATFORM.cmd("campaigns.delete", {"campaign_id": "c1"}, id="c-2", revision=2, issued_at=T0 + 2, ttl_s=3600)
    ping = PLATFORM.cmd("ping", {}, id="p-1", issued_at=T0 + 3, ttl_s=3600)
    try:
        clock.t = T0 + 10
        assert (await rt.handle_command("t", put)).ok
        assert (await rt.handle_command("t", put)).ok  # QoS 1 re-delivery: acknowledged, nothing changes
        assert (await rt.handle_command("t", delete)).ok and rt.state.campaigns == {}
        assert (await rt.handle_command("t", ping)).ok and (await rt.handle_command("t", ping)).ok
        path, reason = _reply(await rt.handle_command("t", put))  # replay of an older revision
        assert path == "/revision" and "stale revision 1: campaigns already at revision 2" in reason
        assert rt.state.campaigns == {}
    finally:
        await rt.close()

    # content.sqlite3 lost (a technician "reset the campaigns"): the floor kept with the outbox still refuses
    remove(tmp_path, "content.*")
    clock.t = T0 + 20
    rt = await open_rt(settings(tmp_path), IdentityRecorder(), [], [], clock)
    try:
        for old in (put, delete):
            path, reason = _reply(await rt.handle_command("t", old))
            assert path == "/revision" and "already at revision 2" in reason and "state was reset" in reason
        assert rt.state.campaigns == {}
        newer = PLATFORM.cmd("campaigns.put", {"campaign": camp}, id="c-3", revision=3, issued_at=T0 + 15)
        assert (await rt.handle_command("t", newer)).ok and set(rt.state.campaigns) == {"c1"}
    finally:
        await rt.close()

    # the whole state dir lost: commands issued before the new history began are refused (still unexpired)
    remove(tmp_path, "*.sqlite3*", "content.key")
    clock.t = T0 + 1000
    rt = await open_rt(settings(tmp_path), IdentityRecorder(), [], [], clock)
    try:
        for old in (put, delete, ping):
            path, reason = _reply(await rt.handle_command("t", old))
            assert path == "/issued_at" and "issued before this gateway's command history began" in reason
        assert rt.state.campaigns == {} and rt.state.revisions == {}
        fresh = PLATFORM.cmd("campaigns.put", {"campaign": camp}, id="c-4", revision=4, issued_at=T0 + 1000)
        assert (await rt.handle_command("t", fresh)).ok
    finally:
        await rt.close()


async def test_webhook_url_policy_on_actors_put(tmp_path: Path) -> None:
    s = settings(tmp_path, webhook_allow=["10.20.0.0/24"])
    rt = await open_rt(s, IdentityRecorder(), [], [])

    def actor(url: str, rev: int) -> bytes:
        body = {"actor": {"id": f"w{rev}", "transport": "webhook", "url": url, "scopes": ["customer_ref"]}}
        return PLATFORM.cmd("actors.put", body, id=f"a{rev}", revision=rev)

    try:
        refused = {
            "http://169.254.169.254/latest/meta-data/": "plain http is refused",
            "https://169.254.169.254/latest/meta-data/": "169.254.169.254 is a link-local address",
            "https://127.0.0.1:8080/x": "127.0.0.1 is a loopback address",
            "https://192.168.1.5/x": "192.168.1.5 is a private address",
            "https://[::1]/x": "::1 is a loopback address",
            "https://[::ffff:169.254.169.254]/x": "link-local",
            "https://localhost/x": "loopback",
            "https://api.example.com/x": "host 'api.example.com' is not in content.webhook_allow",
        }
        for rev, (url, why) in enumerate(refused.items(), 1):
            path, reason = _reply(await rt.handle_command("t", actor(url, rev)))
            assert path == "/body/actor/url" and why in reason, (url, reason)
        assert rt.state.actors == {}
        assert (await rt.handle_command("t", actor("https://10.20.0.5:8443/activate", 50))).ok
    finally:
        await rt.close()
