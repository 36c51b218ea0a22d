"""Typed, versioned, signed commands from the platform (MQTT ``<prefix>/<store>/<gateway>/commands``).

Envelope (JSON object)::

    {"v": 1, "id": "c-123", "kind": "campaigns.put", "revision": 7, "aud": "gw-0042-a",
     "issued_at": 1767261600, "expires_at": 1767265200, "issuer": "platform", "alg": "ed25519",
     "body": {...}, "sig": "<hex signature>"}

* ``kind`` selects the body model (one pydantic model per command).
* ``revision`` is monotonic per *state kind* (campaigns, consents, optouts, actors, config); a
  command whose revision is not greater than the last applied one for its kind is rejected as
  replayed/stale, except an exact re-delivery (same id and revision), which is acknowledged again
  without changing anything (MQTT QoS 1 is at-least-once). ``ping`` carries no state.
* Authentication (always on): ``sig`` covers the canonical JSON of the envelope without ``sig``
  (``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``, UTF-8), so it covers
  the audience, the times, the revision and the body. ``alg`` is ``ed25519`` (default: the box holds
  only the platform's *public* key, installed by provisioning, and can forge nothing) or
  ``hmac-sha256`` (an explicit per-gateway shared secret of >= 32 bytes). A gateway with no key
  refuses every command.
* ``aud`` names the target gateway id, or ``"*"`` for a fleet-wide command (accepted only while
  ``content.accept_fleet_commands`` is true): a command signed for one box is refused by another.
* Freshness: ``issued_at`` may be at most ``content.command_clock_skew_s`` in the future, a command
  is refused once ``expires_at`` (+ the skew) has passed, and ``expires_at - issued_at`` may not
  exceed ``content.command_max_lifetime_s``. Replays within the lifetime are caught by the
  revision floor and the seen-id list kept with the outbox (`gateway.content.replay`).

`decode_command` never raises: it returns a `Command` or a `CommandError` with a JSON pointer
(``/body/segment/zone``) and a reason. `parse_command` is the same minus authentication and
freshness (tests and tools only; the daemon always decodes). Replies are `CommandReply`.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.content.rules import Actor, Campaign, ConsentScope, Ident, Tag

COMMAND_VERSION: Literal[1] = 1
MAX_COMMAND_BYTES = 256 * 1024
MIN_HMAC_KEY_BYTES = 32
FLEET_AUDIENCE = "*"

StateKind = Literal["campaigns", "consents", "optouts", "actors", "config"]
SigAlg = Literal["ed25519", "hmac-sha256"]


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
    aud: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_-]*)$")] = Field(
        description="Target gateway id, or '*' for a fleet-wide command"
    )
    issued_at: float = Field(ge=0, description="Unix s at the platform")
    expires_at: float = Field(ge=0, description="Unix s after which the command must not be applied")
    issuer: str | None = Field(default=None, max_length=64)
    alg: SigAlg = Field(description="Signature algorithm: ed25519 (platform key pair) or hmac-sha256 (shared key)")
    body: dict[str, Any] = Field(default_factory=dict)
    sig: str = Field(pattern=r"^[0-9a-f]{64}([0-9a-f]{64})?$", description="Hex signature over the canonical envelope")

    @model_validator(mode="after")
    def _times(self) -> CommandEnvelope:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        return self


class Command(BaseModel):
    """A decoded, authenticated command (revision checks happen against stored state)."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: CommandKind
    revision: int
    issued_at: float
    expires_at: float = math.inf
    aud: str = FLEET_AUDIENCE
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


# --------------------------------------------------------------------------- signatures


def canonical(doc: dict[str, Any]) -> bytes:
    """Bytes the signature covers: the envelope without ``sig``, sorted keys, no whitespace."""
    return json.dumps(
        {k: v for k, v in doc.items() if k != "sig"}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


class Signer(Protocol):
    @property
    def alg(self) -> SigAlg: ...

    def sign(self, message: bytes) -> str: ...


class Verifier(Protocol):
    @property
    def alg(self) -> SigAlg: ...

    def verify(self, message: bytes, sig_hex: str) -> bool: ...


class CommandKeyError(ValueError):
    """A command key file is missing, unreadable, of the wrong kind or too short (one line)."""


@dataclass(frozen=True)
class Ed25519Signer:
    """The platform side (demo stand-in, tests): holds the private key."""

    key: Ed25519PrivateKey
    alg: SigAlg = "ed25519"

    @classmethod
    def generate(cls) -> Ed25519Signer:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> str:
        return self.key.sign(message).hex()

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def private_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass(frozen=True)
class Ed25519Verifier:
    """The gateway side: one or more platform public keys (several during a key rotation)."""

    keys: tuple[Ed25519PublicKey, ...]
    alg: SigAlg = "ed25519"

    def verify(self, message: bytes, sig_hex: str) -> bool:
        if len(sig_hex) != 128:
            return False
        sig = bytes.fromhex(sig_hex)
        for k in self.keys:
            try:
                k.verify(sig, message)
                return True
            except InvalidSignature:
                continue
        return False


@dataclass(frozen=True)
class HmacKey:
    """HMAC-SHA256 with a per-gateway shared key (signs and verifies); only when configured explicitly."""

    secret: bytes
    alg: SigAlg = "hmac-sha256"

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_HMAC_KEY_BYTES:
            raise CommandKeyError(
                f"HMAC command key is {len(self.secret)} bytes; at least {MIN_HMAC_KEY_BYTES} are required"
            )

    def sign(self, message: bytes) -> str:
        return hmac.new(self.secret, message, sha256).hexdigest()

    def verify(self, message: bytes, sig_hex: str) -> bool:
        return hmac.compare_digest(sig_hex, self.sign(message))

    def __repr__(self) -> str:  # never print the key
        return "HmacKey(<redacted>)"


def load_public_keys(pem: bytes, source: str) -> Ed25519Verifier:
    """Every Ed25519 public key in a PEM file (a rotation ships the old and the new key together)."""
    if b"PRIVATE KEY" in pem:
        raise CommandKeyError(f"{source}: holds a PRIVATE key; the gateway must only get the platform's public key")
    blocks = [b for b in pem.split(b"-----END PUBLIC KEY-----") if b"-----BEGIN PUBLIC KEY-----" in b]
    if not blocks:
        raise CommandKeyError(f"{source}: no PEM public key (-----BEGIN PUBLIC KEY-----) in the file")
    keys: list[Ed25519PublicKey] = []
    for b in blocks:
        try:
            k = serialization.load_pem_public_key(b.strip() + b"\n-----END PUBLIC KEY-----\n")
        except ValueError as e:
            raise CommandKeyError(f"{source}: not a valid PEM public key ({e})") from None
        if not isinstance(k, Ed25519PublicKey):
            raise CommandKeyError(f"{source}: holds a {type(k).__name__.removeprefix('_')}, not an Ed25519 key")
        keys.append(k)
    return Ed25519Verifier(tuple(keys))


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CommandKeyError(f"{what} {path}: cannot read ({e.strerror})") from None


def load_verifier(alg: SigAlg, public_key_file: Path | None, secret_file: Path | None) -> Verifier | None:
    """The configured verifier; None when no key is configured (then every command is refused).
    Raises `CommandKeyError` (one line naming the setting and the file) on a bad key file."""
    if alg == "ed25519":
        if public_key_file is None:
            return None
        what = "content.command_public_key_file"
        return load_public_keys(_read_key_file(public_key_file, what), f"{what} {public_key_file}")
    if secret_file is None:
        return None
    what = "content.command_secret_file"
    secret = _read_key_file(secret_file, what).strip()
    if len(secret) < MIN_HMAC_KEY_BYTES:
        raise CommandKeyError(
            f"{what} {secret_file}: key is {len(secret)} bytes; at least {MIN_HMAC_KEY_BYTES} are required"
            " (e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return HmacKey(secret)


@dataclass(frozen=True)
class CommandPolicy:
    """What this gateway accepts: its key, its id (the audience), issuers and the freshness bounds."""

    verifier: Verifier | None
    gateway_id: str
    accept_fleet: bool = True
    issuers: frozenset[str] | None = None
    clock_skew_s: float = 300.0
    max_lifetime_s: float = 86400.0


# --------------------------------------------------------------------------- decoding


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


def _ts(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if 0 <= t < 253402300800 else repr(t)


def decode_command(payload: bytes | str, *, policy: CommandPolicy, now: float) -> Command | CommandError:
    """Parse, validate, authenticate and check the freshness of one command. Never raises."""
    try:
        return _decode(payload, policy, now)
    except Exception as e:  # last-resort guard: a decoder bug must not take the channel down
        return CommandError(id=None, path="", reason=f"internal decoder error ({type(e).__name__})")


def parse_command(payload: bytes | str) -> Command | CommandError:
    """Schema validation only - no signature, audience or time checks. For tests and tools; the
    daemon always goes through `decode_command`."""
    try:
        return _decode(payload, None, 0.0)
    except Exception as e:
        return CommandError(id=None, path="", reason=f"internal decoder error ({type(e).__name__})")


def _decode(payload: bytes | str, policy: CommandPolicy | None, now: float) -> Command | CommandError:
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
    if policy is not None:
        # authenticate before validating anything else: an unauthenticated sender learns nothing
        # about the schema, and nothing it sent is interpreted
        denied = _authenticate(doc, cid, policy)
        if denied is not None:
            return denied
    try:
        env = CommandEnvelope.model_validate(doc)
    except ValidationError as e:
        path, reason = _first_error(e)
        return CommandError(id=cid, path=path, reason=reason)
    cid = env.id
    if policy is not None:
        stale = _check_audience_and_time(env, policy, now)
        if stale is not None:
            return stale
    if env.kind != "ping" and env.revision < 1:
        return CommandError(id=cid, path="/revision", reason="revision must be >= 1 for state commands")
    try:
        body = BODIES[env.kind].model_validate(env.body)
    except ValidationError as e:
        path, reason = _first_error(e, "/body")
        return CommandError(id=cid, path=path, reason=reason)
    return Command(
        id=cid,
        kind=env.kind,
        revision=env.revision,
        issued_at=env.issued_at,
        expires_at=env.expires_at,
        aud=env.aud,
        issuer=env.issuer,
        body=body,
    )


def _authenticate(doc: dict[str, Any], cid: str | None, policy: CommandPolicy) -> CommandError | None:
    v = policy.verifier
    if v is None:
        return CommandError(
            id=cid,
            path="/sig",
            reason="unauthorized: this gateway has no command key (content.command_public_key_file); "
            "every command is refused",
        )
    sig, alg = doc.get("sig"), doc.get("alg")
    if sig is None:
        return CommandError(id=cid, path="/sig", reason="unauthorized: signature required")
    if alg != v.alg:
        return CommandError(id=cid, path="/alg", reason=f"unauthorized: this gateway accepts {v.alg} signatures only")
    if not _hex(sig) or not v.verify(canonical(doc), sig):
        return CommandError(id=cid, path="/sig", reason="unauthorized: bad signature")
    return None


def _hex(s: Any) -> bool:
    return isinstance(s, str) and len(s) in (64, 128) and all(c in "0123456789abcdef" for c in s)


def _check_audience_and_time(env: CommandEnvelope, policy: CommandPolicy, now: float) -> CommandError | None:
    cid = env.id
    if env.aud == FLEET_AUDIENCE:
        if not policy.accept_fleet:
            return CommandError(
                id=cid,
                path="/aud",
                reason="unauthorized: fleet-wide commands are refused (content.accept_fleet_commands)",
            )
    elif env.aud != policy.gateway_id:
        return CommandError(
            id=cid, path="/aud", reason=f"unauthorized: command is for gateway {env.aud!r}, not this one"
        )
    if policy.issuers is not None and env.issuer not in policy.issuers:
        return CommandError(id=cid, path="/issuer", reason="unauthorized: issuer not allowed")
    skew = policy.clock_skew_s
    if env.issued_at > now + skew:
        return CommandError(
            id=cid,
            path="/issued_at",
            reason=f"issued in the future ({_ts(env.issued_at)}; gateway clock {_ts(now)}, allowed skew {skew:g} s)",
        )
    if env.expires_at + skew < now:
        return CommandError(
            id=cid, path="/expires_at", reason=f"expired at {_ts(env.expires_at)} (gateway clock {_ts(now)})"
        )
    if env.expires_at - env.issued_at > policy.max_lifetime_s:
        return CommandError(
            id=cid,
            path="/expires_at",
            reason=f"lifetime {env.expires_at - env.issued_at:g} s is longer than the"
            f" {policy.max_lifetime_s:g} s allowed (content.command_max_lifetime_s)",
        )
    return None


def make_command(
    kind: str,
    body: dict[str, Any],
    *,
    id: str,
    aud: str,
    signer: Signer | None,
    revision: int = 0,
    issued_at: float | None = None,
    ttl_s: float = 600.0,
    expires_at: float | None = None,
    issuer: str | None = "platform",
    alg: str | None = None,
) -> bytes:
    """Build a command as the platform would (demo stand-in, tests, docs). ``signer`` None leaves
    it unsigned (to test refusals); ``alg`` overrides the signer's (to test algorithm confusion)."""
    t = time.time() if issued_at is None else issued_at
    doc: dict[str, Any] = {
        "v": 1,
        "id": id,
        "kind": kind,
        "revision": revision,
        "aud": aud,
        "issued_at": t,
        "expires_at": t + ttl_s if expires_at is None else expires_at,
        "body": body,
    }
    if issuer is not None:
        doc["issuer"] = issuer
    a = alg if alg is not None else (signer.alg if signer is not None else None)
    if a is not None:
        doc["alg"] = a
    if signer is not None:
        doc["sig"] = signer.sign(canonical(doc))
    return json.dumps(doc).encode()


def sign_document(doc: dict[str, Any], signer: Signer) -> dict[str, Any]:
    """``doc`` with ``alg`` and ``sig`` set (replacing any): for tools that edit a command."""
    out = {k: v for k, v in doc.items() if k != "sig"} | {"alg": signer.alg}
    return out | {"sig": signer.sign(canonical(out))}


def read_private_key(pem: bytes, source: str) -> Ed25519Signer:
    try:
        k = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CommandKeyError(f"{source}: not an unencrypted PEM private key ({e})") from None
    if not isinstance(k, Ed25519PrivateKey):
        raise CommandKeyError(f"{source}: not an Ed25519 private key")
    return Ed25519Signer(k)


COMMAND_MODELS: dict[str, type[BaseModel]] = {
    "command-envelope": CommandEnvelope,
    "command-reply": CommandReply,
    **{f"command-{k.replace('.', '-')}": m for k, m in BODIES.items()},
}
