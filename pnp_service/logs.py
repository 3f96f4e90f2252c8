"""Log lines that tell one device's story and that no device can forge.

Owns the format of event lines (``event=NAME key="value" ...``, or one JSON
object per line with ``--log-format json``) and the logging set-up every process
of this package uses, gunicorn's included.  Values are always quoted and their
control characters escaped: a hostname holding a newline cannot start a line of
its own, and a value holding ``event=...`` stays inside its quotes.

The rule of this file: it knows the standard logging module, nothing of PnP.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from typing import Any, Mapping

from .xmlsafe import visible

FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: A line is at most this many bytes (2 KB with the time, level and logger before it): one value at most
#: ``VALUE_LIMIT`` characters, the message at most ``MESSAGE_LIMIT``; what is cut off is said, never silently.
LINE_LIMIT = 2048
VALUE_LIMIT = 512
MESSAGE_LIMIT = 1900


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, ending in a mark that says how much was left out."""
    if len(text) <= limit:
        return text
    mark = f"...[cut {len(text)} chars]"  # as long as the real mark, or longer
    kept = max(0, limit - len(mark))
    return text[:kept] + f"...[cut {len(text) - kept} chars]"


def fit(line: str, limit: int = LINE_LIMIT) -> str:
    """A whole line within ``limit`` UTF-8 bytes, marked when cut."""
    data = line.encode("utf-8", "replace")
    if len(data) <= limit:
        return line
    kept = data[: limit - len(f"...[cut {len(data)} bytes]")].decode("utf-8", "ignore")
    return kept + f"...[cut {len(data) - len(kept.encode())} bytes]"


def _quote(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    # JSON string escaping: quotes, backslashes and every control character escaped.
    return json.dumps(cut(str(value), VALUE_LIMIT), ensure_ascii=False)


class Event:
    """A log message made of an event name and fields, rendered only when a handler emits it."""

    __slots__ = ("name", "fields")

    def __init__(self, name: str, fields: Mapping[str, Any]):
        self.name, self.fields = name, fields

    def __str__(self) -> str:
        parts = [f"event={self.name}"]
        parts += [f"{key}={_quote(value)}" for key, value in self.fields.items() if value is not None and value != ""]
        return " ".join(parts)


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event line: ``event=NAME`` and the fields, every value quoted."""
    if logger.isEnabledFor(level):
        logger.log(level, Event(name, fields))


_SIGNATURE = re.compile(r"([?&]sig=)[0-9a-fA-F]+")


def redact(text: str) -> str:
    """A download URL's signature never reaches a log (a web server's request line may carry one)."""
    return _SIGNATURE.sub(r"\1...", text) if "sig=" in text else text


class TextFormatter(logging.Formatter):
    """The classic line, with any control character of a message shown escaped, never raw, and no signature."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = cut(redact(visible(record.message)), MESSAGE_LIMIT)
        return fit(super().formatMessage(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, and the event's fields (or the message)."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        if isinstance(record.msg, Event) and not record.args:
            data["event"] = record.msg.name
            data.update({key: cut(redact(value), VALUE_LIMIT) if isinstance(value, str) else value
                         for key, value in record.msg.fields.items() if value is not None and value != ""})
        else:
            data["message"] = cut(redact(record.getMessage()), MESSAGE_LIMIT)
        line = json.dumps(data, ensure_ascii=False, default=str)
        # Escapes can make a value longer than it was: cut the longest values further until the line fits.
        while len(line.encode()) > LINE_LIMIT:
            longest = max((key for key, value in data.items() if isinstance(value, str)), key=lambda k: len(data[k]))
            data[longest] = cut(data[longest], max(32, len(data[longest]) // 2))
            line = json.dumps(data, ensure_ascii=False, default=str)
        if record.exc_info:  # a traceback is the program's, not a device's: kept whole
            data["exception"] = self.formatException(record.exc_info)
            line = json.dumps(data, ensure_ascii=False, default=str)
        return line


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    return JsonFormatter() if log_format == "json" else TextFormatter()


def setup(level: str = "info", log_format: str = "text") -> None:
    """Configure the root logger once for the whole process (CLI, listener, gunicorn)."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))


def gunicorn_config(level: str, log_format: str, access_log: bool = False) -> dict:
    """gunicorn's ``logconfig_dict``: its error (and, when asked, access) log in the same format as ours."""
    factory = "pnp_service.logs.JsonFormatter" if log_format == "json" else "pnp_service.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"pnp": {"()": factory}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "pnp", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["console"]},
        "loggers": {
            "gunicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO" if access_log else "CRITICAL", "handlers": [], "propagate": access_log},
        },
    }
