"""``gateway status ...`` sub-commands. Imports are lazy so other commands do not pay for argon2/numpy."""

from __future__ import annotations

import argparse
import ipaddress
import math
import sys
from pathlib import Path
from typing import Any


def _usage(msg: str) -> int:
    print(f"gateway status: error: {msg}", file=sys.stderr)
    return 2


def _set_password(args: argparse.Namespace) -> int:
    from gateway.status.auth import set_password_command

    f: Path = args.file
    if f.is_dir():
        return _usage(f"--file {f}: is a directory; give the credential file's name")
    if not f.parent.is_dir():
        return _usage(f"--file {f}: directory {f.parent} does not exist")
    return set_password_command(args)


def check_demo_args(args: argparse.Namespace) -> str | None:
    """Why these ``status demo`` arguments are wrong (None: fine)."""
    if not 0 <= args.port <= 65535:
        return f"--port {args.port}: must be 0..65535 (0: any free port)"
    try:
        ipaddress.ip_address(args.host)
    except ValueError:
        if args.host != "localhost":
            return f"--host {args.host!r}: not an IP address to listen on (e.g. 127.0.0.1)"
    if not 0 <= args.devices <= 10000:
        return f"--devices {args.devices}: must be 0..10000"
    if not args.credential.is_file():
        return f"--credential {args.credential}: no such file (make one: gateway status set-password)"
    for name in ("speed", "rate", "warmup"):
        v = getattr(args, name)
        low_ok = v >= 0 if name == "warmup" else v > 0
        if not (math.isfinite(v) and low_ok and v <= 1e6):
            return f"--{name} {v:g}: must be a finite number {'>= 0' if name == 'warmup' else '> 0'}"
    if args.speed > 10000:
        return f"--speed {args.speed:g}: at most 10000"
    return None


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo.status_demo import demo_command

    why = check_demo_args(args)
    if why is not None:
        return _usage(why)
    return demo_command(args)


def add_commands(sub: Any) -> None:
    st: argparse.ArgumentParser = sub.add_parser("status", help="technician status page tools")
    ssub = st.add_subparsers(dest="status_command", required=True, metavar="ACTION")
    sp = ssub.add_parser(
        "set-password", help="write the technician credential (argon2id hash); password read from stdin"
    )
    sp.add_argument("--file", required=True, type=Path, help="credential file to write (mode 0600)")
    sp.add_argument("--user", required=True, help="technician user name")
    sp.set_defaults(func=_set_password)
    dp = ssub.add_parser("demo", help="serve the status page over a simulated crowd (no radios needed)")
    dp.add_argument("--layout", type=Path, default=None, help="layout TOML (default: the embedded demo store)")
    dp.add_argument("--credential", type=Path, required=True, help="credential file (gateway status set-password)")
    dp.add_argument("--host", default="127.0.0.1")
    dp.add_argument("--port", type=int, default=8080)
    dp.add_argument("--devices", type=int, default=40, help="synthetic crowd size (without --sim)")
    dp.add_argument("--seed", type=int, default=1)
    dp.add_argument("--sim", action="store_true", help="drive the page from the store simulator + pipeline")
    dp.add_argument("--speed", type=float, default=1.0, help="--sim: simulated seconds per wall second")
    dp.add_argument("--rate", type=float, default=600.0, help="--sim: shoppers per hour")
    dp.add_argument("--warmup", type=float, default=60.0, help="--sim: simulated seconds run before serving")
    dp.set_defaults(func=_demo)
