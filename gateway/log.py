"""structlog set-up: JSON lines in production, key=value on a terminal, MAC redaction.

The code never passes raw identifiers to the logger (pseudonyms only). As a last line of defence a
processor rewrites anything shaped like a MAC address (``aa:bb:cc:dd:ee:ff``, ``aa-bb-...``,
``aabb.ccdd.eeff``) or a 128-bit hex key in every string it logs to ``<redacted>``.

Under systemd (the output stream is the journal's: ``JOURNAL_STREAM``) every line starts with its
syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug, which journald strips
and records, so ``journalctl -u gateway -p warning`` shows warnings and errors only. Libraries
logging through the standard ``logging`` module (aiohttp, paho) go through the same pipeline, one
line per record: an exception is summarised (type, message, where), never a multi-line traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from collections.abc import MutableMapping
from typing import Any, TextIO

# ``import structlog`` without ``rich``: structlog imports rich (and its pygments) at import time
# when installed (the demo extra brings it) for its console's tracebacks: 2.8 MB of the daemon's
# RSS (issue 22). Tracebacks here are one line (``summarize_exc_info``) or formatted by
# ``traceback``, never by rich; rich stays importable for anything else that wants it.
_BLOCK_RICH = "rich" not in sys.modules
if _BLOCK_RICH:
    sys.modules["rich"] = None  # type: ignore[assignment]  # the import system's "not installed"
try:
    import structlog
finally:
    if _BLOCK_RICH:
        del sys.modules["rich"]

MAC_RE = re.compile(
    r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}(?![0-9A-Fa-f])"
    r"|(?<![0-9A-Fa-f.])(?:[0-9A-Fa-f]{4}\.){2}[0-9A-Fa-f]{4}(?![0-9A-Fa-f])"
)
KEY_RE = re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{32}(?![0-9A-Fa-f])")
REDACTED = "<redacted>"


def redact_text(text: str) -> str:
    return KEY_RE.sub(REDACTED, MAC_RE.sub(REDACTED, text))


def _redact_value(v: Any) -> Any:
    if isinstance(v, str):
        return redact_text(v)
    if isinstance(v, bytes):
        return redact_text(v.hex(":"))
    if isinstance(v, dict):
        return {k: _redact_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_redact_value(x) for x in v]
    return v


def redact_processor(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for k, v in list(event_dict.items()):
        event_dict[k] = _redact_value(v)
    return event_dict


# syslog priorities (sd-daemon(3) prefixes) of structlog's method names
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3, "critical": 2}


def is_journal(stream: TextIO) -> bool:
    """True when ``stream`` is the journal stream systemd connected us to (JOURNAL_STREAM=dev:ino)."""
    want = os.environ.get("JOURNAL_STREAM", "")
    if ":" not in want:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # io.UnsupportedOperation is both of the first two
        return False
    return want == f"{st.st_dev}:{st.st_ino}"


class PriorityPrefix:
    """Wraps the renderer: ``<N>`` before each line, N the syslog priority of the method called."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
        return f"<{PRIORITY.get(name, 6)}>{self.inner(logger, name, event_dict)}"


def summarize_exc_info(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``exc_info`` becomes one field, ``error = "Type: message at file:line"`` (no traceback lines),
    unless the caller asked for the traceback itself with ``traceback=True`` (debug level)."""
    exc = event_dict.pop("exc_info", None)
    full = event_dict.pop("traceback", False)
    if not exc:
        return event_dict
    if exc is True:
        exc = sys.exc_info()
    if isinstance(exc, BaseException):
        exc = (type(exc), exc, exc.__traceback__)
    if isinstance(exc, tuple) and len(exc) == 3 and exc[0] is not None:
        if full:
            event_dict["exception"] = "".join(traceback.format_exception(*exc))
        else:
            event_dict.setdefault("error", describe_exception(exc[1]))
    return event_dict


def describe_exception(e: BaseException) -> str:
    """``Type: message at file.py:line`` (the innermost frame): enough to find it, one line."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
    msg = " ".join(str(e).split())
    return f"{type(e).__name__}: {msg[:300]}{where}" if msg else f"{type(e).__name__}{where}"


class _StdlibBridge(logging.Handler):
    """Records of libraries using ``logging`` (aiohttp, paho, asyncio) through the structlog
    pipeline: same format, redaction, priority prefix; one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            method = {logging.DEBUG: "debug", logging.INFO: "info", logging.WARNING: "warning"}.get(
                record.levelno, "error" if record.levelno < logging.CRITICAL else "critical"
            )
            kw: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                kw["error"] = describe_exception(record.exc_info[1])
            getattr(structlog.get_logger(record.name), method)(" ".join(record.getMessage().split())[:500], **kw)
        except Exception:  # a logging failure must never take the caller down
            self.handleError(record)


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    out = stream or sys.stderr
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if use_console else structlog.processors.JSONRenderer()
    if is_journal(out):
        renderer = PriorityPrefix(renderer)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            summarize_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(h)
    root.addHandler(_StdlibBridge())
    root.setLevel(max(logging.WARNING, getattr(logging, level.upper())))


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
