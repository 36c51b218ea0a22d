"""One captured frame -> one probe request, or a counted reason why not (pure).

Shared by the live capture source, the pcap replay source and ``gateway decode pcap``, so the
three drop exactly the same frames for the same reasons:

* ``malformed.radiotap`` / ``malformed.ieee80211``: the parsers raised (bad input, counted);
* ``bad_fcs``: the radio says the frame check failed - its bytes cannot be trusted;
* ``off_channel``: the DS Parameter Set names another channel than the one the radio was tuned to.
  Adjacent-channel leakage arrives 10-25 dB weaker, so its RSSI would fake a distance;
* ``not_probe_request``: other management/data/control frames (not an error);
* ``linktype``: a link type we do not decode (not radiotap 127 or 802.11 105).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from gateway.parsers.ieee80211 import SUBTYPE_PROBE_REQ, Ieee80211Error, parse_mgmt_at
from gateway.parsers.ieee80211 import _ie_cache as _IE_CACHE
from gateway.parsers.ieee80211 import _mac_cache as _MAC_CACHE
from gateway.parsers.pcap import LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, Record
from gateway.parsers.radiotap import (
    FLAG_BAD_FCS,
    FLAG_FCS_AT_END,
    RX_FLAG_BAD_PLCP,
    RadiotapError,
    freq_to_channel,
    parse_radiotap,
)

__all__ = ["Probe", "ProbeDecoder"]


class Probe(NamedTuple):
    ts: float
    mac: str  # raw transmitter MAC - RAM only
    randomized: bool
    rssi: int | None
    channel: int | None
    ssid_hidden: bool
    fingerprint: str
    seq: int
    # SSID of a directed probe (None for a wildcard one): RAM only, never printed, stored or sent -
    # the groupers use it as linking evidence (a phone probes the same networks under every MAC)
    ssid: bytes | None = None


class ProbeDecoder:
    """Decode frames one by one; ``counts`` says what was dropped and why."""

    def __init__(self, *, keep_off_channel: bool = False) -> None:
        self.keep_off_channel = keep_off_channel
        self.counts: dict[str, int] = {}
        self.probes = 0
        self.records = 0  # records read by :meth:`iter_probes`
        self._fill = False  # decode() feeds the radiotap header cache (while iter_probes runs)

    def _count(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1

    @property
    def malformed(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith("malformed."))

    def decode(self, ts: float, linktype: int, data: bytes, channel_hint: int | None = None) -> Probe | None:
        """``channel_hint``: the channel the capture was tuned to, used when radiotap has none."""
        rssi: int | None = None
        channel = channel_hint
        end = len(data)
        off = 0
        if linktype == LINKTYPE_RADIOTAP:
            try:
                rt = parse_radiotap(data)
            except RadiotapError:
                self._count("malformed.radiotap")
                return None
            off, flags, rssi, _noise, freq, _chf, _rate, _tsft, _ant, rx_flags, _ouis = rt
            if flags & FLAG_BAD_FCS or (rx_flags or 0) & RX_FLAG_BAD_PLCP:
                self._count("bad_fcs")
                return None
            if freq is not None:
                channel = _CHANNELS.get(freq, -1)
                if channel == -1:
                    channel = freq_to_channel(freq)
                    if len(_CHANNELS) < 1024:
                        _CHANNELS[freq] = channel
            if flags & FLAG_FCS_AT_END:
                end -= 4
            if self._fill and channel_hint is None:
                if len(_RT_CACHE) >= _RT_CACHE_MAX:
                    _RT_CACHE.clear()
                _RT_CACHE[_rt_key(data, off)] = (off, rssi, channel, end - len(data))
        elif linktype != LINKTYPE_IEEE802_11:
            self._count("linktype")
            return None
        try:
            m = parse_mgmt_at(data if type(data) is bytes else bytes(data), off, end)
        except Ieee80211Error:
            self._count("malformed.ieee80211")
            return None
        if m is None:
            self._count("not_probe_request")
            return None
        subtype, src, randomized, seq, ssid, hidden, ds, _rates, _ids, _vendor, fp = m
        if subtype != SUBTYPE_PROBE_REQ:
            self._count("not_probe_request")
            return None
        if ds is not None:
            if channel is None:
                channel = ds
            elif ds != channel and not self.keep_off_channel:
                counts = self.counts
                counts["off_channel"] = counts.get("off_channel", 0) + 1
                return None
        self.probes += 1
        return _new_probe(Probe, (ts, src, randomized, rssi, channel, hidden, fp, seq, None if hidden else ssid))

    def iter_probes(self, records: Iterable[Record]) -> Iterator[Probe]:
        """:meth:`decode` of every record; a record without a time (pcapng Simple Packet Block)
        takes the previous record's. Counts as :meth:`decode` does, plus ``records``.

        Same results as calling :meth:`decode` per record, faster: a frame whose radiotap header
        and 802.11 elements were seen before (byte-identical: the usual case, a capture repeats a
        few layouts and device models) is decoded from caches inline; anything else - first
        sightings, errors, other link types and frame kinds - goes through :meth:`decode`.
        """
        decode = self.decode
        keep = self.keep_off_channel
        rt_cache = _RT_CACHE
        ie_get = _IE_CACHE.get
        mac_get = _MAC_CACHE.get
        new = _new_probe
        nrec = 0
        probes = 0
        off_channel = 0
        last_ts = 0.0
        self._fill = True
        try:
            for ts, lt, data in records:
                nrec += 1
                if ts is None:
                    ts = last_ts  # Simple Packet Blocks carry no time: keep the previous one
                last_ts = ts
                n = len(data)
                if lt == 127 and n > 8:
                    # a header byte-identical to one parsed before: its cached outcome
                    hlen = data[2] | data[3] << 8
                    rt = rt_cache.get(data[:hlen] if not data[4] & 1 else _rt_key(data, hlen))
                    if rt is not None:
                        o, rssi, channel, end = rt
                        end += n
                        if (
                            end - o >= 24
                            and data[o] == 0x40
                            and not data[o + 1]
                            and (r := ie_get(data[o + 24 : end])) is not None
                        ):
                            # a plain probe request with known elements: heard off its channel
                            # (about half of a hopping capture) it is dropped whoever sent it
                            ds = r[2]
                            if ds is not None:
                                if channel is None:
                                    channel = ds
                                elif ds != channel and not keep:
                                    off_channel += 1
                                    continue
                            mac = mac_get(data[o + 10 : o + 16])
                            if mac is None:  # a transmitter not seen before: the full path
                                p = decode(ts, lt, data)
                                if p is not None:
                                    yield p
                                continue
                            probes += 1
                            yield new(
                                Probe,
                                (
                                    ts,
                                    mac[0],
                                    mac[1],
                                    rssi,
                                    channel,
                                    r[1],
                                    r[6],
                                    (data[o + 22] | data[o + 23] << 8) >> 4,
                                    None if r[1] else r[0],
                                ),
                            )
                            continue
                p = decode(ts, lt, data)
                if p is not None:
                    yield p
        finally:
            self._fill = False
            self.records += nrec
            self.probes += probes
            if off_channel:
                self.counts["off_channel"] = self.counts.get("off_channel", 0) + off_channel


_new_probe = tuple.__new__


def _rt_key(data: bytes, hlen: int) -> bytes:
    """The radiotap header bytes without the TSFT value: the hardware timestamp differs in every
    frame of a real capture (most mac80211 drivers add it) and plays no part in the outcome."""
    if not data[4] & 1:  # no TSFT (bit 0 of the first present word)
        return data[:hlen]
    words_end = 8
    while data[words_end - 1] & 0x80 and words_end + 4 <= hlen:  # extended present bitmaps
        words_end += 4
    tsft = (words_end + 7) & ~7  # TSFT is the first field, 8-byte aligned
    if tsft + 8 > hlen:
        return data[:hlen]  # malformed: the key is the whole header (parse decides)
    return data[:tsft] + data[tsft + 8 : hlen]


# radiotap header bytes -> (802.11 offset, rssi, channel, -4 if the FCS is at the end else 0), for
# headers that parsed cleanly and do not drop the frame (their outcome depends on their bytes only)
_RT_CACHE: dict[bytes, tuple[int, int | None, int | None, int]] = {}
_RT_CACHE_MAX = 4096
_CHANNELS: dict[int, int | None] = {}
