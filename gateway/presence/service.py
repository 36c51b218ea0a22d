"""I/O glue for presence and privacy inside the daemon.

Builds the pure parts synchronously (keyring, identity resolver, qualifier, presence engine) so the
pipeline can be constructed at once, then ``open()`` attaches the disk state: the opt-out key file,
the presence database (opt-out digests, visit history for qualification) and a first retention
purge. The daemon calls ``record(events)`` for every batch it commits to the outbox (visitor
visits go to the history), ``maintain(now)`` periodically (retention + rotation purge), and
``add_optout`` / ``put_consent`` / ``revoke_consent`` from the command channel or status page.

The resolver, engine and qualifier are pipeline state: the daemon runs the pipeline on a thread
of its own (``gateway.runtime.worker``) and sets ``run_owned`` so that the changes made here
(opt-out, revoked consent, pruning) run on that thread too, in order with the observations.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Protocol, TypeVar

from gateway.config import Settings
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.subjects import ConsentRecord, IdentityResolver, OptOutResult
from gateway.layout import Layout
from gateway.log import get_logger
from gateway.models import EventBase
from gateway.presence.engine import PresenceEngine
from gateway.presence.qualification import DAY_S, Qualifier
from gateway.presence.store import PresenceStore, load_or_create_key

log = get_logger(__name__)

MAINTENANCE_INTERVAL_S = 60.0

T = TypeVar("T")


class OwnerRunner(Protocol):
    """Runs a function where the live identity / presence state is owned; awaits its result."""

    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


async def run_inline(fn: Callable[[], T]) -> T:
    return fn()


def presence_db_path(settings: Settings) -> Path:
    return settings.privacy.presence_db or settings.paths.state_dir / "presence.sqlite3"


def optout_key_path(settings: Settings) -> Path:
    return settings.privacy.optout_key_file or settings.paths.state_dir / "optout.key"


class PresenceService:
    def __init__(self, settings: Settings, layout: Layout) -> None:
        self.settings = settings
        self.keyring = PseudonymKeyring.from_settings(settings.privacy)
        # a placeholder opt-out key until open() loads the persistent one (nothing is resolved before)
        self.resolver = IdentityResolver(
            self.keyring, optout_key=os.urandom(32), consent_scope=settings.privacy.consent_scope
        )
        self.qualifier = Qualifier()
        self.engine = PresenceEngine(
            layout, settings.presence, settings.gateway.store_id, self.resolver.subject_kind, qualifier=self.qualifier
        )
        self.store: PresenceStore | None = None
        self._last_pseudonym_since = -math.inf
        # called with each subject an opt-out erases, after presence forgot it (through run_owned)
        self.forget_hooks: list[Callable[[str], None]] = []
        # where changes to the resolver / engine / qualifier run (the daemon: its pipeline thread)
        self.run_owned: OwnerRunner = run_inline

    async def open(self, now: float) -> None:
        key = await load_or_create_key(optout_key_path(self.settings))
        self.store = await PresenceStore.open(presence_db_path(self.settings))
        digests = await self.store.optout_digests()
        self.resolver.set_optout_key(key)
        self.resolver.add_optout_digests(digests)
        since = self._pseudonym_since(now)
        purged = await self.store.purge(now, pseudonym_since=since, retention_days=self.settings.privacy.retention_days)
        hist = await self.store.load_history(
            now, pseudonym_since=since, retention_days=self.settings.privacy.retention_days
        )
        self.qualifier.load(hist)
        self._last_pseudonym_since = since
        log.info("presence state loaded", optouts=len(digests), history_visits=len(hist), purged=purged)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None
        self.keyring.forget_all()

    def _pseudonym_since(self, now: float) -> float:
        return self.keyring.epoch_bounds(now)[1]

    async def record(self, events: Sequence[EventBase]) -> None:
        """Store the visitor visits among events being committed (history for qualification)."""
        if self.store is not None and events:
            await self.store.record_visits(events)

    async def maintain(self, now: float) -> int:
        """Retention purge by age, and pseudonymous history of finished rotation periods."""
        if self.store is None or not math.isfinite(now):
            return 0
        since = self._pseudonym_since(now)
        retention = self.settings.privacy.retention_days
        n = await self.store.purge(now, pseudonym_since=since, retention_days=retention)
        await self.run_owned(partial(self.qualifier.prune, pseudonym_since=since, older_than=now - retention * DAY_S))
        if since != self._last_pseudonym_since:
            self._last_pseudonym_since = since
            log.info("pseudonym rotation period started; pseudonymous history purged", purged=n)
        return n

    async def run_maintenance(self, clock: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            await self.maintain(clock())

    async def add_optout(self, identifier: str, now: float) -> int:
        """Opt out a MAC / IRK / app token / customer ref: drops it from the next observation on,
        erases live presence state and stored history. Returns how many subjects were erased."""
        res = await self.run_owned(partial(self._optout_live, identifier, now))
        if self.store is not None:
            await self.store.add_optouts(res.digests, now)
            for subject in res.subjects:
                await self.store.forget_subject(subject)
        log.info("opt-out added", digests=len(res.digests), subjects_erased=len(res.subjects))
        return len(res.subjects)

    def _optout_live(self, identifier: str, now: float) -> OptOutResult:
        res = self.resolver.add_optout(identifier, now)
        for subject in res.subjects:
            self.engine.forget(subject)
            for hook in self.forget_hooks:  # the daemon's other stages (localizer, queued events)
                hook(subject)
        return res

    def _revoke_live(self, customer_ref: str) -> int:
        n = self.resolver.revoke_consent(customer_ref)
        self.qualifier.forget(customer_ref)
        return n

    def put_consent(self, record: ConsentRecord) -> None:
        self.resolver.put_consent(record)

    async def revoke_consent(self, customer_ref: str) -> int:
        """Withdrawn consent: the device falls back to daily pseudonyms from the next observation,
        and the customer's cross-day history (kept only because of the consent) is erased."""
        n = await self.run_owned(partial(self._revoke_live, customer_ref))
        if self.store is not None:
            await self.store.forget_subject(customer_ref)
        log.info("consent revoked", links=n)
        return n
