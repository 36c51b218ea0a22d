"""Presence runtime glue: key + DB on open, visit history, opt-out erasure, consent revocation."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.identity.subjects import ConsentRecord, irk_link
from gateway.layout import load_layout
from gateway.models import Observation, VisitEnded
from gateway.presence.service import PresenceService, optout_key_path, presence_db_path

LAYOUT = load_layout(Path(__file__).resolve().parents[3] / "hardware/layouts/demo-store.toml")
T = 1_767_261_600.0
IRK = bytes(range(16))


@pytest.fixture
async def runtimes() -> AsyncIterator[list[PresenceService]]:
    """Runtimes to close even when an assertion fails (an open aiosqlite thread blocks exit)."""
    made: list[PresenceService] = []
    yield made
    for rt in made:
        await rt.close()


def visit(subject: str, kind: str = "pseudonym") -> VisitEnded:
    return VisitEnded(
        ts=T,
        store_id="demo-store",
        subject=subject,
        subject_kind=kind,  # type: ignore[arg-type]
        started_ts=T - 300,
        duration_s=300,
        visitor=True,
        dwell_by_zone={"grocery": 300.0},
    )


async def test_open_record_optout_and_restart(tmp_path: Path, runtimes: list[PresenceService]) -> None:
    s = Settings(paths={"state_dir": tmp_path})  # type: ignore[arg-type]
    rt = PresenceService(s, LAYOUT)
    runtimes.append(rt)
    await rt.open(T)
    assert stat.S_IMODE(os.stat(optout_key_path(s)).st_mode) == 0o600
    mac = "5A:01:02:03:04:05"
    subj = rt.resolver.resolve_batch([Observation(T, "n11", mac, -60.0)], T)[0].device
    await rt.record([visit(subj), visit("other")])
    assert rt.store is not None
    assert (await rt.store.counts())["visits"] == 2
    assert await rt.add_optout(mac, T) >= 1
    assert (await rt.store.counts()) == {"visits": 1, "optouts": 2}
    assert rt.resolver.resolve_batch([Observation(T + 1, "n11", mac, -60.0)], T + 1) == []
    await rt.close()
    assert mac.encode() not in presence_db_path(s).read_bytes()

    # after a restart the opt-out still holds (same key file, stored digests) and history reloads
    rt2 = PresenceService(s, LAYOUT)
    runtimes.append(rt2)
    await rt2.open(T + 60)
    assert rt2.resolver.resolve_batch([Observation(T + 61, "n11", mac.lower(), -60.0)], T + 61) == []
    assert len(rt2.qualifier.history("other")) == 1
    await rt2.close()


async def test_consent_revocation_erases_customer_history(tmp_path: Path, runtimes: list[PresenceService]) -> None:
    s = Settings(paths={"state_dir": tmp_path})  # type: ignore[arg-type]
    rt = PresenceService(s, LAYOUT)
    runtimes.append(rt)
    await rt.open(T)
    rt.put_consent(ConsentRecord("cust-9", frozenset({"presence"}), irk=IRK))
    o = Observation(T, "n11", "5A:00:00:00:00:01", -60.0, "ble", None, irk_link(IRK))
    assert rt.resolver.resolve_batch([o], T)[0].device == "cust-9"
    assert rt.engine._kind_of_subject("cust-9") == "customer"
    await rt.record([visit("cust-9", "customer")])
    assert await rt.revoke_consent("cust-9") == 1
    assert rt.store is not None
    assert (await rt.store.counts())["visits"] == 0
    assert rt.resolver.resolve_batch([o], T)[0].device != "cust-9"
    await rt.close()


async def test_maintenance_purges_past_rotation_periods(tmp_path: Path, runtimes: list[PresenceService]) -> None:
    s = Settings(paths={"state_dir": tmp_path})  # type: ignore[arg-type]
    rt = PresenceService(s, LAYOUT)
    runtimes.append(rt)
    await rt.open(T)
    await rt.record([visit("p-today"), visit("cust-1", "customer")])
    assert await rt.maintain(T + 60) == 0
    assert await rt.maintain(T + 86400) == 1  # the next rotation period: pseudonymous rows go
    assert rt.store is not None
    assert (await rt.store.counts())["visits"] == 1
    assert await rt.maintain(T + 31 * 86400) == 1  # retention (30 d) takes the customer row
    await rt.close()
