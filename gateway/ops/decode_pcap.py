"""``gateway decode pcap FILE [--raw] [--counts]``: one JSON line per probe request in a pcap/pcapng file.

``{"ts", "mac", "randomized", "rssi", "channel", "ssid_hidden", "fingerprint", "group"}``

``--counts`` prints the Wi-Fi device counts instead (``wifi.devices`` events as the daemon sends
them: every minute, every 15 minutes with the distinct devices, and the whole capture last), and
the whole capture's on stderr either way: devices present on average and distinct devices, each
with its standard deviation (gateway/identity/wifi_presence.py; docs/wifi.md, "Counting").

* ``mac`` is the daily pseudonym (keyed HMAC, key drawn for this run and never stored) unless
  ``--raw`` asks for the address itself (a technician's local debugging aid);
* ``group`` clusters rotating randomized MACs that are probably one device: by default over the
  whole capture (``--grouping capture``, gateway.identity.wifi_chains: every MAC's whole life is
  known before any group is decided; memory ~20 bytes per probe request, lines come out at the
  end), or online as the daemon does (``--grouping stream``, gateway.identity.wifi_groups: constant
  memory, lines as they are decided);
* frames that are malformed, have a bad FCS, were heard off their channel or are not probe requests
  are counted and skipped; the counts go to stderr at the end;
* a corrupt file stops with exit code 2 and the byte offset (lines before it were printed);
* lines are in capture order; with ``--grouping stream`` a new random MAC's lines may wait
  (``--group-hold``, 30 s of capture time at most) until its group is decided - see docs/wifi.md,
  "Held decisions".

The file is read once; with ``--grouping stream`` its size does not matter. No SSID is ever printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from gateway.config import PrivacySettings, WifiSettings
from gateway.identity.pseudonyms import PseudonymKeyring
from gateway.identity.wifi_chains import ChainGrouper
from gateway.identity.wifi_count import count_marks
from gateway.identity.wifi_groups import DEFAULT_GROUP_HOLD_S, GroupParams, WifiGrouper
from gateway.models import PresenceMark
from gateway.parsers.pcap import PcapError, read_records
from gateway.parsers.wifi_probe import Probe, ProbeDecoder

Marks = list[tuple[float, str, PresenceMark]]  # (time, group, what the burst stands for) of every heard burst

GROUPINGS = ("capture", "stream")


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
        "--grouping",
        choices=GROUPINGS,
        default="capture",
        help="capture: group MACs knowing the whole capture (purest; lines at the end, ~20 bytes of memory "
        "per probe); stream: online as the daemon does (constant memory, lines as decided)",
    )
    p.add_argument(
        "--counts",
        action="store_true",
        help="print the Wi-Fi device counts (wifi.devices events: every minute, every 15 minutes, the whole "
        "capture last) instead of the probe requests",
    )
    p.add_argument(
        "--group-hold",
        type=_hold_seconds,
        default=DEFAULT_GROUP_HOLD_S,
        metavar="SECONDS",
        help="--grouping stream: longest wait (capture time) for the evidence that decides a new random MAC's "
        "group; 0: decide at once",
    )
    p.set_defaults(func=_run)


MAX_GROUP_HOLD_S = 600.0  # as wifi.group_hold_s: below the grouper's forget_s, so a held MAC never expires


def _hold_seconds(text: str) -> float:
    """``--group-hold``: a finite number of seconds in [0, 600] (argparse reports the ValueError)."""
    v = float(text)
    if not 0.0 <= v <= MAX_GROUP_HOLD_S:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_GROUP_HOLD_S:g} seconds, got {text}")
    return v


class _Names:
    """The part of a line from the MAC's name to the rssi key, per MAC: the daily pseudonym of the
    key epoch of the frame's time (or the raw address with ``--raw``)."""

    def __init__(self, raw: bool) -> None:
        privacy = PrivacySettings()
        self.keyring = PseudonymKeyring(
            rotation_time=privacy.rotation_time, period_h=privacy.rotation_period_h, nbytes=privacy.pseudonym_bytes
        )
        self.raw = raw
        self.cache: dict[str, str] = {}  # mac -> text, for the current key epoch (emptied when it changes)
        self.epoch = 0
        # the key epoch of a frame's time (cached per minute by the keyring); raw addresses have none.
        # Callers: ``if epoch_of is not None and epoch_of(ts) != names.epoch: names.turn(ts)``
        self.epoch_of = None if raw else self.keyring.epoch_of

    def turn(self, ts: float) -> None:
        """A new key epoch: every MAC's pseudonym changes."""
        self.epoch = self.keyring.epoch_of(ts)
        self.cache.clear()

    def make(self, mac: str, randomized: bool, ts: float) -> str:
        name = mac if self.raw else self.keyring.pseudonym(mac, ts)
        mid = self.cache[mac] = f'"mac": "{name}", "randomized": {"true" if randomized else "false"}, "rssi": '
        return mid


def _head(ts: float, mid: str, rssi: int | None, channel: int | None, hidden: bool, fp: str) -> str:
    """A line up to its group id (hand-formatted: every value is a number, bool, null or a hex/id
    string, nothing to escape)."""
    return (
        f'{{"ts": {ts:.6f}, {mid}{"null" if rssi is None else rssi}, '
        f'"channel": {"null" if channel is None else channel}, '
        f'"ssid_hidden": {"true" if hidden else "false"}, '
        f'"fingerprint": "{fp}", "group": "'
    )


def decode_file(
    path: Path,
    out: TextIO,
    *,
    raw: bool = False,
    keep_off_channel: bool = False,
    grouping: str = "capture",
    group_hold_s: float = DEFAULT_GROUP_HOLD_S,
    summary: dict[str, float] | None = None,
    counts: bool = False,
    marks: Marks | None = None,
) -> tuple[ProbeDecoder, int, PcapError | None]:
    """Decode ``path`` to ``out``; returns the decoder (its counts), records read and any file error.

    ``summary`` (when given) receives ``groups`` and the whole capture's count (see docs/wifi.md,
    "Counting"): ``devices`` present on average and ``distinct`` devices, each with its ``_sd``.
    ``counts``: write the count events (JSON lines) instead of the probe requests. ``marks`` (when
    given) receives every heard burst's mark ``(time, group, mark)`` in time order.

    Lines come out in capture order. ``grouping="capture"`` decides groups once the whole file is
    read (:class:`ChainGrouper`) and writes every line then; ``"stream"`` groups online
    (:class:`WifiGrouper`): a frame of a new randomized MAC whose link is undecided is held (with
    every line after it) until the grouper decides, at most ``group_hold_s`` of capture time later,
    and at the end of the file. Either way the lines before a file error are written.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
    dec = ProbeDecoder(keep_off_channel=keep_off_channel)
    names = _Names(raw)
    got: Marks = [] if marks is None else marks
    with path.open("rb") as f:
        probes = dec.iter_probes(read_records(f))
        if grouping == "capture":
            error, groups = _decode_capture(probes, out, names, got, write=not counts)
        else:
            error, groups = _decode_stream(probes, out, names, group_hold_s, got, write=not counts)
    got.sort(key=lambda m: m[0])
    events, whole = count_marks(got, window_s=WifiSettings().count_window_s)
    if counts:
        for e in [*events, *([whole] if whole is not None else [])]:
            out.write(e.model_dump_json(exclude_none=True) + "\n")
        out.flush()
    if summary is not None:
        summary.update(groups=float(groups))
        if whole is not None:
            assert whole.distinct is not None
            assert whole.distinct_sd is not None
            summary.update(
                devices=whole.devices, devices_sd=whole.sd, distinct=whole.distinct, distinct_sd=whole.distinct_sd
            )
    return dec, dec.records, error


_NO_VALUE = -32768  # rssi / channel not known (array slots hold ints)


def _decode_capture(
    probes: Iterator[Probe], out: TextIO, names: _Names, marks: Marks, *, write: bool
) -> tuple[PcapError | None, int]:
    """Read every probe (kept compactly: ~20 bytes each), group over the whole capture, write (the
    lines unless ``write`` is false); the bursts' marks go to ``marks``. Returns (error, groups)."""
    chains = ChainGrouper(prefix="g")
    learn = chains.add
    tss = array("d")
    macs = array("i")  # index of the frame's MAC (its order of first appearance)
    rssis = array("h")
    channels = array("h")
    flags = array("b")  # bit 0: ssid hidden
    fps = array("i")
    fp_ids: dict[str, int] = {}
    mac_list: list[tuple[str, bool]] = []
    error: PcapError | None = None
    try:
        for ts, mac, randomized, rssi, channel, hidden, fp, seq, ssid in probes:
            i = learn(mac, randomized, fp, seq, ts, rssi, ssid)
            if i == len(mac_list):
                mac_list.append((mac, randomized))
            k = fp_ids.get(fp)
            if k is None:
                k = fp_ids[fp] = len(fp_ids)
            tss.append(ts)
            macs.append(i)
            rssis.append(_NO_VALUE if rssi is None else rssi)
            channels.append(_NO_VALUE if channel is None else channel)
            flags.append(1 if hidden else 0)
            fps.append(k)
    except PcapError as e:
        error = e
    groups = chains.solve()
    marks.extend(chains.marks(groups))
    n_groups = len(set(groups.values()))
    if not write:
        return error, n_groups
    fp_list = list(fp_ids)
    group_of = [groups[m] for m, _r in mac_list]
    cache = names.cache
    epoch_of = names.epoch_of
    lines: list[str] = []
    add = lines.append
    for j, ts in enumerate(tss):
        if epoch_of is not None and epoch_of(ts) != names.epoch:
            names.turn(ts)
        i = macs[j]
        mac, randomized = mac_list[i]
        mid = cache.get(mac)
        if mid is None:
            mid = names.make(mac, randomized, ts)
        rssi = rssis[j]
        channel = channels[j]
        add(
            _head(
                ts,
                mid,
                None if rssi == _NO_VALUE else rssi,
                None if channel == _NO_VALUE else channel,
                flags[j] == 1,
                fp_list[fps[j]],
            )
            + group_of[i]
            + '"}\n'
        )
        if len(lines) >= 2048:
            out.write("".join(lines))
            lines.clear()
    out.write("".join(lines))
    out.flush()
    return error, n_groups


def _decode_stream(
    probes: Iterator[Probe], out: TextIO, names: _Names, group_hold_s: float, marks: Marks, *, write: bool
) -> tuple[PcapError | None, int]:
    """Group online (held frames wait, with the lines after them) and write lines as they settle
    (unless ``write`` is false); the bursts' marks go to ``marks``. Returns (error, groups)."""
    grouper = WifiGrouper(GroupParams(max_delay_s=group_hold_s), prefix="g")
    cache = names.cache
    epoch_of = names.epoch_of
    # lines in capture order; a held frame's line is its slot's index in ``held`` until decided
    lines: list[str] = []
    add = lines.append
    held: dict[int, str] = {}  # slot -> line text before the group id
    held_ts: dict[int, float] = {}  # slot -> frame time, while held
    base = 0  # capture index of lines[0]
    offer = grouper.offer
    ready = grouper.ready
    error: PcapError | None = None
    limit = 2048  # write out settled lines once this many are buffered
    now = 0.0

    def on_mark(item: object, mark: PresenceMark) -> None:
        ts = held_ts.get(item, now) if isinstance(item, int) else now
        marks.append((ts, "", mark))

    grouper.on_mark = on_mark

    def settle(decided: list[tuple[object, str]]) -> None:
        for item, gid in decided:
            k = item if isinstance(item, int) else -1
            held_ts.pop(k, None)
            if write:
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

    slot = 0
    try:
        for ts, mac, randomized, rssi, channel, hidden, fp, seq, ssid in probes:
            now = ts
            if not write:
                if offer(mac, randomized, fp, seq, ts, rssi, slot, ssid) is None:
                    held_ts[slot] = ts
                slot += 1
                if ready:
                    settle(ready)
                continue
            if epoch_of is not None and epoch_of(ts) != names.epoch:
                names.turn(ts)
            mid = cache.get(mac)
            if mid is None:
                mid = names.make(mac, randomized, ts)
            slot = base + len(lines)
            group = offer(mac, randomized, fp, seq, ts, rssi, slot, ssid)
            head = _head(ts, mid, rssi, channel, hidden, fp)
            if group is not None:
                add(head + group + '"}\n')
            else:  # held: the line waits for its group (and the lines after it wait for it)
                held[slot] = head
                held_ts[slot] = ts
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
        if write:
            write_settled()
            out.flush()
    return error, grouper.created


def _run(args: argparse.Namespace) -> int:
    path: Path = args.file
    summary: dict[str, float] = {}
    try:
        dec, records, error = decode_file(
            path,
            sys.stdout,
            raw=args.raw,
            keep_off_channel=args.keep_off_channel,
            grouping=args.grouping,
            group_hold_s=args.group_hold,
            summary=summary,
            counts=args.counts,
        )
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except OSError as e:
        if e.filename is None:  # writing the lines failed (e.g. a full disk)
            print(f"error: cannot write the output: {e.strerror}", file=sys.stderr)
            return 1
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
    if summary:
        line = f"{path}: {summary['groups']:.0f} groups"
        if "devices" in summary:
            line += (
                f"; Wi-Fi devices present {summary['devices']:.1f} +- {summary['devices_sd']:.1f} on average, "
                f"{summary['distinct']:.0f} +- {summary['distinct_sd']:.0f} distinct (estimates, 1 sd)"
            )
        print(line, file=sys.stderr)
    if error is not None:
        print(f"error: {path}: {error}", file=sys.stderr)
        return 2
    return 0
