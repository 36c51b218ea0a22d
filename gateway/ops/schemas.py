"""Export the JSON Schema of every wire message (and the config) into ``docs/schemas/``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from gateway.models import EVENT_ADAPTER, WIRE_MODELS


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


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in all_schemas().items():
        p = out_dir / f"{name}.schema.json"
        p.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        written.append(p)
    return written
