"""Command state on a real SQLite file: survives restart; consents and opt-outs encrypted at rest
(no readable customer ref, first name, tag, IRK, token or opt-out subject in any file), files
0600, first names kept only when the consent lets staff see them, older files migrated."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from cryptography.fernet import Fernet

from gateway.content.commands import Command, parse_command
from gateway.content.store import ContentStore
from tests.signing import Platform

IRK = "00112233445566778899aabbccddeeff"
PLATFORM = Platform()


def cmd(kind: str, body: dict[str, object], rev: int, cid: str) -> Command:
    c = parse_command(PLATFORM.cmd(kind, body, id=cid, revision=rev))
    assert isinstance(c, Command), c
    return c


def modes(d: Path, pattern: str) -> set[int]:
    return {f.stat().st_mode & 0o777 for f in d.glob(pattern)}


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
            {"customer_ref": "cust-1", "irk_hex": IRK, "scope": ["first_name"], "first_name": "Ada", "tags": ["vip"]},
            1,
            "d",
        )
    )
    await s.apply(cmd("consents.put", {"customer_ref": "cust-2", "app_token": "tok-secret-123"}, 2, "e"))
    await s.apply(cmd("consents.revoke", {"customer_ref": "cust-2"}, 3, "f"))
    await s.apply(cmd("optouts.put", {"subjects": ["p1", "p2", "cust-optout"]}, 1, "g"))
    await s.apply(cmd("actors.put", {"actor": {"id": "s1", "categories": ["promo"]}}, 1, "h"))
    await s.apply(cmd("config.patch", {"presence": {"visit_timeout_s": 30}}, 1, "i"))
    await s.apply(cmd("config.patch", {"log": {"level": "debug"}}, 2, "j"))
    await s.close()

    raw = read_all(tmp_path)
    assert IRK.encode() not in raw and bytes.fromhex(IRK) not in raw and b"tok-secret-123" not in raw
    for plain in (b"cust-1", b"cust-2", b"Ada", b"vip", b"cust-optout"):
        assert plain not in raw, plain
    assert (tmp_path / "content.key").stat().st_mode & 0o777 == 0o600
    assert modes(tmp_path, "content.sqlite3*") == {0o600}

    s2 = await ContentStore.open(path)
    try:
        assert set(s2.campaigns) == {"c2"}
        assert set(s2.consents) == {"cust-1"} and s2.consents["cust-1"].first_name == "Ada"
        secrets = await s2.consent_secrets()
        assert [(x.customer_ref, x.irk) for x in secrets] == [("cust-1", bytes.fromhex(IRK))]
        assert IRK not in repr(secrets)
        assert s2.optouts == {"p1", "p2", "cust-optout"}
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


async def test_first_name_kept_only_when_staff_may_see_it(tmp_path: Path) -> None:
    s = await ContentStore.open(tmp_path / "content.sqlite3")
    try:
        body = {"customer_ref": "cust-9", "app_token": "tok-12345678", "scope": ["presence"], "first_name": "Bo"}
        assert (await s.apply(cmd("consents.put", body, 1, "a")))[0].ok
        assert s.consents["cust-9"].first_name is None
    finally:
        await s.close()
    s = await ContentStore.open(tmp_path / "content.sqlite3")
    try:
        assert s.consents["cust-9"].first_name is None and s.consents["cust-9"].scope == {"presence"}
    finally:
        await s.close()


async def test_revoked_consent_leaves_nothing_readable(tmp_path: Path) -> None:
    """secure_delete: the freed page of a revoked consent is zeroed, not left for a disk image."""
    s = await ContentStore.open(tmp_path / "content.sqlite3")
    try:
        await s.apply(cmd("consents.put", {"customer_ref": "cust-7", "irk_hex": IRK}, 1, "a"))
        blob = bytes((await s._db.execute_fetchall("SELECT record FROM consent_records"))[0][0])
        await s.apply(cmd("consents.revoke", {"customer_ref": "cust-7"}, 2, "b"))
    finally:
        await s.close()
    assert blob[:40] not in read_all(tmp_path)


async def test_old_plain_tables_are_migrated_and_erased(tmp_path: Path) -> None:
    """A content.sqlite3 from before encryption (readable consents/optouts, 0644) is rewritten."""
    path = tmp_path / "content.sqlite3"
    key = Fernet.generate_key()
    fd = os.open(tmp_path / "content.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, key)
    os.close(fd)
    secret = Fernet(key).encrypt(json.dumps({"irk_hex": IRK, "app_token": None}).encode())
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE consents (customer_ref TEXT PRIMARY KEY, doc TEXT NOT NULL, secret BLOB NOT NULL);"
            "CREATE TABLE optouts (subject TEXT PRIMARY KEY, added_at REAL NOT NULL);"
        )
        doc = {"customer_ref": "cust-old", "scope": ["first_name"], "tags": ["gold"], "first_name": "Olga"}
        db.execute("INSERT INTO consents VALUES (?, ?, ?)", ("cust-old", json.dumps(doc), secret))
        db.execute("INSERT INTO optouts VALUES ('subject-old', 1.0)")
    db.close()
    os.chmod(path, 0o644)
    s = await ContentStore.open(path)
    try:
        assert s.consents["cust-old"].first_name == "Olga" and s.consents["cust-old"].tags == {"gold"}
        assert s.optouts == {"subject-old"}
        assert [(x.customer_ref, x.irk) for x in await s.consent_secrets()] == [("cust-old", bytes.fromhex(IRK))]
    finally:
        await s.close()
    raw = read_all(tmp_path)
    for plain in (b"cust-old", b"Olga", b"gold", b"subject-old"):
        assert plain not in raw, plain
    assert path.stat().st_mode & 0o777 == 0o600


def test_private_file_creates_0600_and_repairs_older_modes(tmp_path: Path) -> None:
    """What the daemon runs on the outbox, content and presence databases at start."""
    from gateway.content.store import private_file

    new = tmp_path / "sub" / "new.sqlite3"
    private_file(new)
    assert new.stat().st_mode & 0o777 == 0o600 and new.read_bytes() == b""
    old = tmp_path / "outbox.sqlite3"
    for p in (old, tmp_path / "outbox.sqlite3-wal", tmp_path / "outbox.sqlite3-shm"):
        p.write_bytes(b"x")
        os.chmod(p, 0o644)
    private_file(old)
    assert modes(tmp_path, "outbox.sqlite3*") == {0o600}
    assert old.read_bytes() == b"x"  # content untouched
    d = tmp_path / "a-directory.sqlite3"
    d.mkdir(mode=0o755)
    private_file(d)
    assert d.stat().st_mode & 0o777 == 0o755  # left for the opener to report
