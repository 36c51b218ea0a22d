"""``gateway decode pcap FILE [--raw]``: one JSON line per probe request in a pcap/pcapng file.

``{"ts", "mac", "randomized", "rssi", "channel", "ssid_hidden", "fingerprint", "group"}``

* ``mac`` is the daily pseudonym (keyed HMAC, key drawn for this run and never stored) unless
  ``--raw`` asks for the address itself (a technician's local debugging aid);
* ``group`` clusters rotating randomized MACs that are probably one device (gateway.identity.wifi_groups);
* frames that are malformed, have a bad FCS, were heard off their channel or are not probe requests
  are counted and skipped; the counts go to stderr at the end;
* a corrupt file stops with exit code 2 and the byte offset (lines before it were printed);
* lines are in capture order; a new random MAC's lines may wait (``--group-hold``, 30 s of capture
  time at most) until its group is decided - see docs/wifi.md, "Held decisions".

The file is streamed, so its size does not matter. No SSID is ever printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.config import PrivacySettings
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.wifi_groups import DEFAULT_GROUP_HOLD_S, GroupParams, WifiGrouper
from gateway.parsers.pcap import PcapError, read_records
from gateway.parsers.wifi_probe import ProbeDecoder


def add_decode_command(dsub: Any) -> None:
    p: argparse.ArgumentParser = dsub.add_parser(
        "pcap", help="print probe requests of a pcap/pcapng capture (radiotap or plain 802.11) as JSON lines"
    )
    p.add_argument("file", type=Path)
    p.add_argument("--raw", action="store_true", help="print raw MAC addresses instead of pseudonyms")
    p.add_argument(
        "--keep-off-channel", action="store_true", help="also print frames heard off the channel they were sent on"
    )
    p.add_argument(
        "--group-hold",
        type=_hold_seconds,
        default=DEFAULT_GROUP_HOLD_S,
        metavar="SECONDS",
        help="longest wait (capture time) for the evidence that decides a new random MAC's group; 0: decide at once",
    )
    p.set_defaults(func=_run)


MAX_GROUP_HOLD_S = 600.0  # as wifi.group_hold_s: below the grouper's forget_s, so a held MAC never expires


def _hold_seconds(text: str) -> float:
    """``--group-hold``: a finite number of seconds in [0, 600] (argparse reports the ValueError)."""
    v = float(text)
    if not 0.0 <= v <= MAX_GROUP_HOLD_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_GROUP_HOLD_S:g} seconds, got {text}")
    return v


def decode_file(
    path: Path,
    out: TextIO,
    *,
    raw: bool = False,
    keep_off_channel: bool = False,
    group_hold_s: float = DEFAULT_GROUP_HOLD_S,
) -> tuple[ProbeDecoder, int, PcapError | None]:
    """Decode ``path`` to ``out``; returns the decoder (its counts), records read and any file error.

    Lines come out in capture order. A frame of a new randomized MAC whose link is undecided is
    held (with every line after it) until the grouper decides, at most ``group_hold_s`` of capture
    time later, and at the end of the file.
    """
    privacy = PrivacySettings()
    keyring = PseudonymKeyring(
        rotation_time=privacy.rotation_time, period_h=privacy.rotation_period_h, nbytes=privacy.pseudonym_bytes
    )
    dec = ProbeDecoder(keep_off_channel=keep_off_channel)
    grouper = WifiGrouper(GroupParams(max_delay_s=group_hold_s), prefix="g")
    # mac -> the line's text from the pseudonym to the rssi value (the pseudonym of the current
    # key epoch; emptied when the epoch changes)
    names: dict[str, str] = {}
    min_lo = min_hi = 0.0  # the whole minute [min_lo, min_hi) the key epoch was last asked for
    epoch = 0
    # lines in capture order; a held frame's line is its slot's index in ``held`` until decided
    lines: list[str] = []
    add = lines.append
    held: dict[int, str] = {}  # slot -> line text before the group id
    base = 0  # capture index of lines[0]
    offer = grouper.offer
    ready = grouper.ready
    error: PcapError | None = None
    limit = 2048  # write out settled lines once this many are buffered

    def settle(decided: list[tuple[object, str]]) -> None:
        for item, gid in decided:
            k = item if isinstance(item, int) else -1
            lines[k - base] = held.pop(k) + gid + '"}\n'
        decided.clear()

    def write_settled() -> None:
        nonlocal base
        if not held:
            out.write("".join(lines))
            base += len(lines)
            lines.clear()
            return
        first = min(held) - base
        if first > 0:
            out.write("".join(lines[:first]))
            del lines[:first]
            base += first

    with path.open("rb") as f:
        try:
            for ts, mac, randomized, rssi, channel, hidden, fp, seq in dec.iter_probes(read_records(f)):
                # the key epoch changes on a whole minute (rotation_time is HH:MM): ask once a minute
                if not raw and not min_lo <= ts < min_hi:
                    min_lo = (ts // 60.0) * 60.0
                    min_hi = min_lo + 60.0
                    e = keyring.epoch_of(ts)
                    if e != epoch:
                        epoch = e
                        names.clear()
                mid = names.get(mac)
                if mid is None:
                    name = mac if raw else keyring.pseudonym(mac, ts)
                    mid = names[mac] = f'"mac": "{name}", "randomized": {"true" if randomized else "false"}, "rssi": '
                slot = base + len(lines)
                group = offer(mac, randomized, fp, seq, ts, rssi, slot)
                # hand-formatted: every value is a number, bool, null or a hex/id string (no escaping)
                if group is not None:
                    add(
                        f'{{"ts": {ts:.6f}, {mid}{"null" if rssi is None else rssi}, '
                        f'"channel": {"null" if channel is None else channel}, '
                        f'"ssid_hidden": {"true" if hidden else "false"}, '
                        f'"fingerprint": "{fp}", "group": "{group}"}}\n'
                    )
                else:  # held: the line waits for its group (and the lines after it wait for it)
                    held[slot] = (
                        f'{{"ts": {ts:.6f}, {mid}{"null" if rssi is None else rssi}, '
                        f'"channel": {"null" if channel is None else channel}, '
                        f'"ssid_hidden": {"true" if hidden else "false"}, '
                        f'"fingerprint": "{fp}", "group": "'
                    )
                    add("")
                if ready:
                    settle(ready)
                if len(lines) >= limit:
                    write_settled()
                    limit = len(lines) + 2048
        except PcapError as e:
            error = e
        finally:
            settle(grouper.flush())
            write_settled()
            out.flush()
    records = dec.records
    return dec, records, error


def _run(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        dec, records, error = decode_file(
            path, sys.stdout, raw=args.raw, keep_off_channel=args.keep_off_channel, group_hold_s=args.group_hold
        )
    except OSError as e:
        print(f"error: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    except PcapError as e:  # the header itself is bad: nothing was decoded
        print(f"error: {path}: {e}", file=sys.stderr)
        return 2
    counts = " ".join(f"{k}={v}" for k, v in sorted(dec.counts.items()))
    print(
        f"{path}: {records} records, {dec.probes} probe requests, {dec.malformed} malformed"
        + (f" ({counts})" if counts else ""),
        file=sys.stderr,
    )
    if error is not None:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    return 0
