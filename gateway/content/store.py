"""Durable command state (aiosqlite): campaigns, consents, opt-outs, actors, config patches and the
last applied revision per state kind. It is the single store of *command state*; other modules
(identity, rules) read it through the getters.

`apply(cmd)` checks the revision and writes the change and the new revision in one transaction,
so a crash never leaves a change applied without its revision (or the reverse) and a re-delivered
command is recognised (same id + revision -> acknowledged again, nothing changes).

Consent identifiers (IRK, app token) are encrypted at rest with a Fernet key kept in
``<state_dir>/content.key`` (mode 0600) and are never logged; `consent_secrets()` decrypts them
for the identity resolver only.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite
from cryptography.fernet import Fernet

from gateway.content.commands import (
    ActorsPut,
    CampaignsDelete,
    CampaignsPut,
    Command,
    CommandReply,
    ConfigPatch,
    ConsentsPut,
    ConsentsRevoke,
    OptoutsPut,
    ReplyError,
    StateKind,
)
from gateway.content.rules import Actor, Campaign, ConsentInfo
from gateway.log import get_logger
from gateway.storage import SMALL_WAL_AUTOCHECKPOINT_PAGES, SMALL_WAL_SIZE_LIMIT, is_disk_full

log = get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (kind TEXT PRIMARY KEY, revision INTEGER NOT NULL, command_id TEXT NOT NULL,
                                    applied_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consents (customer_ref TEXT PRIMARY KEY, doc TEXT NOT NULL, secret BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS optouts (subject TEXT PRIMARY KEY, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS actors (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config (section TEXT PRIMARY KEY, doc TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class ConsentSecret:
    """RAM only: what the identity resolver needs to recognise a consented customer."""

    customer_ref: str
    irk: bytes | None
    app_token: str | None

    def __repr__(self) -> str:  # never print identifiers
        return f"ConsentSecret(customer_ref={self.customer_ref!r}, irk=<redacted>, app_token=<redacted>)"


def _load_key(path: Path) -> bytes:
    if path.exists():
        return path.read_bytes().strip()
    key = Fernet.generate_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
    except OSError:  # a full disk: leave no empty key file behind (it would fail every start)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return key


async def _connect(path: Path) -> aiosqlite.Connection:
    """Open in WAL mode with a small WAL (this store writes little; on a small state partition a
    WAL left to grow to SQLite's default 4 MiB fills the disk). On a disk too full for the -shm
    index, open in exclusive locking mode instead (no -shm file): the state still loads."""
    for exclusive in (False, True):
        db = await aiosqlite.connect(path)
        try:
            if exclusive:
                await db.execute("PRAGMA locking_mode=EXCLUSIVE")
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute(f"PRAGMA wal_autocheckpoint={SMALL_WAL_AUTOCHECKPOINT_PAGES}")
            await db.execute(f"PRAGMA journal_size_limit={SMALL_WAL_SIZE_LIMIT}")
            await db.executescript(SCHEMA)
            await db.commit()
        except sqlite3.OperationalError as e:
            await db.close()
            if exclusive or not is_disk_full(e):
                raise
            log.warning("content.store_open_disk_full", reason=str(e))
            continue
        return db
    raise AssertionError("unreachable")  # pragma: no cover


class ContentStore:
    def __init__(self, db: aiosqlite.Connection, fernet: Fernet) -> None:
        self._db = db
        self._f = fernet
        self.campaigns: dict[str, Campaign] = {}
        self.actors: dict[str, Actor] = {}
        self.consents: dict[str, ConsentInfo] = {}
        self.optouts: set[str] = set()
        self.config: dict[str, dict[str, Any]] = {}
        self.revisions: dict[str, tuple[int, str]] = {}

    @classmethod
    async def open(cls, path: Path, key_path: Path | None = None) -> ContentStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        fernet = Fernet(_load_key(key_path or path.with_name("content.key")))
        db = await _connect(path)
        st = cls(db, fernet)
        await st._load()
        return st

    async def close(self) -> None:
        await self._db.close()

    async def _load(self) -> None:
        async with self._db.execute("SELECT kind, revision, command_id FROM applied") as cur:
            self.revisions = {k: (int(r), str(i)) async for k, r, i in cur}
        async with self._db.execute("SELECT doc FROM campaigns") as cur:
            self.campaigns = {c.id: c for c in [Campaign.model_validate_json(d) async for (d,) in cur]}
        async with self._db.execute("SELECT doc FROM actors") as cur:
            self.actors = {a.id: a for a in [Actor.model_validate_json(d) async for (d,) in cur]}
        async with self._db.execute("SELECT doc FROM consents") as cur:
            self.consents = {}
            async for (d,) in cur:
                doc = json.loads(d)
                self.consents[doc["customer_ref"]] = _consent_info(doc)
        async with self._db.execute("SELECT subject FROM optouts") as cur:
            self.optouts = {s async for (s,) in cur}
        async with self._db.execute("SELECT section, doc FROM config") as cur:
            self.config = {s: json.loads(d) async for s, d in cur}

    def applied_revision(self, kind: StateKind | None) -> int | None:
        if kind is None:
            return None
        return self.revisions.get(kind, (0, ""))[0]

    async def consent_secrets(self) -> list[ConsentSecret]:
        out = []
        async with self._db.execute("SELECT customer_ref, secret FROM consents") as cur:
            async for ref, blob in cur:
                d = json.loads(self._f.decrypt(blob))
                irk = bytes.fromhex(d["irk_hex"]) if d.get("irk_hex") else None
                out.append(ConsentSecret(ref, irk, d.get("app_token")))
        return out

    async def apply(self, cmd: Command, now: float | None = None) -> tuple[CommandReply, bool]:
        """Apply a decoded command. Returns the reply and whether state changed."""
        kind = cmd.state_kind
        if kind is None:  # ping
            return CommandReply(id=cmd.id, ok=True, applied_revision=None), False
        last, last_id = self.revisions.get(kind, (0, ""))
        if cmd.revision <= last:
            if cmd.revision == last and cmd.id == last_id:
                return CommandReply(id=cmd.id, ok=True, applied_revision=last), False  # re-delivery
            reason = f"stale revision {cmd.revision}: {kind} already at revision {last}"
            return CommandReply(
                id=cmd.id, ok=False, error=ReplyError(path="/revision", reason=reason), applied_revision=last
            ), False
        b = cmd.body
        db = self._db
        # one transaction: change + revision
        pending: list[tuple[str, tuple[Any, ...]]] = []
        if isinstance(b, CampaignsPut):
            pending.append(
                ("INSERT OR REPLACE INTO campaigns VALUES (?, ?)", (b.campaign.id, b.campaign.model_dump_json()))
            )
        elif isinstance(b, CampaignsDelete):
            pending.append(("DELETE FROM campaigns WHERE id = ?", (b.campaign_id,)))
        elif isinstance(b, ConsentsPut):
            public = {"customer_ref": b.customer_ref, "scope": b.scope, "tags": b.tags, "first_name": b.first_name}
            secret = self._f.encrypt(json.dumps({"irk_hex": b.irk_hex, "app_token": b.app_token}).encode())
            pending.append(
                ("INSERT OR REPLACE INTO consents VALUES (?, ?, ?)", (b.customer_ref, json.dumps(public), secret))
            )
        elif isinstance(b, ConsentsRevoke):
            pending.append(("DELETE FROM consents WHERE customer_ref = ?", (b.customer_ref,)))
        elif isinstance(b, OptoutsPut):
            t = now if now is not None else time.time()
            pending += [("INSERT OR IGNORE INTO optouts VALUES (?, ?)", (s, t)) for s in b.subjects]
        elif isinstance(b, ActorsPut):
            pending.append(("INSERT OR REPLACE INTO actors VALUES (?, ?)", (b.actor.id, b.actor.model_dump_json())))
        elif isinstance(b, ConfigPatch):
            for section in ("presence", "log"):
                patch = getattr(b, section)
                if patch is not None:
                    merged = {**self.config.get(section, {}), **patch.model_dump(exclude_none=True)}
                    pending.append(("INSERT OR REPLACE INTO config VALUES (?, ?)", (section, json.dumps(merged))))
        pending.append(
            (
                "INSERT OR REPLACE INTO applied VALUES (?, ?, ?, ?)",
                (kind, cmd.revision, cmd.id, now if now is not None else time.time()),
            )
        )
        try:
            for sql, args in pending:
                await db.execute(sql, args)
            await db.commit()
        except Exception:
            await db.rollback()
            raise
        self._apply_memory(b)
        self.revisions[kind] = (cmd.revision, cmd.id)
        return CommandReply(id=cmd.id, ok=True, applied_revision=cmd.revision), True

    def _apply_memory(self, b: Any) -> None:
        if isinstance(b, CampaignsPut):
            self.campaigns[b.campaign.id] = b.campaign
        elif isinstance(b, CampaignsDelete):
            self.campaigns.pop(b.campaign_id, None)
        elif isinstance(b, ConsentsPut):
            self.consents[b.customer_ref] = _consent_info(
                {"customer_ref": b.customer_ref, "scope": b.scope, "tags": b.tags, "first_name": b.first_name}
            )
        elif isinstance(b, ConsentsRevoke):
            self.consents.pop(b.customer_ref, None)
        elif isinstance(b, OptoutsPut):
            self.optouts.update(b.subjects)
        elif isinstance(b, ActorsPut):
            self.actors[b.actor.id] = b.actor
        elif isinstance(b, ConfigPatch):
            for section in ("presence", "log"):
                patch = getattr(b, section)
                if patch is not None:
                    self.config[section] = {**self.config.get(section, {}), **patch.model_dump(exclude_none=True)}


def _consent_info(doc: dict[str, Any]) -> ConsentInfo:
    return ConsentInfo(
        customer_ref=doc["customer_ref"],
        scope=frozenset(doc.get("scope") or ()),
        tags=frozenset(doc.get("tags") or ()),
        first_name=doc.get("first_name"),
    )
