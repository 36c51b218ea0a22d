"""Command state on a real SQLite file: survives restart, secrets encrypted at rest."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from gateway.content.commands import Command, decode_command, make_command
from gateway.content.store import ContentStore

IRK = "00112233445566778899aabbccddeeff"


def cmd(kind: str, body: dict[str, object], rev: int, cid: str) -> Command:
    c = decode_command(make_command(kind, body, id=cid, revision=rev))
    assert isinstance(c, Command), c
    return c


def read_all(d: Path) -> bytes:
    return b"".join(p.read_bytes() for p in d.glob("content.sqlite3*"))


async def test_state_survives_restart_and_hides_secrets(tmp_path: Path) -> None:
    path = tmp_path / "content.sqlite3"
    s = await ContentStore.open(path)
    camp = {
        "id": "c1",
        "category": "promo",
        "content_id": "x",
        "actors": ["s1"],
        "segment": {"trigger": "visit.started"},
    }
    await s.apply(cmd("campaigns.put", {"campaign": camp}, 1, "a"))
    await s.apply(cmd("campaigns.put", {"campaign": {**camp, "id": "c2"}}, 2, "b"))
    await s.apply(cmd("campaigns.delete", {"campaign_id": "c1"}, 3, "c"))
    await s.apply(
        cmd(
            "consents.put",
            {"customer_ref": "cust-1", "irk_hex": IRK, "scope": ["first_name"], "first_name": "Ada"},
            1,
            "d",
        )
    )
    await s.apply(cmd("consents.put", {"customer_ref": "cust-2", "app_token": "tok-secret-123"}, 2, "e"))
    await s.apply(cmd("consents.revoke", {"customer_ref": "cust-2"}, 3, "f"))
    await s.apply(cmd("optouts.put", {"subjects": ["p1", "p2"]}, 1, "g"))
    await s.apply(cmd("actors.put", {"actor": {"id": "s1", "categories": ["promo"]}}, 1, "h"))
    await s.apply(cmd("config.patch", {"presence": {"visit_timeout_s": 30}}, 1, "i"))
    await s.apply(cmd("config.patch", {"log": {"level": "debug"}}, 2, "j"))
    await s.close()

    raw = read_all(tmp_path)
    assert IRK.encode() not in raw and bytes.fromhex(IRK) not in raw and b"tok-secret-123" not in raw
    assert (tmp_path / "content.key").stat().st_mode & 0o777 == 0o600

    s2 = await ContentStore.open(path)
    try:
        assert set(s2.campaigns) == {"c2"}
        assert set(s2.consents) == {"cust-1"} and s2.consents["cust-1"].first_name == "Ada"
        secrets = await s2.consent_secrets()
        assert [(x.customer_ref, x.irk) for x in secrets] == [("cust-1", bytes.fromhex(IRK))]
        assert IRK not in repr(secrets)
        assert s2.optouts == {"p1", "p2"}
        assert set(s2.actors) == {"s1"}
        assert s2.config == {"presence": {"visit_timeout_s": 30.0}, "log": {"level": "debug"}}
        assert s2.applied_revision("campaigns") == 3 and s2.applied_revision("consents") == 3
        # after restart a replay of an old command is still rejected, a re-delivery acknowledged
        r, changed = await s2.apply(cmd("campaigns.put", {"campaign": camp}, 1, "a"))
        assert not r.ok and not changed and set(s2.campaigns) == {"c2"}
        r, changed = await s2.apply(cmd("campaigns.delete", {"campaign_id": "c1"}, 3, "c"))
        assert r.ok and not changed
    finally:
        await s2.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT revision FROM applied WHERE kind='campaigns'").fetchone() == (3,)
