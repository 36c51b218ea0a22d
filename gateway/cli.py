"""Command-line entry point: ``gateway <command> ...``.

Each feature module contributes its sub-commands through an ``add_commands(subparsers)`` function
listed in ``COMMAND_MODULES``; a command sets ``func`` (returning an exit code) on its parser.
Exit codes: 0 ok, 1 runtime failure, 2 bad input/usage (argparse's convention).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
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
    "gateway.demo.status_demo",  # gateway status demo (after status_cli: it joins that group)
]


def _config_check(args: argparse.Namespace) -> int:
    try:
        s = load_settings(args.file)
    except ConfigError as e:
        for line in e.lines:
            print(line, file=sys.stderr)
        print(f"{len(e.lines)} error(s)", file=sys.stderr)
        return 2
    print(f"{args.file or '<defaults+env>'}: ok (gateway {s.gateway.id}, store {s.gateway.store_id})")
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Settings.model_json_schema(), indent=2))
    return 0


def _config_docs(args: argparse.Namespace) -> int:
    print(config_docs())
    return 0


def _schemas(args: argparse.Namespace) -> int:
    from gateway.ops.schemas import write_schemas

    for p in write_schemas(Path(args.out)):
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="In-store presence gateway")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cfg = sub.add_parser("config", help="check, document or describe the configuration")
    csub = cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    chk = csub.add_parser("check", help="validate a config file (+ GATEWAY_* env); print each error")
    chk.add_argument("file", nargs="?", default=None)
    chk.set_defaults(func=_config_check)
    csub.add_parser("schema", help="print the config JSON Schema").set_defaults(func=_config_schema)
    csub.add_parser("docs", help="print the config reference (markdown)").set_defaults(func=_config_docs)

    sch = sub.add_parser("schemas", help="export wire-message JSON Schemas")
    sch.add_argument("--out", default="docs/schemas")
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
    return rc
