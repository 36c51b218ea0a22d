"""Technician authentication: credential file, sessions, CSRF tokens, login throttling.

* The credential is one JSON file written at provisioning (``gateway status set-password``):
  ``{"user": "...", "hash": "$argon2id$..."}``. Argon2id is memory-hard, so a stolen file is
  expensive to brute-force. Its parameters are OWASP's for argon2id (19 MiB, 2 passes, 1 lane;
  Password Storage Cheat Sheet): a box of 512 MB-1 GB keeps 45 MiB it would lend to each login with
  argon2-cffi's default (64 MiB, RFC 9106's second choice), and online guessing is bounded by the
  throttle below long before the hash's cost matters. Verification reads the parameters from the
  stored hash (an older 64 MiB hash still verifies; re-provisioning re-hashes it), costs ~20 ms of
  CPU, and runs in an executor behind a semaphore (never on the event loop, never many at once).
* Sessions are random 256-bit ids held in RAM only (a daemon restart logs everyone out, which is
  what a box on a shop LAN wants), each with its own CSRF token and an absolute + idle expiry.
* ``LoginThrottle`` locks a client address out for exponentially longer after repeated
  failures, so online guessing is slow even before argon2's cost.

The session store and throttle are pure: time is an argument, so tests drive the clock.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import sys
import tempfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MAX_USER_LEN = 64
MAX_PASSWORD_LEN = 1024
MIN_PASSWORD_LEN = 8

# OWASP Password Storage Cheat Sheet, argon2id: m=19 MiB, t=2, p=1 (see the module docstring)
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1


def password_hasher() -> PasswordHasher:
    """The one argon2id hasher of the product (provisioning and the status page)."""
    return PasswordHasher(time_cost=ARGON2_TIME_COST, memory_cost=ARGON2_MEMORY_KIB, parallelism=ARGON2_PARALLELISM)


_HASHER = password_hasher()
_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """Verified against when there is no credential, so that case costs as much as a wrong password."""
    if not _DUMMY:
        _DUMMY.append(str(_HASHER.hash(secrets.token_hex(16))))
    return _DUMMY[0]


class CredentialError(ValueError):
    """The credential file is missing, unreadable or malformed (message names the problem)."""


@dataclass(slots=True, frozen=True)
class Credential:
    user: str
    hash: str


def hash_password(pw: str) -> str:
    """Argon2id encoded hash (parameters and salt are inside the string)."""
    if not MIN_PASSWORD_LEN <= len(pw) <= MAX_PASSWORD_LEN:
        raise ValueError(f"password must be {MIN_PASSWORD_LEN}..{MAX_PASSWORD_LEN} characters")
    return str(_HASHER.hash(pw))


def verify_password(cred: Credential | None, user: str, pw: str) -> bool:
    """Constant-work check of user + password (CPU-heavy: call it from an executor)."""
    if len(pw) > MAX_PASSWORD_LEN or len(user) > MAX_USER_LEN:
        return False
    target = cred.hash if cred is not None else _dummy_hash()
    try:
        ok = bool(_HASHER.verify(target, pw))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    user_ok = cred is not None and hmac.compare_digest(cred.user.encode(), user.encode())
    return ok and user_ok


def write_credential(path: str | Path, user: str, pw: str) -> None:
    """Write the credential file atomically with mode 0600 (hash only; the password is not kept)."""
    if not user or len(user) > MAX_USER_LEN or any(c.isspace() for c in user):
        raise ValueError(f"user must be 1..{MAX_USER_LEN} characters without spaces")
    p = Path(path)
    data = json.dumps({"user": user, "hash": hash_password(pw)}) + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".cred-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_credential(path: str | Path) -> Credential:
    p = Path(path)
    try:
        raw = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CredentialError(f"{p}: cannot read credential: {e.strerror}") from None
    except UnicodeDecodeError:
        raise CredentialError(f"{p}: credential is not UTF-8") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CredentialError(f"{p}: not JSON (line {e.lineno} col {e.colno})") from None
    if not isinstance(data, dict):
        raise CredentialError(f"{p}: expected a JSON object")
    user, h = data.get("user"), data.get("hash")
    if not isinstance(user, str) or not user:
        raise CredentialError(f"{p}: field 'user' missing or not a string")
    if not isinstance(h, str) or not h.startswith("$argon2id$"):
        raise CredentialError(f"{p}: field 'hash' missing or not an argon2id hash")
    return Credential(user=user, hash=h)


# ---------------------------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    sid: str
    user: str
    csrf: str
    created: float
    last_seen: float


class SessionStore:
    """In-RAM sessions with absolute and idle expiry; bounded (oldest evicted first)."""

    def __init__(self, ttl_s: float = 8 * 3600.0, idle_s: float = 3600.0, max_sessions: int = 32) -> None:
        self.ttl_s = ttl_s
        self.idle_s = idle_s
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def create(self, user: str, now: float) -> Session:
        s = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), now, now)
        self._sessions[s.sid] = s
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return s

    def get(self, sid: str | None, now: float) -> Session | None:
        """The live session for ``sid`` (touching its idle timer), or None if unknown/expired."""
        if not sid or len(sid) > 128:
            return None
        s = self._sessions.get(sid)
        if s is None:
            return None
        if now - s.created > self.ttl_s or now - s.last_seen > self.idle_s:
            del self._sessions[sid]
            return None
        s.last_seen = now
        return s

    def alive(self, sid: str, now: float) -> bool:
        """Still valid, without touching the idle timer (the live stream must not keep it alive)."""
        s = self._sessions.get(sid)
        return s is not None and now - s.created <= self.ttl_s and now - s.last_seen <= self.idle_s

    def delete(self, sid: str) -> None:
        self._sessions.pop(sid, None)

    def __len__(self) -> int:
        return len(self._sessions)


def csrf_ok(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(session.csrf.encode(), token.encode())


# ---------------------------------------------------------------------------------------------
# Login throttling
# ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Attempts:
    failures: int = 0
    locked_until: float = 0.0
    last: float = 0.0


class LoginThrottle:
    """Per-address exponential lockout: after ``free`` failures each further failure locks the
    address for ``base_s * 2**(k)`` seconds (capped at ``max_s``). Success clears the record.
    Bounded: the least recently seen addresses are forgotten beyond ``max_clients``."""

    def __init__(self, free: int = 3, base_s: float = 1.0, max_s: float = 900.0, max_clients: int = 4096) -> None:
        self.free = free
        self.base_s = base_s
        self.max_s = max_s
        self.max_clients = max_clients
        self._by_addr: OrderedDict[str, _Attempts] = OrderedDict()

    def retry_after(self, addr: str, now: float) -> float:
        """Seconds until ``addr`` may try again (0: allowed now)."""
        a = self._by_addr.get(addr)
        if a is None:
            return 0.0
        return max(0.0, a.locked_until - now)

    def failure(self, addr: str, now: float) -> float:
        """Record a failed attempt; return the lockout it earned (0 if still within ``free``)."""
        a = self._by_addr.pop(addr, None) or _Attempts()
        # a long quiet period forgives old failures
        if a.failures and now - a.last > self.max_s * 2:
            a.failures = 0
        a.failures += 1
        a.last = now
        lock = 0.0
        if a.failures > self.free:
            lock = min(self.max_s, self.base_s * 2.0 ** (a.failures - self.free - 1))
            a.locked_until = now + lock
        self._by_addr[addr] = a
        while len(self._by_addr) > self.max_clients:
            self._by_addr.popitem(last=False)
        return lock

    def success(self, addr: str) -> None:
        self._by_addr.pop(addr, None)


# ---------------------------------------------------------------------------------------------
# CLI: gateway status set-password
# ---------------------------------------------------------------------------------------------


def set_password_command(args: argparse.Namespace) -> int:
    """``gateway status set-password --file F --user U`` (password: first line of stdin)."""
    pw = sys.stdin.readline().rstrip("\r\n")
    try:
        write_credential(args.file, args.user, pw)
    except ValueError as e:
        print(f"set-password: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"set-password: cannot write {args.file}: {e.strerror}", file=sys.stderr)
        return 1
    print(f"{args.file}: credential for {args.user!r} written")
    return 0
