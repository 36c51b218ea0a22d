"""``gateway status ...`` sub-commands. Imports are lazy so other commands do not pay for argon2/numpy.

``gateway status demo`` (the page over a simulated crowd) is the demo's: ``gateway/demo/status_demo.py``
adds it to this group (production code never imports the demo; only the CLI lists it).
"""

from __future__ import annotations

import argparse
import sys
import weakref
from pathlib import Path
from typing import Any

_GROUPS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def usage_error(msg: str) -> int:
    """One line on stderr, exit code 2 (argparse's convention for bad input)."""
    print(f"gateway status: error: {msg}", file=sys.stderr)
    return 2


def _set_password(args: argparse.Namespace) -> int:
    from gateway.status.auth import set_password_command

    f: Path = args.file
    if f.is_dir():
        return usage_error(f"--file {f}: is a directory; give the credential file's name")
    if not f.parent.is_dir():
        return usage_error(f"--file {f}: directory {f.parent} does not exist")
    return set_password_command(args)


def status_actions(sub: Any) -> Any:
    """The ``gateway status ACTION`` sub-parsers of the command set ``sub``, made on first use."""
    group = _GROUPS.get(sub)
    if group is None:
        st: argparse.ArgumentParser = sub.add_parser("status", help="technician status page tools")
        group = _GROUPS[sub] = st.add_subparsers(dest="status_command", required=True, metavar="ACTION")
    return group


def add_commands(sub: Any) -> None:
    sp = status_actions(sub).add_parser(
        "set-password", help="write the technician credential (argon2id hash); password read from stdin"
    )
    sp.add_argument("--file", required=True, type=Path, help="credential file to write (mode 0600)")
    sp.add_argument("--user", required=True, help="technician user name")
    sp.set_defaults(func=_set_password)
