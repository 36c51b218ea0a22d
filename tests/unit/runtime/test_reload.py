"""Reload config, the pure part: which keys changed, which apply live, what the answer says."""

from __future__ import annotations

from gateway.config import ConfigError, Settings, load_settings
from gateway.runtime.reload import LIVE_KEYS, ReloadResult, changed_keys, plan_reload, with_keys


def test_changed_keys_are_section_dot_key_in_model_order() -> None:
    old = load_settings()
    new = load_settings(log={"level": "debug"}, mqtt={"keepalive_s": 31}, nodes={"mapping": {"a": "n11"}})
    assert changed_keys(old, new) == ["log.level", "nodes.mapping", "mqtt.keepalive_s"]
    assert changed_keys(old, load_settings()) == []


def test_only_live_keys_are_applied_the_rest_waits_for_a_restart() -> None:
    old = load_settings()
    new = load_settings(log={"level": "error"}, outbox={"append_batch": 7, "max_bytes": 1 << 20})
    result, running = plan_reload(old, lambda: new)
    assert result == ReloadResult(
        True, applied=("log.level", "outbox.append_batch"), needs_restart=("outbox.max_bytes",)
    )
    assert running.log.level == "error" and running.outbox.append_batch == 7
    assert running.outbox.max_bytes == old.outbox.max_bytes  # the outbox was opened with the old cap
    assert old.log.level == "info"  # the running settings are a new object, the old one is untouched
    assert result.message() == (
        "configuration reloaded: applied log.level, outbox.append_batch;"
        " needs a restart (systemctl restart gateway): outbox.max_bytes"
    )


def test_an_invalid_configuration_changes_nothing_and_names_the_field() -> None:
    old = load_settings()

    def load() -> Settings:
        raise ConfigError(["gateway.toml: outbox.append_batch: Input should be greater than or equal to 1"])

    result, running = plan_reload(old, load)
    assert running is old and not result.ok
    assert result.message() == (
        "configuration not reloaded (1 error(s)): gateway.toml: outbox.append_batch:"
        " Input should be greater than or equal to 1"
    )


def test_secrets_are_named_never_shown_and_long_lists_are_counted() -> None:
    old = load_settings()
    new = load_settings(
        mqtt={"password": "hunter2", "username": "u", "keepalive_s": 20, "inflight": 9, "batch_max": 9},
        localization={"sigma_db": 7.0, "fix_interval_s": 2.0, "packet_loss": 0.4},
        presence={"visit_timeout_s": 100.0},
        content={"webhook_retries": 3, "breaker_failures": 9},
        status={"port": 9},
        privacy={"retention_days": 3},
    )
    result, _ = plan_reload(old, lambda: new)
    text = result.message()
    assert "mqtt.password" in text and "hunter2" not in text
    assert len(result.needs_restart) == len(changed_keys(old, new)) == 13 and text.endswith(" and 1 more")


def test_every_live_key_exists_and_with_keys_copies_just_those() -> None:
    old = load_settings()
    sections = old.model_dump()
    for key in LIVE_KEYS:
        section, name = key.split(".")
        assert name in sections[section], key
    new = load_settings(supervisor={"max_restarts": 2, "drain_deadline_s": 3.0})
    merged = with_keys(old, new, ["supervisor.max_restarts"])
    assert merged.supervisor.max_restarts == 2 and merged.supervisor.drain_deadline_s == old.supervisor.drain_deadline_s
