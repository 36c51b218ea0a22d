"""Radiotap header parser (pure, bounds-checked, fast).

Radiotap (https://www.radiotap.org, Linux ``net/wireless/radiotap.c``) prefixes every frame a
monitor-mode interface delivers: ``version u8 | pad u8 | length u16 | present u32 [present u32...]``
then the fields whose bits are set, each aligned to its natural size *relative to the start of
the header*. Rules implemented here, as the kernel iterator does:

* bit 31 of a present word: another present word follows (extended bitmaps);
* bit 29 in a word: the *next* word is again in the radiotap namespace (its bit 0 is TSFT again,
  which is how drivers report one antenna-signal value per chain);
* bit 30: a vendor-namespace field ``OUI[3] sub_ns u8 skip_length u16`` (align 2) follows; the
  next words are in that vendor's namespace, whose ``skip_length`` bytes of data we skip;
* a radiotap-namespace field we do not know the size of ends parsing (we cannot find what follows),
  keeping what was parsed so far - same as the kernel.

Speed: header layouts repeat (one driver, one layout), so the field offsets for a given run of
present words are computed once and cached; parsing a known layout is a handful of
``struct.unpack_from`` calls. Headers with vendor namespaces are walked each time (their offsets
depend on ``skip_length``).
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "FLAG_BAD_FCS",
    "FLAG_FCS_AT_END",
    "RadiotapError",
    "RadiotapInfo",
    "freq_to_channel",
    "parse_radiotap",
]

# bit -> (align, size) in the radiotap namespace (radiotap.org "defined fields").
FIELD_ALIGN_SIZE: dict[int, tuple[int, int]] = {
    0: (8, 8),  # TSFT
    1: (1, 1),  # Flags
    2: (1, 1),  # Rate
    3: (2, 4),  # Channel: freq u16, flags u16
    4: (1, 2),  # FHSS
    5: (1, 1),  # dBm antenna signal
    6: (1, 1),  # dBm antenna noise
    7: (2, 2),  # lock quality
    8: (2, 2),  # TX attenuation
    9: (2, 2),  # dB TX attenuation
    10: (1, 1),  # dBm TX power
    11: (1, 1),  # antenna index
    12: (1, 1),  # dB antenna signal
    13: (1, 1),  # dB antenna noise
    14: (2, 2),  # RX flags
    15: (2, 2),  # TX flags
    16: (1, 1),  # RTS retries
    17: (1, 1),  # data retries
    18: (4, 8),  # XChannel: flags u32, freq u16, channel u8, maxpower u8
    19: (1, 3),  # MCS
    20: (4, 8),  # A-MPDU status
    21: (2, 12),  # VHT
    22: (8, 12),  # timestamp
    23: (2, 12),  # HE
    24: (2, 12),  # HE-MU
    25: (2, 6),  # HE-MU-other-user
    26: (1, 1),  # 0-length PSDU
    27: (2, 4),  # L-SIG
}
_TLV = 28
_RT_NS = 29
_VENDOR_NS = 30
_EXT = 31

FLAG_FCS_AT_END = 0x10  # the frame carries its 4-byte FCS at the end
FLAG_BAD_FCS = 0x40  # the FCS check failed: the frame is damaged
RX_FLAG_BAD_PLCP = 0x0002


class RadiotapError(ValueError):
    """A radiotap header that cannot be parsed; ``offset`` is the byte offset within the header."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"radiotap: {reason} at offset {offset}")
        self.reason = reason
        self.offset = offset


class RadiotapInfo(NamedTuple):
    """What the pipeline needs from a radiotap header. ``None``: the field was absent.

    A NamedTuple, not a dataclass: it is built once per captured frame and tuple construction is
    several times cheaper.
    """

    length: int  # header length: the 802.11 frame starts here
    flags: int
    signal_dbm: int | None
    noise_dbm: int | None
    freq_mhz: int | None
    channel_flags: int
    rate_500kbps: int | None
    tsft: int | None
    antenna: int | None
    rx_flags: int | None
    vendor_ouis: tuple[int, ...] = ()

    @property
    def channel(self) -> int | None:
        """IEEE channel number of ``freq_mhz`` (cached: a capture sees a handful of frequencies)."""
        f = self.freq_mhz
        if f is None:
            return None
        ch = _CHANNEL_CACHE.get(f, -1)
        if ch == -1:
            ch = freq_to_channel(f)
            if len(_CHANNEL_CACHE) < 4096:
                _CHANNEL_CACHE[f] = ch
        return ch

    @property
    def bad_fcs(self) -> bool:
        return bool(self.flags & FLAG_BAD_FCS) or bool((self.rx_flags or 0) & RX_FLAG_BAD_PLCP)

    @property
    def fcs_at_end(self) -> bool:
        return bool(self.flags & FLAG_FCS_AT_END)


def freq_to_channel(freq: int) -> int | None:
    """IEEE channel number of a centre frequency (MHz); ``None`` if not a Wi-Fi channel."""
    if 2412 <= freq <= 2472:
        return (freq - 2407) // 5 if (freq - 2407) % 5 == 0 else None
    if freq == 2484:
        return 14
    if freq == 5935:
        return 2
    if 5950 < freq <= 7125:
        return (freq - 5950) // 5 if (freq - 5950) % 5 == 0 else None
    if 4910 <= freq <= 5895:
        return (freq - 5000) // 5 if (freq - 5000) % 5 == 0 else None
    return None


_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_HDR = struct.Struct("<BBHI")

# How each wanted field unpacks into RadiotapInfo slots:
# 0 length, 1 flags, 2 signal, 3 noise, 4 freq, 5 channel flags, 6 rate, 7 tsft, 8 antenna, 9 rx flags
_N_SLOTS = 10
_DEFAULTS: tuple[int | None, ...] = (None, 0, None, None, None, 0, None, None, None, None)
_FIELD_CODE: dict[int, tuple[str, int, tuple[int, ...]]] = {
    # bit: (struct codes, bytes they cover, RadiotapInfo slots)
    0: ("Q", 8, (7,)),
    1: ("B", 1, (1,)),
    2: ("B", 1, (6,)),
    3: ("HH", 4, (4, 5)),
    5: ("b", 1, (2,)),
    6: ("b", 1, (3,)),
    11: ("B", 1, (8,)),
    14: ("H", 2, (9,)),
    18: ("IH", 6, (5, 4)),  # XChannel: flags u32, freq u16 (used only without a Channel field)
}
_CHANNEL_CACHE: dict[int, int | None] = {}


class _Plan(NamedTuple):
    """Where the wanted fields of one header layout are: one Struct unpacks them all (length
    included), then one ``itemgetter`` puts them, and defaults for absent fields, in slot order."""

    st: struct.Struct
    getter: Callable[[tuple[object, ...]], tuple[object, ...]]
    tail: tuple[object, ...]  # defaults appended to the unpacked values
    end: int  # the wanted fields end here (must be <= header length)
    need: int  # every field walked ends here: a shorter header is an error (the walk says which)


_plan_cache: dict[object, _Plan] = {}
_PLAN_CACHE_MAX = 256


def _compile(fields: list[tuple[int, int]], ouis: list[int], need: int) -> _Plan:
    fmt = ["<2xH"]  # header length at offset 2 -> slot 0
    slot_src = [-1] * _N_SLOTS
    slot_src[0] = 0
    nvals = 1
    cur = 4
    for bit, off in fields:
        codes, covered, slots = _FIELD_CODE[bit]
        if off > cur:
            fmt.append(f"{off - cur}x")
        fmt.append(codes)
        for sl in slots:
            slot_src[sl] = nvals
            nvals += 1
        cur = off + covered
    tail: list[object] = []
    for sl in range(_N_SLOTS):
        if slot_src[sl] < 0:
            slot_src[sl] = nvals + len(tail)
            tail.append(_DEFAULTS[sl])
    slot_src.append(nvals + len(tail))
    tail.append(tuple(ouis))
    return _Plan(struct.Struct("".join(fmt)), operator.itemgetter(*slot_src), tuple(tail), cur, need)


def _walk(buf: bytes | memoryview, length: int, words_end: int, words: list[int]) -> tuple[_Plan, bool]:
    """Walk the present words; return the plan and whether it may be cached (no vendor data)."""
    fields: list[tuple[int, int]] = []
    seen: set[int] = set()
    ouis: list[int] = []
    cacheable = True
    off = words_end
    in_radiotap = True
    for w in words:
        if in_radiotap:
            bits = w & 0x1FFFFFFF
            bit = 0
            while bits:
                if bits & 1:
                    if bit == _TLV:
                        break  # TLVs run to the end of the header: nothing fixed after them
                    spec = FIELD_ALIGN_SIZE.get(bit)
                    if spec is None:
                        # unknown size: the rest of this namespace cannot be located (kernel: -ENOENT)
                        return _compile(fields, ouis, off), cacheable
                    align, size = spec
                    off = (off + align - 1) & ~(align - 1)
                    if off + size > length:
                        raise RadiotapError(f"field {bit} runs past the header length {length}", off)
                    if bit in _FIELD_CODE and bit not in seen and not (bit == 18 and 3 in seen):
                        seen.add(bit)
                        fields.append((bit, off))
                    off += size
                bits >>= 1
                bit += 1
        # bits 29/30 select the namespace of the next word; 30 carries a field in any namespace
        if w & (1 << _VENDOR_NS):
            cacheable = False
            off = (off + 1) & ~1
            if off + 6 > length:
                raise RadiotapError("vendor namespace field runs past the header", off)
            oui = (buf[off] << 16) | (buf[off + 1] << 8) | buf[off + 2]
            skip = _U16.unpack_from(buf, off + 4)[0]
            off += 6
            ouis.append(oui)
            if off + skip > length:
                raise RadiotapError(f"vendor namespace data ({skip} bytes) runs past the header", off)
            off += skip  # vendor data: its layout is the vendor's business
            in_radiotap = False
        elif w & (1 << _RT_NS):
            in_radiotap = True
    if 3 in seen and 18 in seen:
        fields = [f for f in fields if f[0] != 18]
    return _compile(fields, ouis, off), cacheable


def parse_radiotap(buf: bytes | memoryview) -> RadiotapInfo:
    """Parse the radiotap header at the start of ``buf`` (which may extend into the frame).

    Raises :class:`RadiotapError` (with the offset) for a header that is inconsistent with itself
    or with the captured length.
    """
    n = len(buf)
    if n < 8:
        raise RadiotapError(f"header needs 8 bytes, have {n}", 0)
    version, _pad, length, present = _HDR.unpack_from(buf, 0)
    if version or length < 8 or length > n:
        if version != 0:
            raise RadiotapError(f"unsupported version {version}", 0)
        if length < 8:
            raise RadiotapError(f"header length {length} < 8", 2)
        raise RadiotapError(f"header length {length} exceeds the {n} captured bytes", 2)
    key: object = present
    if present & 0x80000000:
        words = [present]
        words_end = 8
        w = present
        while w & 0x80000000:
            if words_end + 4 > length:
                raise RadiotapError("extended present bitmaps run past the header", words_end)
            w = _U32.unpack_from(buf, words_end)[0]
            words.append(w)
            words_end += 4
        key = bytes(buf[4:words_end])
    plan = _plan_cache.get(key)
    if plan is None:
        if not present & 0x80000000:
            words, words_end = [present], 8
        plan, cacheable = _walk(buf, length, words_end, words)
        if cacheable:
            if len(_plan_cache) >= _PLAN_CACHE_MAX:
                _plan_cache.clear()
            _plan_cache[key] = plan
    st, getter, tail, end, need = plan
    if need > length:
        # a cached layout whose fields do not fit this header: walk it for the precise error
        if not present & 0x80000000:
            words, words_end = [present], 8
        st, getter, tail, end, need = _walk(buf, length, words_end, words)[0]
    if end > length:
        raise RadiotapError(f"fields need {end} bytes, header length is {length}", 2)
    return _new_info(RadiotapInfo, getter(st.unpack_from(buf, 0) + tail))


_new_info = tuple.__new__


def build_radiotap(
    *,
    signal_dbm: int | None = None,
    freq_mhz: int | None = None,
    flags: int | None = None,
    tsft: int | None = None,
    rate_500kbps: int | None = None,
    chain_signals: tuple[int, ...] = (),
    vendor: tuple[int, int, bytes] | None = None,
) -> bytes:
    """Build a radiotap header (tests, fixtures, the live-capture test's injector).

    ``chain_signals`` adds one extra radiotap-namespace bitmap per chain with an antenna-signal and
    antenna-index field (the layout iwlwifi/ath9k produce); ``vendor=(oui, sub_ns, data)`` adds a
    vendor namespace with opaque data.
    """
    words: list[int] = []
    first = 0
    if tsft is not None:
        first |= 1 << 0
    if flags is not None:
        first |= 1 << 1
    if rate_500kbps is not None:
        first |= 1 << 2
    if freq_mhz is not None:
        first |= 1 << 3
    if signal_dbm is not None:
        first |= 1 << 5
    extra_words: list[int] = []
    for _ in chain_signals:
        extra_words.append((1 << 5) | (1 << 11) | (1 << _RT_NS))
    if vendor is not None:
        if extra_words:
            extra_words[-1] |= 1 << _VENDOR_NS
            extra_words[-1] &= ~(1 << _RT_NS)
        else:
            first |= 1 << _VENDOR_NS
        extra_words.append(1 << 0)  # one (opaque) field in the vendor namespace
    if extra_words:
        first |= 1 << _EXT
        if not first & (1 << _VENDOR_NS):
            first |= 1 << _RT_NS
    words = [first, *extra_words]
    for i in range(len(words) - 1):
        words[i] |= 1 << _EXT
    body = bytearray(struct.pack("<BBH", 0, 0, 0))
    for w in words:
        body += _U32.pack(w)

    def align(a: int) -> None:
        while len(body) % a:
            body.append(0)

    if tsft is not None:
        align(8)
        body += struct.pack("<Q", tsft)
    if flags is not None:
        body.append(flags)
    if rate_500kbps is not None:
        body.append(rate_500kbps)
    if freq_mhz is not None:
        align(2)
        chflags = 0x0080 if freq_mhz < 3000 else 0x0100  # 2 GHz / 5 GHz spectrum flags
        body += struct.pack("<HH", freq_mhz, chflags)
    if signal_dbm is not None:
        body += struct.pack("<b", signal_dbm)
    for i, s in enumerate(chain_signals):
        body += struct.pack("<bB", s, i)
    if vendor is not None:
        oui, subns, data = vendor
        align(2)
        body += bytes([(oui >> 16) & 0xFF, (oui >> 8) & 0xFF, oui & 0xFF, subns])
        body += _U16.pack(len(data))
        body += data
    struct.pack_into("<H", body, 2, len(body))
    return bytes(body)
