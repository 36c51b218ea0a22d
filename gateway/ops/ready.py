"""The READY handshake between the daemon and ``gateway update`` (see ``gateway.ops.update``).

Kept apart from the updater so the daemon, which only announces READY, does not load the updater's
archive, signature and process code at start (``tarfile`` and friends: 0.35 MB of its RSS, issue 22).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

MANIFEST = "release.json"
DEFAULT_READY_FILE = Path("/run/gateway/ready.json")


def write_ready(version: str, path: Path = DEFAULT_READY_FILE) -> None:
    """Called by the daemon right after sd_notify READY=1: tells the updater this version works."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"version": version, "pid": os.getpid(), "ts": time.time()}))
    os.replace(tmp, path)


def release_version(argv0: str | None = None) -> str:
    """The running release's version: ``release.json`` at the release root (``bin/..``), else the
    package version. Parent directories are resolved (``current`` -> ``1.5.0``), the entry is not."""
    from gateway import __version__

    exe = Path(argv0 if argv0 is not None else sys.argv[0])
    # A release is a venv built at its own directory: sys.prefix is the release root.
    for root in (Path(sys.prefix), Path(os.path.realpath(exe.parent)).parent):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return str(json.loads((root / MANIFEST).read_text())["version"])
    return __version__


def announce_ready(path: Path | None = None, version: str | None = None) -> bool:
    """Best effort: write the ready file if its directory exists (``/run/gateway`` under systemd,
    or ``$GATEWAY_READY_FILE``). Never raises: READY reporting must not take the daemon down."""
    target = path or Path(os.environ.get("GATEWAY_READY_FILE") or DEFAULT_READY_FILE)
    if not target.parent.is_dir():
        return False
    try:
        write_ready(version or release_version(), target)
    except OSError:
        return False
    return True
