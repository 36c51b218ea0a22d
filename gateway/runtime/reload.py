"""Reloading the configuration of a running daemon ("Reload config" on the status page).

The file is read and validated again exactly as at start-up (``gateway.config.load_settings``,
the same ``GATEWAY_*`` environment, the same overrides); an invalid file changes nothing and the
answer names the fields. A valid one is compared with the running settings key by key:

* keys in ``LIVE_KEYS`` are read by the daemon each time they are used (or re-applied by it, like
  the log level), so they take effect at once;
* every other changed key is listed as needing a restart (``systemctl restart gateway``): it was
  used to build something at start-up (a source, the localizer, the uplink's connection ...).

Secrets are never echoed: the answer names keys, not values. The floor-plan file named by
``paths.layout`` is read at start-up only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gateway.config import ConfigError, Settings

# section.key -> takes effect without a restart (see Daemon.reload_config for how each is applied)
LIVE_KEYS = frozenset(
    {
        "log.level",
        "log.format",
        "outbox.flush_interval_s",
        "outbox.append_batch",
        "pipeline.max_delay_s",
        "supervisor.drain_deadline_s",
        "supervisor.restart_backoff_min_s",
        "supervisor.restart_backoff_max_s",
        "supervisor.max_restarts",
        "supervisor.restart_window_s",
    }
)
MAX_LISTED = 12  # keys named in one answer (the rest are counted)


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload found and did; ``message()`` is the status page's answer."""

    ok: bool
    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())

    def message(self) -> str:
        if not self.ok:
            return f"configuration not reloaded ({len(self.errors)} error(s)): " + "; ".join(self.errors[:3])
        if not self.applied and not self.needs_restart:
            return "configuration reloaded: no changes"
        parts = []
        if self.applied:
            parts.append("applied " + _names(self.applied))
        if self.needs_restart:
            parts.append("needs a restart (systemctl restart gateway): " + _names(self.needs_restart))
        return "configuration reloaded: " + "; ".join(parts)


def _names(keys: tuple[str, ...]) -> str:
    shown = ", ".join(keys[:MAX_LISTED])
    return shown if len(keys) <= MAX_LISTED else f"{shown} and {len(keys) - MAX_LISTED} more"


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and prefix.count(".") < 1:  # section -> keys (values may be dicts too)
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else k, v, out)
    else:
        out[prefix] = value


def changed_keys(old: Settings, new: Settings) -> list[str]:
    """``section.key`` of every setting whose value differs, in model order."""
    a: dict[str, Any] = {}
    b: dict[str, Any] = {}
    _flatten("", old.model_dump(mode="json"), a)
    _flatten("", new.model_dump(mode="json"), b)
    return [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def with_keys(old: Settings, new: Settings, keys: Iterable[str]) -> Settings:
    """``old`` with the values of ``keys`` (``section.key``) taken from ``new``: the running settings
    after a reload (everything else keeps its start-up value until the restart)."""
    old_sections, new_sections = dict(old), dict(new)  # section name -> section model
    updates: dict[str, dict[str, Any]] = {}
    for key in keys:
        section, name = key.split(".", 1)
        updates.setdefault(section, {})[name] = dict(new_sections[section])[name]
    return old.model_copy(update={s: old_sections[s].model_copy(update=u) for s, u in updates.items()})


def plan_reload(old: Settings, load: Callable[[], Settings]) -> tuple[ReloadResult, Settings]:
    """Load the settings again and split the changes; returns the result and the settings to run with."""
    try:
        new = load()
    except ConfigError as e:
        return ReloadResult(False, errors=tuple(e.lines)), old
    changed = changed_keys(old, new)
    live = tuple(k for k in changed if k in LIVE_KEYS)
    later = tuple(k for k in changed if k not in LIVE_KEYS)
    return ReloadResult(True, applied=live, needs_restart=later), with_keys(old, new, live)
