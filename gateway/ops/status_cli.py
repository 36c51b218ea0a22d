"""``gateway status ...`` sub-commands. Imports are lazy so other commands do not pay for argon2/numpy."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def _set_password(args: argparse.Namespace) -> int:
    from gateway.status.auth import set_password_command

    return set_password_command(args)


def _demo(args: argparse.Namespace) -> int:
    from gateway.demo.status_demo import demo_command

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
