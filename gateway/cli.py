"""Command-line entry point: ``gateway <command> ...``.

Each feature module contributes its sub-commands through an ``add_commands(subparsers)`` function
listed in ``COMMAND_MODULES``; a command sets ``func`` (returning an exit code) on its parser.
Exit codes: 0 ok, 1 runtime failure, 2 bad input/usage (argparse's convention). Every argument
and file is checked before work starts and a bad one is one line on stderr naming it; an
unexpected exception is one line too (``GATEWAY_DEBUG=1`` prints the traceback), exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import traceback
from pathlib import Path

from gateway import __version__
from gateway.config import ConfigError, Settings, config_docs, load_settings

# Modules that add sub-commands (imported lazily by main()).
COMMAND_MODULES: list[str] = [
    "gateway.ops.decode",
    "gateway.ops.locate",
    "gateway.runtime.daemon",
    "gateway.demo.run",
    "gateway.ops.provision",
    "gateway.ops.doctor",
    "gateway.ops.update",
    "gateway.ops.status_cli",
    "gateway.ops.outbox_tool",
]


def _config_check(args: argparse.Namespace) -> int:
    """The model's checks plus what would stop ``gateway run`` (files, layout, sources, keys)."""
    from gateway.ops.preflight import check

    if args.root is not None and not Path(args.root).is_dir():
        print(f"gateway config check: --root {args.root}: not a directory", file=sys.stderr)
        return 2
    try:
        s = load_settings(args.file)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        print(f"{len(e.lines)} error(s)", file=sys.stderr)
        return 2
    where = args.file or "<defaults+env>"
    problems = check(s, root=Path(args.root) if args.root else None)
    for p in problems:
        print(f"{where}: {p.line()}", file=sys.stderr)
    errors = sum(p.severity == "error" for p in problems)
    if errors:
        print(f"{errors} error(s): `gateway run` would not work with this configuration", file=sys.stderr)
        return 2
    warned = f", {len(problems)} warning(s)" if problems else ""
    print(f"{where}: ok (gateway {s.gateway.id}, store {s.gateway.store_id}{warned})")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Settings.model_json_schema(), indent=2))
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    print(config_docs())
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from gateway.ops.schemas import write_schemas

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        print(f"gateway schemas: --out {out}: exists and is not a directory", file=sys.stderr)
        return 2
    if not out.exists() and not out.parent.is_dir():
        print(f"gateway schemas: --out {out}: parent directory {out.parent} does not exist", file=sys.stderr)
        return 2
    try:
        for p in write_schemas(out):
            print(p)
    except OSError as e:
        print(f"gateway schemas: cannot write into {out}: {e.strerror}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="In-store presence gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="check, document or describe the configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = csub.add_parser(
        "check", help="validate a config file (+ GATEWAY_* env) and what `gateway run` needs; print each problem"
    )
    chk.add_argument("file", nargs="?", default=None)
    chk.add_argument("--root", default=None, help="check an image mounted here (box paths are looked up under it)")
    chk.set_defaults(func=_config_check)
    csub.add_parser("schema", help="print the config JSON Schema").set_defaults(func=_config_schema)
    csub.add_parser("docs", help="print the config reference (markdown)").set_defaults(func=_config_docs)

    sch = sub.add_parser("schemas", help="export wire-message JSON Schemas")
    sch.add_argument("--out", default="docs/schemas", help="directory to write into (created if missing)")
    sch.set_defaults(func=_schemas)

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except ConfigError as e:  # settings read by a command that has no handler of its own
        for line in e.lines:
            print(line, file=sys.stderr)
        return 2
    except Exception as e:  # last resort: one line, not a traceback (a bug: please report it)
        if os.environ.get("GATEWAY_DEBUG"):
            traceback.print_exc()
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        print(
            f"gateway {args.command}: unexpected error: {type(e).__name__}: {e}{at} (GATEWAY_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1
    return rc
