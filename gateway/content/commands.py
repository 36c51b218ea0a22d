"""Typed, versioned commands from the platform (MQTT ``<prefix>/<store>/<gateway>/commands``).

Envelope (JSON object)::

    {"v": 1, "id": "c-123", "kind": "campaigns.put", "revision": 7, "issued_at": 1767261600.0,
     "issuer": "platform", "body": {...}, "sig": "<hex hmac-sha256>"}

* ``kind`` selects the body model (one pydantic model per command).
* ``revision`` is monotonic per *state kind* (campaigns, consents, optouts, actors, config); a
  command whose revision is not greater than the last applied one for its kind is rejected as
  replayed/stale, except an exact re-delivery (same id and revision), which is acknowledged again
  without changing anything (MQTT QoS 1 is at-least-once). ``ping`` carries no state.
* Authorization: the broker ACL is the primary control (only the platform may publish to a
  gateway's command topic). When a shared secret is configured (``content.command_secret_file``)
  every command must also carry ``sig`` = hex HMAC-SHA256(secret, canonical JSON of the envelope
  without ``sig``), canonical = ``json.dumps(sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)``; ``issuer`` must then be in the allowed issuers.

`decode_command` never raises: it returns a `Command` or a `CommandError` with a JSON pointer
(``/body/segment/zone``) and a reason. Replies are `CommandReply`.
"""

from __future__ import annotations

import hmac
import json
import math
from hashlib import sha256
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.content.rules import Actor, Campaign, ConsentScope, Ident, Tag

COMMAND_VERSION: Literal[1] = 1
MAX_COMMAND_BYTES = 256 * 1024

StateKind = Literal["campaigns", "consents", "optouts", "actors", "config"]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CampaignsPut(Body):
    campaign: Campaign


class CampaignsDelete(Body):
    campaign_id: Ident


class ConsentsPut(Body):
    """A customer's consent: the identifier that lets the box recognise them (BLE IRK or app token,
    RAM/encrypted only), their reference at the platform, what staff may see, and segment tags."""

    customer_ref: Ident
    irk_hex: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{32}$", description="BLE IRK (16 bytes hex)")
    app_token: str | None = Field(default=None, min_length=8, max_length=256, pattern=r"^[A-Za-z0-9_.:=+/-]+$")
    scope: list[ConsentScope] = Field(default_factory=list, description="What staff devices may receive")
    tags: list[Tag] = Field(default_factory=list, max_length=100)
    first_name: str | None = Field(default=None, min_length=1, max_length=80)

    @model_validator(mode="after")
    def _identifier(self) -> ConsentsPut:
        if (self.irk_hex is None) == (self.app_token is None):
            raise ValueError("exactly one of irk_hex or app_token is required")
        return self


class ConsentsRevoke(Body):
    customer_ref: Ident


class OptoutsPut(Body):
    """Subjects (daily pseudonyms or customer refs) that must never trigger content."""

    subjects: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(min_length=1, max_length=10_000)


class ActorsPut(Body):
    actor: Actor


class PresencePatch(Body):
    enter_debounce_s: float | None = Field(default=None, ge=0, le=600)
    exit_debounce_s: float | None = Field(default=None, ge=0, le=600)
    visit_timeout_s: float | None = Field(default=None, gt=0, le=86400)
    visitor_min_s: float | None = Field(default=None, ge=0, le=86400)


class LogPatch(Body):
    level: Literal["debug", "info", "warning", "error"] | None = None


class ConfigPatch(Body):
    """The only settings the platform may change remotely (everything else needs a config file)."""

    presence: PresencePatch | None = None
    log: LogPatch | None = None


class Ping(Body):
    note: str | None = Field(default=None, max_length=200)


BODIES: dict[str, type[Body]] = {
    "campaigns.put": CampaignsPut,
    "campaigns.delete": CampaignsDelete,
    "consents.put": ConsentsPut,
    "consents.revoke": ConsentsRevoke,
    "optouts.put": OptoutsPut,
    "actors.put": ActorsPut,
    "config.patch": ConfigPatch,
    "ping": Ping,
}
CommandKind = Literal[
    "campaigns.put",
    "campaigns.delete",
    "consents.put",
    "consents.revoke",
    "optouts.put",
    "actors.put",
    "config.patch",
    "ping",
]


def state_kind(kind: str) -> StateKind | None:
    head = kind.split(".", 1)[0]
    return head if head in ("campaigns", "consents", "optouts", "actors", "config") else None  # type: ignore[return-value]


class CommandEnvelope(BaseModel):
    """The wire envelope; ``body`` is validated by the model of ``kind`` (see BODIES)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1]
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    kind: CommandKind
    revision: int = Field(default=0, ge=0, le=2**53, description="Monotonic per state kind; unused by ping")
    issued_at: float = Field(description="Unix s at the platform")
    issuer: str | None = Field(default=None, max_length=64)
    body: dict[str, Any] = Field(default_factory=dict)
    sig: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class Command(BaseModel):
    """A decoded, authenticated command (revision checks happen against stored state)."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: CommandKind
    revision: int
    issued_at: float
    issuer: str | None
    body: Body

    @property
    def state_kind(self) -> StateKind | None:
        return state_kind(self.kind)


class ReplyError(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="JSON pointer into the command ('' = the whole message)")
    reason: str


class CommandReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = COMMAND_VERSION
    id: str | None = Field(description="The command id, when it could be read")
    ok: bool
    error: ReplyError | None = None
    applied_revision: int | None = Field(default=None, description="Last applied revision of the command's kind")


class CommandError(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str | None
    path: str
    reason: str

    def reply(self, applied_revision: int | None = None) -> CommandReply:
        return CommandReply(
            id=self.id,
            ok=False,
            error=ReplyError(path=self.path, reason=self.reason),
            applied_revision=applied_revision,
        )


def canonical(doc: dict[str, Any]) -> bytes:
    """Bytes the HMAC covers: the envelope without ``sig``, sorted keys, no whitespace."""
    return json.dumps(
        {k: v for k, v in doc.items() if k != "sig"}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def sign(doc: dict[str, Any], secret: bytes) -> str:
    return hmac.new(secret, canonical(doc), sha256).hexdigest()


def _pointer(loc: tuple[int | str, ...], prefix: str = "") -> str:
    parts = [str(p).replace("~", "~0").replace("/", "~1") for p in loc]
    return prefix + "".join("/" + p for p in parts)


def _first_error(e: ValidationError, prefix: str = "") -> tuple[str, str]:
    err = e.errors(include_url=False)[0]
    # drop pydantic's internal union/validator tags (e.g. 'function-after[...]') from the path
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    return _pointer(loc, prefix), str(err["msg"])


def _finite(x: Any) -> bool:
    """Reject NaN/Infinity anywhere (json accepts them; they break comparisons and storage)."""
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_finite(v) for v in x.values())
    if isinstance(x, list):
        return all(_finite(v) for v in x)
    return True


def decode_command(
    payload: bytes | str,
    *,
    secret: bytes | None = None,
    issuers: frozenset[str] | None = None,
) -> Command | CommandError:
    """Parse, validate and authenticate one command. Never raises."""
    try:
        return _decode(payload, secret, issuers)
    except Exception as e:  # last-resort guard: a decoder bug must not take the channel down
        return CommandError(id=None, path="", reason=f"internal decoder error ({type(e).__name__})")


def _decode(payload: bytes | str, secret: bytes | None, issuers: frozenset[str] | None) -> Command | CommandError:
    raw = payload.encode("utf-8", "surrogatepass") if isinstance(payload, str) else payload
    if len(raw) > MAX_COMMAND_BYTES:
        return CommandError(id=None, path="", reason=f"command larger than {MAX_COMMAND_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as e:
        return CommandError(id=None, path="", reason=f"not valid JSON: {str(e)[:120]}")
    if not isinstance(doc, dict):
        return CommandError(id=None, path="", reason="command must be a JSON object")
    cid = doc.get("id") if isinstance(doc.get("id"), str) and len(doc["id"]) <= 64 else None
    if not _finite(doc):
        return CommandError(id=cid, path="", reason="NaN/Infinity are not allowed")
    if "v" in doc and doc["v"] != COMMAND_VERSION and isinstance(doc["v"], int) and not isinstance(doc["v"], bool):
        return CommandError(id=cid, path="/v", reason=f"unsupported command version {doc['v']} (this gateway: 1)")
    try:
        env = CommandEnvelope.model_validate(doc)
    except ValidationError as e:
        path, reason = _first_error(e)
        return CommandError(id=cid, path=path, reason=reason)
    cid = env.id
    if secret is not None:
        if env.sig is None:
            return CommandError(id=cid, path="/sig", reason="unauthorized: signature required")
        if not hmac.compare_digest(env.sig, sign(doc, secret)):
            return CommandError(id=cid, path="/sig", reason="unauthorized: bad signature")
    if issuers is not None and env.issuer not in issuers:
        return CommandError(id=cid, path="/issuer", reason="unauthorized: issuer not allowed")
    if env.kind != "ping" and env.revision < 1:
        return CommandError(id=cid, path="/revision", reason="revision must be >= 1 for state commands")
    try:
        body = BODIES[env.kind].model_validate(env.body)
    except ValidationError as e:
        path, reason = _first_error(e, "/body")
        return CommandError(id=cid, path=path, reason=reason)
    return Command(id=cid, kind=env.kind, revision=env.revision, issued_at=env.issued_at, issuer=env.issuer, body=body)


def make_command(
    kind: str,
    body: dict[str, Any],
    *,
    id: str,
    revision: int = 0,
    issued_at: float = 0.0,
    issuer: str | None = "platform",
    secret: bytes | None = None,
) -> bytes:
    """Build a command as the platform would (demo, tests, docs)."""
    doc: dict[str, Any] = {
        "v": 1,
        "id": id,
        "kind": kind,
        "revision": revision,
        "issued_at": issued_at,
        "body": body,
    }
    if issuer is not None:
        doc["issuer"] = issuer
    if secret is not None:
        doc["sig"] = sign(doc, secret)
    return json.dumps(doc).encode()


COMMAND_MODELS: dict[str, type[BaseModel]] = {
    "command-envelope": CommandEnvelope,
    "command-reply": CommandReply,
    **{f"command-{k.replace('.', '-')}": m for k, m in BODIES.items()},
}
