"""BLE device addresses: classification and resolvable-private-address (RPA) resolution.

Bluetooth Core Vol 6 Part B 1.3: a *random* address's two most significant bits give its kind
(11 static, 01 resolvable private, 00 non-resolvable private, 10 reserved); a *public* address is
an IEEE MAC and carries no such bits, so the address type reported by the controller (BlueZ
``Device1.AddressType``) is needed to tell them apart.

An RPA is ``prand (24 bits, MSB half) || hash (24 bits)`` with ``hash = ah(IRK, prand)``, where
(Core Vol 3 Part H 2.2.2) ``ah(k, r) = e(k, padding || r) mod 2^24`` and ``e`` is AES-128 with key
and plaintext most significant octet first. Resolving an address means finding the IRK whose
``ah`` reproduces the hash. :func:`ah` is checked against the specification's sample data
(Vol 3 Part H, Appendix D.7) in the tests.

Speed: the expensive part is one AES block per (address, IRK). OpenSSL's ECB encryptors are
created once per IRK and reused; :meth:`IrkResolver.resolve_many` encrypts *all* addresses of a
batch under each IRK in one ``update`` call (one C call per IRK instead of one per pair) and
compares every hash at once with numpy. Results, positive and negative, go into an LRU cache:
a phone keeps one RPA for ~15 minutes while sending adverts several times a second.

IRKs are secrets: they live in this object only (RAM), are never logged, and identities are
returned as the caller's opaque ids.
"""

from __future__ import annotations

import binascii
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Literal

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

__all__ = [
    "AddressError",
    "AddressKind",
    "IrkResolver",
    "address_bytes",
    "ah",
    "classify",
    "irk_from_hex",
    "is_rpa",
]

_PADDING = bytes(13)


class AddressError(ValueError):
    """A string that is not a 48-bit Bluetooth device address (or an IRK that is not 16 bytes)."""


class AddressKind(StrEnum):
    PUBLIC = "public"
    RANDOM_STATIC = "random-static"
    RESOLVABLE_PRIVATE = "resolvable-private"
    NON_RESOLVABLE_PRIVATE = "non-resolvable-private"
    RESERVED = "reserved"  # random address with top bits 10: not valid on the air


def address_bytes(address: str) -> bytes:
    """``"AA:BB:CC:DD:EE:FF"`` (or ``-`` separated, or 12 hex digits) -> 6 bytes, MSB first."""
    text = address.replace(":", "").replace("-", "")
    if len(text) != 12:
        raise AddressError("not a 48-bit device address (need 12 hex digits)")
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise AddressError("not a 48-bit device address (non-hex digit)") from None


def classify(address: str | bytes, address_type: Literal["public", "random"] | None = "random") -> AddressKind:
    """Kind of an address; ``address_type`` as reported by the controller (BlueZ ``AddressType``).

    ``None`` means "unknown": the random sub-type is inferred from the top bits, which is how
    most phones can be recognised, at the risk of calling a public MAC "random".
    """
    if address_type == "public":
        return AddressKind.PUBLIC
    top = (address[0] if isinstance(address, bytes) else address_bytes(address)[0]) >> 6
    if top == 0b11:
        return AddressKind.RANDOM_STATIC
    if top == 0b01:
        return AddressKind.RESOLVABLE_PRIVATE
    if top == 0b00:
        return AddressKind.NON_RESOLVABLE_PRIVATE
    return AddressKind.RESERVED


def is_rpa(address: str) -> bool:
    """Cheap test on the text form: first hex digit 4-7 means top bits 01."""
    return len(address) == 17 and address[0] in "4567"


def ah(irk: bytes, prand: bytes) -> bytes:
    """The random address hash function ``ah`` (Core Vol 3 Part H 2.2.2): 3 bytes, MSB first."""
    if len(irk) != 16:
        raise AddressError("an IRK is 16 bytes")
    if len(prand) != 3:
        raise AddressError("prand is 3 bytes")
    enc = Cipher(algorithms.AES(irk), modes.ECB()).encryptor()  # noqa: S305 - ECB is what ah() specifies
    return (enc.update(_PADDING + prand) + enc.finalize())[13:]


def _encryptor(irk: bytes) -> CipherContext:
    return Cipher(algorithms.AES(irk), modes.ECB()).encryptor()  # noqa: S305 - one block per call, as ah() specifies


class IrkResolver:
    """Resolve RPAs against a set of known IRKs, with an LRU cache of answers.

    ``irks`` maps an opaque identity id (what the pipeline will use as ``Observation.link``) to the
    16-byte IRK, most significant octet first (the specification's order; some tools store IRKs
    reversed, see :func:`irk_from_hex`).
    """

    def __init__(self, irks: Mapping[str, bytes] | None = None, *, cache_size: int = 65536) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._cache_size = cache_size
        self._cache: OrderedDict[str, str | None] = OrderedDict()
        self._ids: list[str] = []
        self._encs: list[CipherContext] = []
        self.hits = 0
        self.misses = 0
        self.set_irks(irks or {})

    def set_irks(self, irks: Mapping[str, bytes]) -> None:
        """Replace the key set (clears the cache: negative answers may no longer hold)."""
        ids: list[str] = []
        encs: list[CipherContext] = []
        for ident, irk in irks.items():
            if len(irk) != 16:
                raise AddressError(f"IRK for identity {ident!r} is {len(irk)} bytes, needs 16")
            ids.append(ident)
            encs.append(_encryptor(bytes(irk)))
        self._ids = ids
        self._encs = encs
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    def clear_cache(self) -> None:
        self._cache.clear()

    def resolve(self, address: str) -> str | None:
        """Identity id whose IRK generated ``address``; None for no match or a non-RPA."""
        return self.resolve_many((address,))[0]

    def resolve_many(self, addresses: Sequence[str]) -> list[str | None]:
        """Resolve a batch; cache hits are answered at once, the rest share one AES pass per IRK."""
        out: list[str | None] = [None] * len(addresses)
        cache = self._cache
        todo: dict[str, list[int]] = {}
        for i, a in enumerate(addresses):
            if a in cache:
                cache.move_to_end(a)
                out[i] = cache[a]
                self.hits += 1
            elif not is_rpa(a):
                continue
            else:
                pos = todo.get(a)
                if pos is None:
                    todo[a] = [i]
                else:
                    pos.append(i)
        if not todo:
            return out
        self.misses += len(todo)
        found = self._resolve_uncached(list(todo))
        for (a, positions), ident in zip(todo.items(), found, strict=True):
            for i in positions:
                out[i] = ident
            cache[a] = ident
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        return out

    def resolve_uncached(self, addresses: Iterable[str]) -> list[str | None]:
        """No cache at all (benchmarks); same answers as :meth:`resolve_many`."""
        return self._resolve_uncached([a for a in addresses])

    def _resolve_uncached(self, addresses: list[str]) -> list[str | None]:
        result: list[str | None] = [None] * len(addresses)
        if not self._encs:
            return result
        blocks: list[bytes] = []
        hashes: list[bytes] = []
        index: list[int] = []
        for i, a in enumerate(addresses):
            try:
                raw = address_bytes(a)
            except AddressError:
                continue
            if raw[0] >> 6 != 0b01:
                continue
            blocks.append(_PADDING + raw[:3])
            hashes.append(raw[3:])
            index.append(i)
        if not blocks:
            return result
        plain = b"".join(blocks)
        # One C call per IRK for the whole batch; ECB keeps no state between blocks.
        ct = b"".join([enc.update(plain) for enc in self._encs])
        m = len(blocks)
        got = np.frombuffer(ct, dtype=np.uint8).reshape(len(self._encs), m, 16)[:, :, 13:]
        want = np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(1, m, 3)
        match = (got == want).all(axis=2)  # (irks, addresses)
        k_idx, a_idx = np.nonzero(match)
        for k, j in zip(k_idx.tolist(), a_idx.tolist(), strict=True):
            pos = index[j]
            if result[pos] is None:  # first IRK wins (a 2^-24 collision otherwise)
                result[pos] = self._ids[k]
        return result


def irk_from_hex(text: str, *, reverse: bool = False) -> bytes:
    """IRK from 32 hex digits; ``reverse=True`` for tools that store it least significant octet first."""
    try:
        raw = binascii.unhexlify(text.strip().replace(":", "").replace(" ", ""))
    except (binascii.Error, ValueError):
        raise AddressError("IRK is not hex") from None
    if len(raw) != 16:
        raise AddressError(f"IRK is {len(raw)} bytes, needs 16")
    return raw[::-1] if reverse else raw
