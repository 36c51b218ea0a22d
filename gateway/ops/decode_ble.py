"""``gateway decode ble HEX`` / ``--file F``: decode raw BLE advertising payloads to JSON.

Input is the hex of the AD structures (the bytes after the advertiser address); ``:``, spaces
and a ``0x`` prefix are tolerated. One JSON object is printed per payload. On malformed input the
exit code is 2 and stderr gets one line per bad payload naming the byte offset and the problem
(``--file`` keeps going so one bad line does not hide the rest).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gateway.parsers.ble import AdvertParseError, parse_advert_uncached

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


def decode_hex(text: str) -> dict[str, Any]:
    """The JSON object for one payload; raises AdvertParseError on malformed input."""
    data = hex_to_bytes(text)
    out = parse_advert_uncached(data).to_dict()
    out["length"] = len(data)
    return out


def _run(args: argparse.Namespace) -> int:
    if (args.hex is None) == (args.file is None):
        print("gateway decode ble: give either HEX or --file F", file=sys.stderr)
        return 2
    if args.hex is not None:
        try:
            print(json.dumps(decode_hex(args.hex)))
        except AdvertParseError as e:
            print(f"malformed advert: {e}", file=sys.stderr)
            return 2
        return 0
    try:
        with open(args.file, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as e:
        print(f"gateway decode ble: --file {args.file}: cannot read ({e.strerror})", file=sys.stderr)
        return 2
    rc = 0
    payloads = 0
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        payloads += 1
        try:
            print(json.dumps(decode_hex(line)))
        except AdvertParseError as e:
            print(f"{args.file}:{lineno}: malformed advert: {e}", file=sys.stderr)
            rc = 2
    if payloads == 0:
        print(
            f"gateway decode ble: --file {args.file}: no payload in the file (one hex payload per line)",
            file=sys.stderr,
        )
        return 2
    return rc


def add_decode_command(dsub: Any) -> None:
    p: argparse.ArgumentParser = dsub.add_parser(
        "ble", help="decode a raw BLE advertising payload (hex of the AD structures) to JSON"
    )
    p.add_argument("hex", nargs="?", default=None, help="payload hex, e.g. 0201061aff4c000215...")
    p.add_argument("--file", "-f", default=None, help="decode one hex payload per line of this file")
    p.set_defaults(func=_run)
