"""Glue between the command channel, the command store, the rules engine and the actor dispatcher.

The daemon calls `handle_command` for each uplink command (it replies on ``.../replies``),
`on_events` with every batch of presence events, and `tick` every second. Dispatches run as
tasks; each finished dispatch becomes an `ActivationReport` handed to ``emit`` (the daemon appends
it to its pending list, so it goes through the durable outbox, offline included).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Protocol

from gateway.config import Settings
from gateway.content.actors import ActorDispatcher, DispatchResult
from gateway.content.commands import (
    Command,
    CommandError,
    CommandReply,
    ConfigPatch,
    ConsentsPut,
    ConsentsRevoke,
    decode_command,
)
from gateway.content.rules import Activation, Caps, ContentContext, CountWindow, RulesEngine, TimeWindow
from gateway.content.store import ContentStore
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
        )
        self.ctx = ContentContext(
            store_id=settings.gateway.store_id, actors=state.actors, consents=state.consents, optouts=state.optouts
        )
        secret_file = settings.content.command_secret_file
        self.secret = secret_file.read_bytes().strip() if secret_file is not None else None
        self.issuers = frozenset(settings.content.command_issuers) if settings.content.command_issuers else None
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
    ) -> ContentService:
        state = await ContentStore.open(state_path or settings.content_state_path)
        try:
            rt = cls(settings, state, dispatcher, emit=emit, identity=identity, reply=reply)
            await rt._restore()
        except BaseException:
            await state.close()  # an open aiosqlite thread would keep the failed process alive
            raise
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
        decoded = decode_command(payload, secret=self.secret, issuers=self.issuers)
        if isinstance(decoded, CommandError):
            reply = decoded.reply()
            changed = False
        else:
            try:
                reply, changed = await self.state.apply(decoded)
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
