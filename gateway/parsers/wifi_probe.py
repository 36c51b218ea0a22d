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

from typing import NamedTuple

from gateway.parsers.ieee80211 import SUBTYPE_PROBE_REQ, Ieee80211Error, parse_mgmt_at
from gateway.parsers.pcap import LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP
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


class ProbeDecoder:
    """Decode frames one by one; ``counts`` says what was dropped and why."""

    def __init__(self, *, keep_off_channel: bool = False) -> None:
        self.keep_off_channel = keep_off_channel
        self.counts: dict[str, int] = {}
        self.probes = 0

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
        subtype, src, randomized, seq, _ssid, hidden, ds, _rates, _ids, _vendor, fp = m
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
        return _new_probe(Probe, (ts, src, randomized, rssi, channel, hidden, fp, seq))


_new_probe = tuple.__new__
_CHANNELS: dict[int, int | None] = {}
