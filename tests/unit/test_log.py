import io
import json

from gateway.log import configure_logging, get_logger, redact_text


def test_redacts_mac_shapes() -> None:
    assert "aa:bb" not in redact_text("dev AA:BB:CC:DD:EE:FF seen")
    assert redact_text("a-b 01-23-45-67-89-ab x") == "a-b <redacted> x"
    assert redact_text("cisco 0123.4567.89ab") == "cisco <redacted>"
    assert redact_text("irk 0123456789abcdef0123456789abcdef") == "irk <redacted>"
    # not MAC-shaped: left alone
    assert redact_text("ts 12:30:45 seq 1234") == "ts 12:30:45 seq 1234"


def test_json_lines_and_redaction_in_nested_values() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    get_logger("t").info("hello", mac="aa:bb:cc:dd:ee:ff", nested={"x": ["11:22:33:44:55:66"]}, n=3)
    rec = json.loads(buf.getvalue().strip())
    assert rec["event"] == "hello" and rec["n"] == 3 and rec["level"] == "info"
    assert rec["mac"] == "<redacted>" and rec["nested"]["x"] == ["<redacted>"]


def test_console_format_is_key_value() -> None:
    buf = io.StringIO()
    configure_logging("info", "console", stream=buf)
    get_logger("t").info("hello", gateway="gw-1")
    out = buf.getvalue()
    assert "hello" in out and "gateway=gw-1" in out
    configure_logging("info", "json")


def test_journald_priority_prefix(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On the journal's stream each line carries its syslog priority, so `journalctl -p warning`
    filters; on any other stream, no prefix."""
    import os

    f = (tmp_path / "journal").open("w+")
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    try:
        configure_logging("debug", "json", stream=f)
        log = get_logger("t")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        f.seek(0)
        prefixes = [ln[:3] for ln in f.read().splitlines()]
        assert prefixes == ["<7>", "<6>", "<4>", "<3>"]
        other = io.StringIO()
        configure_logging("info", "json", stream=other)
        get_logger("t").warning("w")
        assert other.getvalue().startswith("{")
    finally:
        f.close()
        configure_logging("info", "json")


def test_library_logging_and_exceptions_are_one_line() -> None:
    import logging

    buf = io.StringIO()
    configure_logging("info", "json", stream=buf)
    try:
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logging.getLogger("aiohttp.server").exception("Error handling request from 10.0.0.9")
            get_logger("t").error("failed", exc_info=True)
        logging.getLogger("aiohttp.access").info("not shown below warning")
    finally:
        configure_logging("info", "json")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2, lines
    lib, own = (json.loads(x) for x in lines)
    assert lib["logger"] == "aiohttp.server" and lib["level"] == "error"
    assert lib["error"].startswith("ValueError: bad thing at test_log.py:")
    assert own["error"].startswith("ValueError: bad thing at test_log.py:") and "exception" not in own


def test_structlog_is_imported_without_rich() -> None:
    """structlog imports rich at import time when installed (2.8 MB of the daemon's RSS, issue 22);
    gateway.log hides it for that import only: rich stays importable for whoever wants it."""
    import subprocess
    import sys

    code = (
        "import sys, importlib.util\n"
        "import gateway.log\n"
        "assert 'rich' not in sys.modules and 'structlog' in sys.modules, sorted(sys.modules)\n"
        "if importlib.util.find_spec('rich') is not None:\n"
        "    import rich\n"
        "    assert rich.__name__ == 'rich'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
