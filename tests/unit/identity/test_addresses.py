"""Address classification and RPA resolution, checked against the Bluetooth Core sample data."""

from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from gateway.identity.addresses import (
    AddressError,
    AddressKind,
    IrkResolver,
    address_bytes,
    ah,
    classify,
    irk_from_hex,
)

# Bluetooth Core Specification v5.x, Vol 3 Part H, Appendix D.7 "ah Random Address Hash
# function": IRK ec0234a3 57c8ad05 341010a6 0a397d9b, prand 708194 -> AES-128 output
# 159d5fb7 2ebe2311 a48c1bdc c40dfbaa, ah = 0dfbaa. So the RPA is 70:81:94:0D:FB:AA.
SPEC_IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
SPEC_PRAND = bytes.fromhex("708194")
SPEC_HASH = bytes.fromhex("0dfbaa")
SPEC_RPA = "70:81:94:0D:FB:AA"


def make_rpa(irk: bytes, rng: random.Random) -> str:
    """Generate an RPA the way a controller does (prand with top bits 01, hash = ah)."""
    prand = bytearray(rng.randbytes(3))
    prand[0] = (prand[0] & 0x3F) | 0x40
    raw = bytes(prand) + ah(irk, bytes(prand))
    return ":".join(f"{b:02X}" for b in raw)


def test_ah_matches_core_spec_sample_data() -> None:
    assert ah(SPEC_IRK, SPEC_PRAND) == SPEC_HASH
    # and the intermediate AES output quoted by the spec
    enc = Cipher(algorithms.AES(SPEC_IRK), modes.ECB()).encryptor()
    assert enc.update(bytes(13) + SPEC_PRAND).hex() == "159d5fb72ebe2311a48c1bdcc40dfbaa"


def test_resolver_resolves_the_spec_address_among_many_irks() -> None:
    irks = {f"id-{i}": os.urandom(16) for i in range(255)}
    irks["spec-phone"] = SPEC_IRK
    r = IrkResolver(irks)
    assert r.resolve(SPEC_RPA) == "spec-phone"
    assert r.resolve(SPEC_RPA.lower()) == "spec-phone"
    # one bit off in the hash: no match
    assert r.resolve("70:81:94:0D:FB:AB") is None


def test_resolve_many_batches_and_caches() -> None:
    rng = random.Random(7)
    irks = {f"id-{i}": rng.randbytes(16) for i in range(64)}
    r = IrkResolver(irks, cache_size=1000)
    expected: list[str | None] = []
    addrs: list[str] = []
    for i in range(200):
        if i % 3 == 0:
            addrs.append(make_rpa(rng.randbytes(16), rng))  # unknown phone
            expected.append(None)
        else:
            ident = f"id-{rng.randrange(64)}"
            addrs.append(make_rpa(irks[ident], rng))
            expected.append(ident)
    addrs += ["C0:11:22:33:44:55", "00:11:22:33:44:55", "not-an-address", addrs[1]]
    expected += [None, None, None, expected[1]]
    assert r.resolve_many(addrs) == expected
    assert r.resolve_uncached(addrs) == expected
    misses = r.misses
    assert r.resolve_many(addrs) == expected  # all from the cache now
    assert r.misses == misses
    assert r.hits >= 200


def test_cache_is_bounded_lru_and_cleared_on_new_keys() -> None:
    rng = random.Random(1)
    irk = rng.randbytes(16)
    r = IrkResolver({"a": irk}, cache_size=10)
    addrs = [make_rpa(irk, rng) for _ in range(25)]
    assert r.resolve_many(addrs) == ["a"] * 25
    assert r.cache_len == 10
    r.set_irks({"b": irk})
    assert r.cache_len == 0
    assert r.resolve(addrs[0]) == "b"


def test_no_irks_resolves_nothing() -> None:
    assert IrkResolver().resolve(SPEC_RPA) is None


@pytest.mark.parametrize(
    ("addr", "atype", "kind"),
    [
        ("C0:11:22:33:44:55", "random", AddressKind.RANDOM_STATIC),
        ("F3:00:00:00:00:01", "random", AddressKind.RANDOM_STATIC),
        (SPEC_RPA, "random", AddressKind.RESOLVABLE_PRIVATE),
        ("4A:00:00:00:00:01", None, AddressKind.RESOLVABLE_PRIVATE),
        ("12:34:56:78:9A:BC", "random", AddressKind.NON_RESOLVABLE_PRIVATE),
        ("8A:34:56:78:9A:BC", "random", AddressKind.RESERVED),
        ("70:81:94:0D:FB:AA", "public", AddressKind.PUBLIC),
        ("DC:2C:6E:F6:54:7D", "public", AddressKind.PUBLIC),
    ],
)
def test_classify(addr: str, atype: str | None, kind: AddressKind) -> None:
    assert classify(addr, atype) == kind  # type: ignore[arg-type]


def test_bad_inputs_raise_address_error() -> None:
    with pytest.raises(AddressError):
        address_bytes("70:81:94:0D:FB")
    with pytest.raises(AddressError):
        address_bytes("70:81:94:0D:FB:ZZ")
    with pytest.raises(AddressError):
        IrkResolver({"x": b"short"})
    with pytest.raises(AddressError):
        irk_from_hex("abcd")
    assert irk_from_hex(SPEC_IRK[::-1].hex(), reverse=True) == SPEC_IRK
