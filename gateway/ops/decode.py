"""``gateway decode ...``: offline decoders. Each format module adds its own sub-command."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# Modules exposing ``add_decode_command(decode_subparsers)``.
DECODE_MODULES: list[str] = [
    "gateway.ops.decode_ble",
    "gateway.ops.decode_pcap",
]


def add_commands(sub: Any) -> None:
    dec: argparse.ArgumentParser = sub.add_parser("decode", help="decode raw radio data offline")
    dsub = dec.add_subparsers(dest="decode_command", required=True, metavar="FORMAT")
    for mod in DECODE_MODULES:
        importlib.import_module(mod).add_decode_command(dsub)
