"""ContentService glue: commands change rules and identity, events produce activation reports,
state and identity consents are restored after a restart, HMAC is enforced when configured."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from gateway.config import Settings, load_settings
from gateway.content.actors import ActorDispatcher
from gateway.content.commands import make_command
from gateway.content.service import ContentService
from gateway.models import ActivationReport, EventBase, ZoneEntered

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


def settings(tmp: Path, **content: Any) -> Settings:
    return load_settings(paths={"state_dir": str(tmp)}, content={"cap_per_subject": None, **content})


async def open_rt(s: Settings, ident: IdentityRecorder, out: list[EventBase], replies: list[bytes]) -> ContentService:
    async def reply(b: bytes) -> None:
        replies.append(b)

    return await ContentService.open(
        s, emit=out.extend, dispatcher=ActorDispatcher(s.content), identity=ident, reply=reply
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
        r = await rt.handle_command("t", make_command(kind, body, id=f"k{i}", revision=1))
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
    r = await rt.handle_command("t", make_command("consents.revoke", {"customer_ref": "cust-1"}, id="k9", revision=2))
    assert r.ok and ident.consents == {}
    await rt.handle_command(
        "t", make_command("consents.put", {"customer_ref": "cust-2", "app_token": "tok-12345678"}, id="k10", revision=3)
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


async def test_hmac_required_when_secret_configured(tmp_path: Path) -> None:
    secret_file = tmp_path / "cmd.secret"
    secret_file.write_bytes(b"per-gateway-secret\n")
    s = settings(tmp_path, command_secret_file=str(secret_file), command_issuers=["platform"])
    out: list[EventBase] = []
    rt = await open_rt(s, IdentityRecorder(), out, [])
    try:
        body = {"actor": {"id": "s1", "categories": ["promo"]}}
        r = await rt.handle_command("t", make_command("actors.put", body, id="a", revision=1))
        assert not r.ok and r.error is not None and r.error.path == "/sig" and rt.state.actors == {}
        r = await rt.handle_command(
            "t", make_command("actors.put", body, id="a", revision=1, secret=b"per-gateway-secret")
        )
        assert r.ok and set(rt.state.actors) == {"s1"}
        r = await rt.handle_command(
            "t", make_command("actors.put", body, id="b", revision=2, issuer="other", secret=b"per-gateway-secret")
        )
        assert not r.ok and r.error is not None and r.error.path == "/issuer"
        assert rt.counters == {"commands_ok": 1, "commands_rejected": 2, "activations": 0}
    finally:
        await rt.close()
    await asyncio.sleep(0)
