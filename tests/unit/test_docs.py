"""Generated documents match the code that generates them, and docs carry no machine's paths.

Regenerate with: `gateway schemas --mqtt-doc docs/mqtt.md`, `gateway cli-reference > docs/cli.md`,
`gateway config docs > docs/config.md` (tests/unit/test_config.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from gateway.cli import cli_reference
from gateway.config import load_settings
from gateway.models import UplinkEvent, ZoneEntered
from gateway.ops.preflight import check
from gateway.ops.schemas import EVENTS_BEGIN, EVENTS_END, all_schemas, asyncapi, event_models, event_table

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def test_committed_schemas_are_current_and_complete() -> None:
    want = {f"{name}.schema.json": schema for name, schema in all_schemas().items()}
    have = {p.name for p in (DOCS / "schemas").glob("*.schema.json")}
    assert have == set(want), f"stale or missing: {sorted(have ^ set(want))}; run: gateway schemas"
    for name, schema in want.items():
        committed = json.loads((DOCS / "schemas" / name).read_text())
        assert committed == schema, f"docs/schemas/{name} is stale; run: gateway schemas"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref" and isinstance(v, str)] + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_asyncapi_document_is_current_and_self_consistent() -> None:
    doc = asyncapi()
    assert json.loads((DOCS / "schemas" / "asyncapi.json").read_text()) == doc, "run: gateway schemas"
    assert doc["asyncapi"] == "3.0.0"
    for ref in _refs(doc):
        _resolve(doc, ref)  # every reference points at something in the document
    ops = doc["operations"]
    assert {o["action"] for o in ops.values()} == {"send", "receive"}
    assert ops["sendStatus"]["bindings"]["mqtt"]["retain"] is True
    assert all(o["bindings"]["mqtt"]["qos"] == 1 for o in ops.values())
    # each event type of the wire union is described, with the fields the model has
    schemas = doc["components"]["schemas"]
    for m in event_models():
        assert set(schemas[m.__name__]["properties"]) == set(m.model_fields), m.__name__
    # a real message's top-level keys are the schema's
    msg = json.loads(
        UplinkEvent(
            gateway_id="gw-1", seq=1, event=ZoneEntered(ts=1.0, store_id="s", subject="p", zone="z")
        ).model_dump_json()
    )
    assert set(msg) == set(schemas["UplinkEvent"]["properties"])
    assert set(schemas["CommandEnvelope"]["required"]) >= {"aud", "expires_at", "issued_at", "alg", "sig"}


def test_mqtt_md_event_table_is_current() -> None:
    text = (DOCS / "mqtt.md").read_text()
    start, end = text.index(EVENTS_BEGIN), text.index(EVENTS_END) + len(EVENTS_END)
    assert text[start:end] == event_table(), "run: gateway schemas --mqtt-doc docs/mqtt.md"
    for m in event_models():
        assert f"| `{m.model_fields['type'].default}` |" in text


def test_cli_reference_is_current() -> None:
    assert (DOCS / "cli.md").read_text() == cli_reference(), "run: gateway cli-reference > docs/cli.md"


def test_example_config_is_valid() -> None:
    """The annotated example loads with the daemon's model; on this machine only its box files are
    missing (no value of it is wrong)."""
    s = load_settings(DOCS / "gateway.example.toml")
    assert s.gateway.id == "gw-0042-a" and s.ble.enabled and s.status.allowed_hosts
    for p in check(s):
        assert p.severity == "warning" or "no such file" in p.reason or "cannot read" in p.reason, p.line()


def test_no_absolute_paths_of_a_machine_in_the_tree() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"(?<![\w.$])/(work|home/[a-z][\w-]*|Users/\w+|root)/")
    offenders = []
    for name in files:
        p = REPO / name
        if p.suffix not in {".md", ".py", ".toml", ".sh", ".service", ".json", ".cfg", ".txt", ""} or not p.is_file():
            continue
        for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line) and "pattern = re.compile" not in line:
                offenders.append(f"{name}:{n}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
