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
