"""Log lines: plain text or one JSON object a line, each with its session id, never an API key.

Redaction works on the finished line, whatever logger wrote it (ours, uvicorn's access and error
logs, a traceback): the `api_key` query parameter, the value of an Authorization header in any
of the shapes uvicorn prints, and every configured key wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

LogFormat = Literal["text", "json"]

# Set for the duration of a connection; tasks and threads started from it inherit it.
SESSION_ID: ContextVar[str | None] = ContextVar("whisperwire_session_id", default=None)

REDACTED = "[redacted]"
_QUERY_KEY = re.compile(r"(api_key=)[^&\s\"'\\#]+", re.IGNORECASE)
# "authorization: Api-Key k", ("authorization", "Bearer k"), (b'authorization', b'k'), JSON-escaped.
_AUTH_HEADER = re.compile(
    r"""(authorization['"\\]*\s*[:=,]\s*(?:b?\\?['"])?\s*(?:(?:api-key|bearer|basic|token)\s+)?)[^\s'"\\,)]+""",
    re.IGNORECASE,
)
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(session_id)s] %(message)s"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a key that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, line: str) -> str:
        line = _QUERY_KEY.sub(r"\1" + REDACTED, line)
        line = _AUTH_HEADER.sub(r"\1" + REDACTED, line)
        for secret in self._secrets:
            line = line.replace(secret, REDACTED)
        return line


class _SessionField(logging.Filter):
    """Gives every record a session_id: its own `extra`, else the connection it runs in."""

    def __init__(self, missing: str | None) -> None:
        super().__init__()
        self._missing = missing  # for lines about no session

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session_id", None) is None:
            record.session_id = SESSION_ID.get() or self._missing
        return True


class _RedactingText(logging.Formatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(_TEXT_FORMAT)
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


class _RedactingJson(JsonFormatter):
    def __init__(self, redact: Redactor) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # uvicorn repeats some messages with terminal colours in `color_message`.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))

    def process_log_record(self, log_data: dict) -> dict:  # type: ignore[override]
        if log_data.get("session_id") is None:
            log_data.pop("session_id", None)
        return log_data


def configure_logging(level: str, log_format: LogFormat = "text", secrets: Iterable[str] = ()) -> logging.Handler:
    """Send every logger's records, uvicorn's included, through one redacting handler on stderr."""
    redact = Redactor(secrets)
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.addFilter(_SessionField(missing=None))  # the key is left out
        handler.setFormatter(_RedactingJson(redact))
    else:
        handler.addFilter(_SessionField(missing="-"))
        handler.setFormatter(_RedactingText(redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own config would give these handlers that bypass redaction.
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    return handler
