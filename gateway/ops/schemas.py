"""Documents generated from the models, kept in the repository and drift-tested:

* ``docs/schemas/<name>.schema.json``: the JSON Schema of every wire message and of the config;
* ``docs/schemas/asyncapi.json``: an AsyncAPI 3.0 description of the MQTT contract (channels,
  operations, QoS/retain bindings, every payload schema);
* the table of event types and their fields in ``docs/mqtt.md`` (between the
  ``<!-- events:begin -->`` / ``<!-- events:end -->`` markers).

``gateway schemas [--out docs/schemas] [--mqtt-doc docs/mqtt.md]`` rewrites them.
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic.json_schema import models_json_schema

from gateway import __version__
from gateway.models import (
    EVENT_ADAPTER,
    EVENT_PRIORITY,
    WIRE_MODELS,
    Event,
    EventBase,
    GatewayStatus,
    UplinkBatch,
    UplinkEvent,
)

EVENTS_BEGIN = "<!-- events:begin (generated from gateway/models.py by gateway schemas; do not edit) -->"
EVENTS_END = "<!-- events:end -->"


def all_schemas() -> dict[str, dict[str, object]]:
    from gateway.config import Settings

    out: dict[str, dict[str, object]] = {"event": EVENT_ADAPTER.json_schema()}
    from gateway.content.commands import COMMAND_MODELS
    from gateway.content.rules import Actor, Campaign

    models: dict[str, type[BaseModel]] = dict(WIRE_MODELS) | COMMAND_MODELS | {"campaign": Campaign, "actor": Actor}
    for name, model in sorted(models.items()):
        out[name] = model.model_json_schema()
    out["config"] = Settings.model_json_schema()
    return out


def event_models() -> list[type[EventBase]]:
    """The event classes of the wire union, in its order."""
    union = typing.get_args(typing.get_args(Event)[0])  # Annotated[Union[...], Field(discriminator)]
    return [m for m in union if isinstance(m, type) and issubclass(m, EventBase)]


def _type_name(ann: Any) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        named = " or ".join(_type_name(a) for a in args if a is not type(None))
        return named + (" or null" if type(None) in args else "")
    if origin is typing.Literal:
        return "`" + "`, `".join(str(a) for a in args) + "`"
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"object of {_type_name(args[1])}"
    name = getattr(ann, "__name__", str(ann))
    return {"str": "string", "float": "number", "int": "integer", "bool": "boolean"}.get(name, name)


def _field_row(name: str, f: FieldInfo) -> str:
    required = "yes" if f.is_required() else "no"
    return f"`{name}` | {_type_name(f.annotation)} | {required} | {(f.description or '').replace('|', '/')}"


def event_table() -> str:
    """Markdown: every event type, its outbox priority and its fields, from gateway/models.py."""
    common = list(EventBase.model_fields)
    lines = [
        EVENTS_BEGIN,
        "",
        "Every event carries " + ", ".join(f"`{c}`" for c in common) + " (`EventBase` in gateway/models.py)"
        " besides the fields below. Priority: what the outbox evicts first when it is full (fix, then"
        " aggregate, then presence; activation reports last).",
        "",
        "| `type` | priority | field | type | required | description |",
        "|---|---|---|---|---|---|",
    ]
    base = set(common)
    for m in event_models():
        t = str(m.model_fields["type"].default)
        prio = EVENT_PRIORITY[t].name.lower()
        own = [(n, f) for n, f in m.model_fields.items() if n not in base and n != "type"]
        if not own:
            lines.append(f"| `{t}` | {prio} | | | | {(m.__doc__ or '').strip().splitlines()[0] if m.__doc__ else ''} |")
        for i, (n, f) in enumerate(own):
            lead = f"| `{t}` | {prio} | " if i == 0 else "| | | "
            lines.append(lead + _field_row(n, f) + " |")
    lines += ["", EVENTS_END]
    return "\n".join(lines)


def update_marked(text: str, block: str) -> str:
    """``text`` with the part between the event markers replaced by ``block`` (markers included)."""
    start, end = text.find(EVENTS_BEGIN.split(" (")[0]), text.find(EVENTS_END)
    if start < 0 or end < 0:
        raise ValueError(f"markers {EVENTS_BEGIN.split(' (')[0]!r} ... {EVENTS_END!r} not found")
    return text[:start] + block + text[end + len(EVENTS_END) :]


def asyncapi() -> dict[str, Any]:
    """AsyncAPI 3.0 document of the gateway <-> platform MQTT contract (docs/mqtt.md in prose)."""
    from gateway.content.commands import CommandEnvelope, CommandReply

    models: list[type[BaseModel]] = [UplinkEvent, UplinkBatch, GatewayStatus, CommandEnvelope, CommandReply]
    _, top = models_json_schema([(m, "validation") for m in models], ref_template="#/components/schemas/{model}")
    schemas = dict(sorted(top.get("$defs", {}).items()))
    params = {
        "prefix": {"description": "mqtt.topic_prefix (default retail)"},
        "store_id": {"description": "gateway.store_id"},
        "gateway_id": {"description": "gateway.id"},
    }

    def channel(leaf: str, messages: list[str], desc: str) -> dict[str, Any]:
        return {
            "address": "{prefix}/{store_id}/{gateway_id}/" + leaf,
            "description": desc,
            "parameters": {k: {"$ref": f"#/components/parameters/{k}"} for k in params},
            "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
        }

    def operation(action: str, ch: str, msgs: list[str], qos: int, retain: bool, desc: str) -> dict[str, Any]:
        return {
            "action": action,
            "description": desc,
            "channel": {"$ref": f"#/channels/{ch}"},
            "messages": [{"$ref": f"#/channels/{ch}/messages/{m}"} for m in msgs],
            "bindings": {"mqtt": {"qos": qos, "retain": retain, "bindingVersion": "0.2.0"}},
        }

    messages = {
        "UplinkEvent": "One event, with the gateway id and its per-gateway sequence number",
        "UplinkBatch": "Several UplinkEvent while the backlog is large (each item byte for byte the single message)",
        "GatewayStatus": "Birth online on connect, offline on a clean stop and as the last will",
        "CommandEnvelope": "A signed command (docs/commands.md); the body's schema depends on kind",
        "CommandReply": "The answer to every command, ok or the refusal with a JSON pointer",
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Store gateway <-> platform (MQTT)",
            "version": __version__,
            "description": "Generated by `gateway schemas` from gateway/models.py and gateway/content/commands.py;"
            " the prose contract is docs/mqtt.md, the commands docs/commands.md.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "events": channel("events", ["UplinkEvent", "UplinkBatch"], "Events, durable and at least once"),
            "status": channel("status", ["GatewayStatus"], "Retained gateway status"),
            "commands": channel("commands", ["CommandEnvelope"], "Commands from the platform to one gateway"),
            "replies": channel("replies", ["CommandReply"], "The gateway's answer to each command"),
        },
        "operations": {
            "sendEvents": operation(
                "send", "events", ["UplinkEvent", "UplinkBatch"], 1, False, "Dedupe by (gateway_id, seq)"
            ),
            "sendStatus": operation("send", "status", ["GatewayStatus"], 1, True, "Also the MQTT last will"),
            "receiveCommands": operation(
                "receive", "commands", ["CommandEnvelope"], 1, False, "Verified, then applied in revision order"
            ),
            "sendReplies": operation("send", "replies", ["CommandReply"], 1, False, "One per command received"),
        },
        "components": {
            "parameters": params,
            "messages": {
                name: {"name": name, "summary": summary, "payload": {"$ref": f"#/components/schemas/{name}"}}
                for name, summary in messages.items()
            },
            "schemas": schemas,
        },
    }


def write_schemas(out_dir: Path, mqtt_doc: Path | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        p = out_dir / f"{name}.schema.json"
        p.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(p)
    p = out_dir / "asyncapi.json"
    p.write_text(json.dumps(asyncapi(), indent=2) + "\n", encoding="utf-8")
    written.append(p)
    if mqtt_doc is not None:
        mqtt_doc.write_text(update_marked(mqtt_doc.read_text(encoding="utf-8"), event_table()), encoding="utf-8")
        written.append(mqtt_doc)
    return written
