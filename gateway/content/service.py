"""Glue between the command channel, the command store, the rules engine and the actor dispatcher.

The daemon calls `handle_command` for each uplink command (it replies on ``.../replies``),
`on_events` with every batch of presence events, and `tick` every second. Dispatches run as
tasks; each finished dispatch becomes an `ActivationReport` handed to ``emit`` (the daemon appends
it to its pending list, so it goes through the durable outbox, offline included).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from gateway.config import Settings
from gateway.content.actors import ActorDispatcher, DispatchResult
from gateway.content.commands import (
    ActorsPut,
    Command,
    CommandError,
    CommandPolicy,
    CommandReply,
    ConfigPatch,
    ConsentsPut,
    ConsentsRevoke,
    ReplyError,
    decode_command,
    load_verifier,
)
from gateway.content.replay import ReplayGuard
from gateway.content.rules import Activation, Caps, ContentContext, CountWindow, RulesEngine, TimeWindow
from gateway.content.store import ContentStore
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.log import configure_logging, get_logger
from gateway.models import ActivationReport, EventBase

log = get_logger(__name__)


class IdentityConsents(Protocol):
    """What content needs from the identity stage: recognise consented customers, forget them, drop
    opted-out people. Content owns the durable consent store (identity keeps consents in RAM only),
    so consents are re-sent at every start; opt-outs are persisted by identity itself (as keyed
    digests), so they are sent once, when the command is applied. The daemon binds it to the
    presence service (``gateway.runtime.daemon.PresenceConsents``): the same opt-out path as the
    status page's."""

    async def add_consent(
        self, customer_ref: str, *, irk: bytes | None, app_token: str | None, scope: frozenset[str]
    ) -> None: ...

    async def revoke_consent(self, customer_ref: str) -> None: ...

    async def add_optout(self, identifier: str) -> None: ...


def default_caps(s: Settings) -> Caps:
    c = s.content
    return Caps(
        per_subject=CountWindow(count=c.cap_per_subject, window_s=c.cap_per_subject_window_s)
        if c.cap_per_subject
        else None,
        per_actor=CountWindow(count=c.cap_per_actor, window_s=c.cap_per_actor_window_s) if c.cap_per_actor else None,
    )


def pseudonym_period(s: Settings) -> Callable[[float], tuple[float, float]]:
    """``ts`` -> (start, end) of its pseudonym rotation period: the rules drop the visit counts
    of past periods' pseudonyms (a pseudonym never comes back)."""
    keyring = PseudonymKeyring.from_settings(s.privacy)  # its calendar only: no key is ever made here

    def bounds(ts: float) -> tuple[float, float]:
        _, start, end = keyring.epoch_bounds(ts)
        return start, end

    return bounds


def command_policy(s: Settings) -> CommandPolicy:
    """What this gateway accepts; raises `CommandKeyError` (one line) on an unusable key file."""
    c = s.content
    return CommandPolicy(
        verifier=load_verifier(c.command_auth, c.command_public_key_file, c.command_secret_file),
        gateway_id=s.gateway.id,
        accept_fleet=c.accept_fleet_commands,
        issuers=frozenset(c.command_issuers) if c.command_issuers else None,
        clock_skew_s=c.command_clock_skew_s,
        max_lifetime_s=c.command_max_lifetime_s,
    )


def parse_quiet_hours(items: Sequence[str]) -> list[TimeWindow]:
    out = []
    for it in items:
        start, _, end = it.partition("-")
        out.append(TimeWindow(start=start.strip(), end=end.strip()))
    return out


class ContentService:
    def __init__(
        self,
        settings: Settings,
        state: ContentStore,
        dispatcher: ActorDispatcher,
        *,
        emit: Callable[[list[EventBase]], None],
        identity: IdentityConsents | None = None,
        reply: Callable[[bytes], Awaitable[None]] | None = None,
        on_activation: Callable[[Activation, DispatchResult], None] | None = None,
        guard: ReplayGuard | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.state = state
        self.dispatcher = dispatcher
        self.emit = emit
        self.identity = identity
        self.reply = reply
        self.on_activation = on_activation
        self.engine = RulesEngine(
            state.campaigns.values(),
            default_caps=default_caps(settings),
            quiet_hours=parse_quiet_hours(settings.content.quiet_hours),
            timezone=settings.content.timezone,
            pseudonym_period=pseudonym_period(settings),
        )
        self.ctx = ContentContext(
            store_id=settings.gateway.store_id, actors=state.actors, consents=state.consents, optouts=state.optouts
        )
        self.policy = command_policy(settings)
        self.guard = guard
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self.replies: list[CommandReply] = []
        self.counters: dict[str, int] = {"commands_ok": 0, "commands_rejected": 0, "activations": 0}

    @classmethod
    async def open(
        cls,
        settings: Settings,
        *,
        emit: Callable[[list[EventBase]], None],
        dispatcher: ActorDispatcher,
        identity: IdentityConsents | None = None,
        reply: Callable[[bytes], Awaitable[None]] | None = None,
        state_path: Path | None = None,
        guard_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> ContentService:
        policy = command_policy(settings)  # a bad key file fails here, before anything is opened
        state = await ContentStore.open(state_path or settings.content_state_path)
        guard: ReplayGuard | None = None
        try:
            # the replay floor lives in the outbox's file: it survives losing content.sqlite3
            guard = await ReplayGuard.open(guard_path or settings.outbox_path, clock())
            rt = cls(settings, state, dispatcher, emit=emit, identity=identity, reply=reply, guard=guard, clock=clock)
            await rt._restore()
        except BaseException:
            await state.close()  # an open aiosqlite thread would keep the failed process alive
            if guard is not None:
                await guard.close()
            raise
        if policy.verifier is None:
            log.warning(
                "content.no_command_key",
                hint="every cloud command is refused until content.command_public_key_file is set (provisioning)",
            )
        return rt

    async def _restore(self) -> None:
        """Re-apply persisted state to the identity resolver and live settings after a restart."""
        if self.identity is not None:
            for sec in await self.state.consent_secrets():
                info = self.state.consents.get(sec.customer_ref)
                scope = info.scope if info is not None else frozenset()
                await self.identity.add_consent(sec.customer_ref, irk=sec.irk, app_token=sec.app_token, scope=scope)
        self._apply_config()

    def _apply_config(self) -> None:
        for key, val in self.state.config.get("presence", {}).items():
            setattr(self.settings.presence, key, val)
        level = self.state.config.get("log", {}).get("level")
        if level and level != self.settings.log.level:
            self.settings.log.level = level
            configure_logging(level, self.settings.log.format)

    # -- commands ---------------------------------------------------------------------------

    async def handle_command(self, _topic: str, payload: bytes) -> CommandReply:
        now = self.clock()
        decoded = decode_command(payload, policy=self.policy, now=now)
        if isinstance(decoded, CommandError):
            reply = decoded.reply()
        else:
            try:
                reply, changed = await self._apply(decoded, now)
            except Exception as e:  # storage failure: report, change nothing in memory
                log.error("content.command_store_failed", id=decoded.id, error=type(e).__name__)
                reply = CommandError(id=decoded.id, path="", reason="gateway storage error").reply()
                changed = False
            if changed:
                await self._side_effects(decoded)
        self.counters["commands_ok" if reply.ok else "commands_rejected"] += 1
        log.info(
            "content.command",
            id=reply.id,
            ok=reply.ok,
            error=reply.error.reason if reply.error else None,
            path=reply.error.path if reply.error else None,
        )
        self.replies.append(reply)
        del self.replies[:-100]
        if self.reply is not None:
            with contextlib.suppress(Exception):  # replies are best effort; the platform retries
                await self.reply(reply.model_dump_json().encode())
        return reply

    def _refuse(self, cmd: Command, path: str, reason: str, applied: int | None = None) -> tuple[CommandReply, bool]:
        return CommandReply(
            id=cmd.id, ok=False, error=ReplyError(path=path, reason=reason), applied_revision=applied
        ), False

    async def _apply(self, cmd: Command, now: float) -> tuple[CommandReply, bool]:
        """Replay checks against the persisted floor, the URL policy, then the store."""
        guard, kind = self.guard, cmd.state_kind
        if guard is not None:
            # strict (no skew allowance): a command issued before a wipe must never apply after it;
            # a platform clock behind ours only delays new commands by that much (they are re-issued)
            if cmd.issued_at < guard.epoch:
                return self._refuse(
                    cmd,
                    "/issued_at",
                    "issued before this gateway's command history began"
                    f" ({time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(guard.epoch))}: its state was reset);"
                    " re-issue it",
                    self.state.applied_revision(kind),
                )
            if kind is None:  # ping: no state; a re-delivered id is acknowledged again, nothing else
                if not guard.seen_before(cmd.id):
                    await guard.record(cmd.id, None, 0, cmd.issued_at, cmd.expires_at, now)
                return CommandReply(id=cmd.id, ok=True), False
            floor = guard.floor(kind)
            last_rev, last_id = self.state.revisions.get(kind, (0, ""))
            if floor is not None and cmd.revision <= floor.revision and (cmd.revision, cmd.id) != (last_rev, last_id):
                reason = f"stale revision {cmd.revision}: {kind} already at revision {floor.revision}"
                if last_rev < floor.revision:
                    reason += " (the command state was reset since; re-issue with a new revision)"
                return self._refuse(cmd, "/revision", reason, floor.revision)
        if isinstance(cmd.body, ActorsPut) and cmd.body.actor.url is not None:
            why = self.dispatcher.url_policy.check_url(cmd.body.actor.url)
            if why is not None:
                return self._refuse(cmd, "/body/actor/url", f"url policy: {why}", self.state.applied_revision(kind))
        reply, changed = await self.state.apply(cmd, now)
        if changed and guard is not None:
            try:
                await guard.record(cmd.id, kind, cmd.revision, cmd.issued_at, cmd.expires_at, now)
            except Exception as e:  # applied already; the store's own revision still guards this kind
                log.error("content.replay_floor_not_saved", id=cmd.id, error=type(e).__name__)
        return reply, changed

    async def _side_effects(self, cmd: Command) -> None:
        b = cmd.body
        self.engine.set_campaigns(self.state.campaigns.values())
        self.ctx.optouts = self.state.optouts
        if self.identity is not None:
            try:
                if isinstance(b, ConsentsPut):
                    irk = bytes.fromhex(b.irk_hex) if b.irk_hex else None
                    await self.identity.add_consent(
                        b.customer_ref, irk=irk, app_token=b.app_token, scope=frozenset(b.scope)
                    )
                elif isinstance(b, ConsentsRevoke):
                    await self.identity.revoke_consent(b.customer_ref)
                elif cmd.kind == "optouts.put":
                    for s in getattr(b, "subjects", []):
                        await self.identity.add_optout(s)
            except Exception as e:  # stored already; identity re-reads consents at next start
                log.error("content.identity_update_failed", kind=cmd.kind, error=type(e).__name__)
        if isinstance(b, ConfigPatch):
            self._apply_config()

    # -- activations -------------------------------------------------------------------------

    def on_events(self, events: Sequence[EventBase], now: float | None = None) -> list[Activation]:
        out: list[Activation] = []
        for ev in events:
            out += self.engine.evaluate(ev, ev.ts if now is None else now, self.ctx)
        if events:
            out += self.engine.tick(max(e.ts for e in events) if now is None else now, self.ctx)
        self._launch(out)
        return out

    @staticmethod
    async def let_dispatch_run() -> None:
        """Yield twice: once so the new dispatch tasks publish, once so the event loop writes
        their packets to the socket - before the caller processes the next (possibly large)
        batch. Without it, under load an activation waits for a whole extra batch."""
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def tick(self, now: float) -> list[Activation]:
        out = self.engine.tick(now, self.ctx)
        self._launch(out)
        return out

    def _launch(self, acts: list[Activation]) -> None:
        for a in acts:
            t = asyncio.create_task(self._dispatch(a), name=f"activation:{a.campaign_id}")
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _dispatch(self, a: Activation) -> None:
        actor = self.ctx.actors.get(a.actor_id)
        if actor is None:
            res = DispatchResult("skipped", "actor removed")
        else:
            res = await self.dispatcher.dispatch(a, actor)
        self.counters["activations"] += 1
        if self.on_activation is not None:
            self.on_activation(a, res)
        self.emit(
            [
                ActivationReport(
                    event_id=a.activation_id,
                    ts=a.ts,
                    store_id=self.settings.gateway.store_id,
                    campaign_id=a.campaign_id,
                    content_id=a.content_id,
                    actor_id=a.actor_id,
                    subject=a.subject,
                    subject_kind=a.subject_kind,
                    result=res.result,
                    detail=res.detail,
                )
            ]
        )

    async def drain(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await self.dispatcher.close()
        await self.state.close()
        if self.guard is not None:
            await self.guard.close()
