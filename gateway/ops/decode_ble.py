"""``gateway decode ble HEX`` / ``--file F`` / ``-``: decode raw BLE advertising payloads to JSON.

Input is the hex of the AD structures (the bytes after the advertiser address); ``:``, spaces
and a ``0x`` prefix are tolerated. ``-`` (as HEX or as ``--file``) reads payloads from standard
input, one per line. One JSON object is printed per payload: the AD fields, the frames, the
vendor messages recognised (``gateway.parsers.ble_vendors``) and the device ``kind`` they name.
Company ids are printed as ``0x004C`` with the Bluetooth SIG name beside them.

On malformed input the exit code is 2 and stderr gets one line per bad payload naming the byte
offset and the problem (a file or stdin keeps going so one bad line does not hide the rest). When
the bytes look like bare manufacturer data (company id first, no AD length/type headers) the line
says so and shows the payload wrapped in an AD header to try instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from gateway.parsers.ble import AdvertParseError, parse_advert_uncached
from gateway.parsers.ble_companies import company_name
from gateway.parsers.ble_vendors import advert_kind, describe, is_manufacturer_only

_SEPARATORS = str.maketrans("", "", ": \t-_")


def hex_to_bytes(text: str) -> bytes:
    """Hex text -> bytes; raises AdvertParseError naming the first bad character's byte offset."""
    t = text.strip()
    if t[:2].lower() == "0x":
        t = t[2:]
    t = t.translate(_SEPARATORS)
    if not t:
        raise AdvertParseError(0, "empty payload")
    for i, ch in enumerate(t):
        if ch not in "0123456789abcdefABCDEF":
            raise AdvertParseError(i // 2, f"not a hex digit: {ch!r}")
    if len(t) % 2:
        raise AdvertParseError(len(t) // 2, "odd number of hex digits (half a byte at the end)")
    return bytes.fromhex(t)


def company_label(cid: int) -> str:
    """``0x004C`` with its SIG name: ``"0x004C Apple, Inc."``."""
    name = company_name(cid)
    return f"0x{cid:04X} {name}" if name else f"0x{cid:04X} (unassigned)"


def decode_hex(text: str) -> dict[str, Any]:
    """The JSON object for one payload; raises AdvertParseError on malformed input."""
    data = hex_to_bytes(text)
    try:
        adv = parse_advert_uncached(data)
    except AdvertParseError as e:
        if is_manufacturer_only(data):
            wrapped = bytes([len(data) + 1, 0xFF]) + data
            raise AdvertParseError(
                e.offset,
                f"{e.reason}; this looks like bare manufacturer data (company "
                f"{company_label(data[0] | data[1] << 8)}) without AD headers: try {wrapped.hex()}",
            ) from None
        raise
    out = adv.to_dict()
    for f in out["frames"]:
        cid = f.get("company_id")
        if isinstance(cid, int):
            f["company_id"] = f"0x{cid:04X}"
            f["company"] = company_name(cid) or "unassigned"
    msgs = describe(adv.manufacturer_data, adv.service_data, adv.service_uuids)
    out["kind"] = advert_kind(msgs)
    out["messages"] = [m.to_dict() for m in msgs]
    for m in out["messages"]:
        cid = m.get("company_id")
        if isinstance(cid, int):
            m["company_id"] = f"0x{cid:04X}"
    out["length"] = len(data)
    if not adv.frames and not adv.service_uuids and adv.local_name is None and is_manufacturer_only(data):
        out["hint"] = (
            "no advertising data found: this looks like bare manufacturer data (company id first, no AD "
            f"headers); try {(bytes([len(data) + 1, 0xFF]) + data).hex()}"
        )
    return out


def _lines(source: TextIO, label: str) -> Iterable[tuple[str, str]]:
    for lineno, line in enumerate(source.read().splitlines(), 1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield f"{label}:{lineno}", line


def _decode_many(items: Iterable[tuple[str, str]], what: str) -> int:
    rc = 0
    payloads = 0
    for where, line in items:
        payloads += 1
        try:
            print(json.dumps(decode_hex(line)))
        except AdvertParseError as e:
            print(f"{where}: malformed advert: {e}", file=sys.stderr)
            rc = 2
    if payloads == 0:
        print(f"gateway decode ble: {what}: no payload in the input (one hex payload per line)", file=sys.stderr)
        return 2
    return rc


def _run(args: argparse.Namespace) -> int:
    if (args.hex is None) == (args.file is None):
        print("gateway decode ble: give either HEX or --file F (- for either reads standard input)", file=sys.stderr)
        return 2
    if args.hex == "-" or args.file == "-":
        return _decode_many(_lines(sys.stdin, "<stdin>"), "standard input")
    if args.hex is not None:
        try:
            print(json.dumps(decode_hex(args.hex)))
        except AdvertParseError as e:
            print(f"malformed advert: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        with open(args.file, encoding="utf-8", errors="replace") as fh:
            items = list(_lines(fh, args.file))
    except OSError as e:
        print(f"gateway decode ble: --file {args.file}: cannot read ({e.strerror})", file=sys.stderr)
        return 2
    return _decode_many(items, f"--file {args.file}")


def add_decode_command(dsub: Any) -> None:
    p: argparse.ArgumentParser = dsub.add_parser(
        "ble", help="decode raw BLE advertising payloads (hex of the AD structures) to JSON, with the device kind"
    )
    p.add_argument("hex", nargs="?", default=None, help="payload hex, e.g. 0201061aff4c000215...; - reads stdin")
    p.add_argument("--file", "-f", default=None, help="decode one hex payload per line of this file (- for stdin)")
    p.set_defaults(func=_run)
