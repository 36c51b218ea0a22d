"""Command decoder: precise errors, authorization, revisions, and a property test that no
malformed command raises or changes state."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.content.commands import (
    Command,
    CommandError,
    CommandKeyError,
    CommandPolicy,
    Ed25519Signer,
    Ed25519Verifier,
    HmacKey,
    decode_command,
    load_verifier,
    parse_command,
)
from gateway.content.store import ContentStore
from tests.signing import Platform

CAMPAIGN: dict[str, Any] = {
    "campaign": {
        "id": "c1",
        "category": "promo",
        "content_id": "spring",
        "actors": ["screen-1"],
        "segment": {"trigger": "zone.entered", "zone": "shoes"},
    }
}
CONSENT = {
    "customer_ref": "cust-42",
    "irk_hex": "00112233445566778899aabbccddeeff",
    "scope": ["first_name"],
    "tags": ["vip"],
}


NOW = 1_767_261_600.0
PLATFORM = Platform("gw-1")
POLICY = CommandPolicy(verifier=Ed25519Verifier((PLATFORM.signer.key.public_key(),)), gateway_id="gw-1")


def signed(kind: str, body: dict[str, Any], *, id: str, revision: int = 0, **kw: Any) -> bytes:
    return PLATFORM.cmd(kind, body, id=id, revision=revision, issued_at=kw.pop("issued_at", NOW), **kw)


def valid_docs() -> list[dict[str, Any]]:
    return [
        json.loads(signed("campaigns.put", CAMPAIGN, id="a", revision=1)),
        json.loads(signed("consents.put", CONSENT, id="b", revision=1)),
        json.loads(signed("optouts.put", {"subjects": ["p1"]}, id="c", revision=1)),
        json.loads(signed("actors.put", {"actor": {"id": "screen-1", "categories": ["promo"]}}, id="d", revision=1)),
        json.loads(signed("config.patch", {"presence": {"visit_timeout_s": 30}}, id="e", revision=1)),
        json.loads(signed("ping", {}, id="f")),
    ]


def decode(payload: bytes | str, policy: CommandPolicy = POLICY, now: float = NOW) -> Command | CommandError:
    return decode_command(payload, policy=policy, now=now)


def test_every_valid_kind_decodes() -> None:
    for doc in valid_docs():
        got = decode(json.dumps(doc).encode())
        assert isinstance(got, Command), got
        assert isinstance(parse_command(json.dumps(doc)), Command)


def err(payload: bytes | str, policy: CommandPolicy = POLICY, now: float = NOW) -> CommandError:
    got = decode(payload, policy, now)
    assert isinstance(got, CommandError), got
    return got


def test_precise_errors() -> None:
    assert "not valid JSON" in err(b"{nope").reason
    assert err(b"[1]").reason == "command must be a JSON object"
    e = err(
        signed(
            "campaigns.put",
            {"campaign": {**CAMPAIGN["campaign"], "segment": {"trigger": "dwell", "zone": "z"}}},
            id="x",
            revision=1,
        )
    )
    assert e.path == "/body/campaign/segment" and "dwell_s is required" in e.reason and e.id == "x"
    e = err(signed("campaigns.put", {"campaign": {**CAMPAIGN["campaign"], "priority": "high"}}, id="x", revision=1))
    assert e.path == "/body/campaign/priority"
    e = err(json.dumps({**valid_docs()[0], "v": 2}))
    assert e.path == "/v" and "unsupported command version 2" in e.reason
    e = err(signed("launch.missiles", {}, id="x", revision=1))
    assert e.path == "/kind"
    e = err(signed("consents.put", {"customer_ref": "c"}, id="x", revision=1))
    assert e.path == "/body" and "exactly one of irk_hex or app_token" in e.reason
    e = err(signed("campaigns.delete", {"campaign_id": "c1"}, id="x", revision=0))
    assert e.path == "/revision"
    assert err(b'{"v":1,"id":"x","kind":"ping","issued_at":NaN}').reason == "NaN/Infinity are not allowed"


def test_unsigned_forged_and_tampered_commands_are_refused() -> None:
    assert err(signed("ping", {}, id="p", signer=None)).reason == "unauthorized: signature required"
    mallory = Ed25519Signer.generate()
    assert err(signed("ping", {}, id="p", signer=mallory)).reason == "unauthorized: bad signature"
    doc = json.loads(signed("actors.put", {"actor": {"id": "s"}}, id="p", revision=1))
    for field, value in (("body", {"actor": {"id": "evil"}}), ("aud", "*"), ("revision", 99), ("expires_at", NOW + 9)):
        e = err(json.dumps({**doc, field: value}))
        assert (e.path, e.reason) == ("/sig", "unauthorized: bad signature"), field
    e = err(json.dumps({**doc, "sig": "zz"}))
    assert e.path == "/sig"
    # algorithm confusion: an HMAC "signature" keyed with the public key is not accepted
    pub = PLATFORM.signer.public_pem()
    e = err(signed("ping", {}, id="p", signer=HmacKey(pub)))
    assert (e.path, e.reason) == ("/alg", "unauthorized: this gateway accepts ed25519 signatures only")
    # a gateway without a key refuses everything, signed or not
    e = err(signed("ping", {}, id="p"), CommandPolicy(verifier=None, gateway_id="gw-1"))
    assert e.path == "/sig" and "no command key" in e.reason


def test_audience_issuer_and_freshness() -> None:
    e = err(signed("ping", {}, id="p", aud="gw-2"))
    assert (e.path, e.reason) == ("/aud", "unauthorized: command is for gateway 'gw-2', not this one")
    assert isinstance(decode(signed("ping", {}, id="p", aud="*")), Command)
    no_fleet = CommandPolicy(verifier=POLICY.verifier, gateway_id="gw-1", accept_fleet=False)
    assert err(signed("ping", {}, id="p", aud="*"), no_fleet).path == "/aud"
    only_platform = CommandPolicy(verifier=POLICY.verifier, gateway_id="gw-1", issuers=frozenset({"platform"}))
    assert err(signed("ping", {}, id="p", issuer="mallory"), only_platform).path == "/issuer"
    # issued in 2100, a year-old command, an expired one, one that would live too long
    e = err(signed("ping", {}, id="p", issued_at=4_102_444_800.0))
    assert e.path == "/issued_at" and "issued in the future (2100-01-01T00:00:00Z" in e.reason
    e = err(signed("ping", {}, id="p", issued_at=NOW - 365 * 86400))
    assert e.path == "/expires_at" and e.reason.startswith("expired at 2025-01-01T")
    e = err(signed("ping", {}, id="p", issued_at=NOW - 3600, ttl_s=600))
    assert e.path == "/expires_at" and "expired" in e.reason
    e = err(signed("ping", {}, id="p", ttl_s=2 * 86400))
    assert e.path == "/expires_at" and "longer than the 86400 s allowed" in e.reason
    e = err(signed("ping", {}, id="p", ttl_s=-1))
    assert e.path == "" and "expires_at must be after issued_at" in e.reason
    # within the skew allowance both ways
    assert isinstance(decode(signed("ping", {}, id="p", issued_at=NOW + 299)), Command)
    assert isinstance(decode(signed("ping", {}, id="p", issued_at=NOW - 800, ttl_s=600)), Command)


def test_hmac_is_explicit_and_refuses_short_keys(tmp_path: Path) -> None:
    key = HmacKey(b"k" * 32)
    policy = CommandPolicy(verifier=key, gateway_id="gw-1")
    assert isinstance(decode(signed("ping", {}, id="p", signer=key), policy), Command)
    assert err(signed("ping", {}, id="p"), policy).path == "/alg"  # an ed25519 command
    assert err(signed("ping", {}, id="p", signer=HmacKey(b"x" * 32)), policy).reason == "unauthorized: bad signature"
    with pytest.raises(CommandKeyError, match="at least 32"):
        HmacKey(b"short")
    for content, msg in ((b"", "key is 0 bytes"), (b"  short \n", "key is 5 bytes")):
        f = tmp_path / "k"
        f.write_bytes(content)
        with pytest.raises(CommandKeyError, match=msg):
            load_verifier("hmac-sha256", None, f)
    with pytest.raises(CommandKeyError, match="cannot read"):
        load_verifier("ed25519", tmp_path / "missing.pub", None)
    priv = tmp_path / "priv.pem"
    priv.write_bytes(Ed25519Signer.generate().private_pem())
    with pytest.raises(CommandKeyError, match="PRIVATE key"):
        load_verifier("ed25519", priv, None)
    assert load_verifier("ed25519", None, None) is None


def test_rotation_file_with_two_public_keys(tmp_path: Path) -> None:
    old, new = Ed25519Signer.generate(), Ed25519Signer.generate()
    f = tmp_path / "command.pub"
    f.write_bytes(old.public_pem() + new.public_pem())
    v = load_verifier("ed25519", f, None)
    assert v is not None
    policy = CommandPolicy(verifier=v, gateway_id="gw-1")
    for s in (old, new):
        assert isinstance(decode(signed("ping", {}, id="p", signer=s), policy), Command)
    assert err(signed("ping", {}, id="p"), policy).path == "/sig"


async def test_revisions_replay_and_idempotency(tmp_path: Path) -> None:
    st_ = await ContentStore.open(tmp_path / "c.sqlite3")
    try:
        c1 = parse_command(signed("campaigns.put", CAMPAIGN, id="a", revision=5))
        assert isinstance(c1, Command)
        r, changed = await st_.apply(c1)
        assert r.ok and changed and r.applied_revision == 5
        r, changed = await st_.apply(c1)  # exact re-delivery
        assert r.ok and not changed and r.applied_revision == 5
        old = parse_command(signed("campaigns.delete", {"campaign_id": "c1"}, id="b", revision=4))
        assert isinstance(old, Command)
        r, changed = await st_.apply(old)
        assert not r.ok and not changed and r.error is not None and r.error.path == "/revision"
        assert "c1" in st_.campaigns
        # other kinds have their own revision counters
        a = parse_command(signed("actors.put", {"actor": {"id": "s"}}, id="c", revision=1))
        assert isinstance(a, Command)
        assert (await st_.apply(a))[0].ok
    finally:
        await st_.close()


def _mutations() -> st.SearchStrategy[bytes]:
    json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
    anyjson = st.recursive(
        json_leaf,
        lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=10), ch, max_size=4),
        max_leaves=20,
    )

    def mutate(doc: dict[str, Any], path: list[str], value: Any, drop: bool) -> bytes:
        cur: Any = doc
        for p in path[:-1]:
            if isinstance(cur, dict) and p in cur:
                cur = cur[p]
        if isinstance(cur, dict) and path:
            if drop:
                cur.pop(path[-1], None)
            else:
                cur[path[-1]] = value
        return json.dumps(doc).encode()

    keys = st.sampled_from(
        [
            "v",
            "id",
            "kind",
            "revision",
            "issued_at",
            "expires_at",
            "aud",
            "alg",
            "body",
            "campaign",
            "segment",
            "trigger",
            "zone",
            "dwell_s",
            "customer_ref",
            "irk_hex",
            "actor",
            "actors",
            "caps",
            "subjects",
            "presence",
            "sig",
            "x",
        ]
    )
    mutated = st.builds(
        mutate,
        st.sampled_from(valid_docs()).map(lambda d: json.loads(json.dumps(d))),
        st.lists(keys, min_size=1, max_size=4),
        anyjson,
        st.booleans(),
    )
    return st.binary(max_size=200) | anyjson.map(lambda x: json.dumps(x).encode()) | mutated


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=_mutations())
def test_decoder_never_raises_and_invalid_never_applies(payload: bytes, tmp_path: Path) -> None:
    got = decode(payload)  # must not raise
    assert isinstance(got, Command | CommandError)
    assert isinstance(parse_command(payload), Command | CommandError)
    if isinstance(got, CommandError):
        assert got.path == "" or got.path.startswith("/")
        assert got.reason


async def test_rejected_commands_leave_state_unchanged(tmp_path: Path) -> None:
    """Apply a valid baseline, then a stream of mutated commands: every rejected one (decoder or
    revision) must leave the stored state byte-identical, also after reopening the database."""
    path = tmp_path / "c.sqlite3"
    st_ = await ContentStore.open(path)
    for doc in valid_docs():
        cmd = parse_command(json.dumps({**doc, "revision": 100 if doc["kind"] != "ping" else 0}).encode())
        assert isinstance(cmd, Command)
        await st_.apply(cmd)

    def snapshot(s: ContentStore) -> tuple[Any, ...]:
        return (
            dict(s.campaigns),
            dict(s.actors),
            dict(s.consents),
            set(s.optouts),
            json.dumps(s.config, sort_keys=True),
            dict(s.revisions),
        )

    before = snapshot(st_)
    samples: list[bytes] = []

    @settings(max_examples=100, deadline=None)
    @given(payload=_mutations())
    def collect(payload: bytes) -> None:
        samples.append(payload)

    collect()
    rejected = 0
    for p in samples:
        got = parse_command(p)
        if isinstance(got, CommandError):
            rejected += 1
            continue
        reply, changed = await st_.apply(got)
        if not reply.ok:
            assert not changed
            assert snapshot(st_) == before
            rejected += 1
        else:  # a mutation that is still valid may apply (revision > 100 only); re-baseline
            before = snapshot(st_)
    assert rejected > 50
    final = snapshot(st_)
    await st_.close()
    st2 = await ContentStore.open(path)
    try:
        assert snapshot(st2) == final
    finally:
        await st2.close()
    await asyncio.sleep(0)
