"""Credential file, password hashing, sessions and login throttling (pure parts, clock injected)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from gateway.status.auth import (
    Credential,
    CredentialError,
    LoginThrottle,
    SessionStore,
    csrf_ok,
    hash_password,
    load_credential,
    verify_password,
    write_credential,
)
from tests.conftest import gateway_cmd, gateway_env


def test_hash_is_argon2id_salted_and_verifies() -> None:
    h1, h2 = hash_password("correct horse"), hash_password("correct horse")
    assert h1.startswith("$argon2id$")
    assert "$m=19456,t=2,p=1$" in h1  # memory-hard: OWASP's 19 MiB per guess, a light load on a small box
    assert h1 != h2  # random salt
    cred = Credential("tech", h1)
    assert verify_password(cred, "tech", "correct horse")
    assert not verify_password(cred, "tech", "correct horsE")
    assert not verify_password(cred, "Tech", "correct horse")
    assert not verify_password(None, "tech", "correct horse")
    assert not verify_password(cred, "tech", "x" * 5000)
    with pytest.raises(ValueError, match=r"8\.\.1024"):
        hash_password("short")


def test_credential_file_round_trip_and_mode(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "cred.json"
    write_credential(p, "tech", "s3cret-password")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    data = json.loads(p.read_text())
    assert set(data) == {"user", "hash"}
    assert "s3cret-password" not in p.read_text()
    cred = load_credential(p)
    assert cred.user == "tech"
    assert PasswordHasher().verify(cred.hash, "s3cret-password")
    with pytest.raises(ValueError, match="without spaces"):
        write_credential(p, "te ch", "s3cret-password")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read credential"),
        ("{", r"not JSON \(line 1"),
        ("[]", "expected a JSON object"),
        ('{"hash": "$argon2id$x"}', "field 'user'"),
        ('{"user": "a", "hash": "md5:abc"}', "field 'hash'"),
    ],
)
def test_bad_credential_files_name_the_problem(tmp_path: Path, content: str | None, message: str) -> None:
    p = tmp_path / "cred.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(CredentialError, match=message):
        load_credential(p)


def test_sessions_expire_and_are_bounded() -> None:
    store = SessionStore(ttl_s=100, idle_s=30, max_sessions=3)
    s = store.create("tech", now=0)
    assert len(s.sid) >= 43
    assert s.sid != s.csrf
    assert store.get(s.sid, 20) is s
    assert store.alive(s.sid, 49)
    assert store.get(s.sid, 49) is s
    assert store.get(s.sid, 80) is None  # idle 31 s
    assert store.get(s.sid, 81) is None
    s2 = store.create("tech", 0)
    for t in range(10, 100, 25):
        assert store.get(s2.sid, t) is s2
    assert store.get(s2.sid, 101) is None  # absolute lifetime
    a, b, c, d = (store.create("tech", 200) for _ in range(4))
    assert store.get(a.sid, 201) is None  # oldest evicted beyond max_sessions
    assert all(store.get(x.sid, 201) for x in (b, c, d))
    assert store.get(None, 0) is None
    assert store.get("x" * 500, 0) is None
    assert csrf_ok(b, b.csrf)
    assert not csrf_ok(b, c.csrf)
    assert not csrf_ok(b, None)


def test_throttle_exponential_capped_per_address() -> None:
    t = LoginThrottle(free=2, base_s=1, max_s=8, max_clients=2)
    assert [t.failure("a", 0), t.failure("a", 0)] == [0, 0]
    assert t.retry_after("a", 0) == 0
    locks = []
    now = 0.0
    for _ in range(6):
        lock = t.failure("a", now)
        locks.append(lock)
        assert t.retry_after("a", now) == lock
        now += lock
    assert locks == [1, 2, 4, 8, 8, 8]
    assert t.retry_after("b", 0) == 0  # other clients are unaffected
    t.success("a")
    assert t.retry_after("a", now) == 0
    # a long quiet period forgives old failures
    for _ in range(3):
        t.failure("c", 0)
    assert t.failure("c", 1000) == 0
    # bounded memory: least recently seen address forgotten
    t.failure("x", 0)
    t.failure("y", 0)
    t.failure("z", 0)
    assert "x" not in t._by_addr


def test_set_password_cli(tmp_path: Path) -> None:
    p = tmp_path / "cred.json"
    r = subprocess.run(
        gateway_cmd("status", "set-password", "--file", str(p), "--user", "tech"),
        input="a-long-password\n",
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "a-long-password" not in r.stdout + r.stderr
    assert verify_password(load_credential(p), "tech", "a-long-password")
    r = subprocess.run(
        gateway_cmd("status", "set-password", "--file", str(tmp_path / "x.json"), "--user", "tech"),
        input="short\n",
        capture_output=True,
        text=True,
        env=gateway_env(),
        timeout=60,
    )
    assert r.returncode == 2
    assert "password must be" in r.stderr
    assert not (tmp_path / "x.json").exists()
