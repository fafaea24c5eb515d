"""Logging: readable lines on a terminal, JSON lines elsewhere (a container), never a secret.

Anything shaped like an Anthropic key (`worker.secret.KEY_SHAPE`, the same rule that decides what an
AdminKey accepts) is masked by a filter on every handler, as a last line of defence behind the masking
reprs of AdminKey, MasterKey and the API client's auth.

`bind(integration_id=..., window=..., request_id=...)` adds fields to every record logged in the
current context (an asyncio task and the threads it starts with `asyncio.to_thread`), so lines
from the engine, the API client and the progress reporter all carry the integration, the report
window and the last request-id without passing them around. JSON lines show them as keys, text
lines append them as `key=value`; text lines show control characters escaped (`worker.textsafe`).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from worker.secret import mask_keys
from worker.textsafe import printable

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


# Immutable default: bind() always sets a new mapping, never mutates the shared one.
_CONTEXT: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "cost_worker_log_context", default=MappingProxyType({}))


def scrub(text: str) -> str:
    return mask_keys(text)


def bind(**fields: Any) -> contextvars.Token[Mapping[str, Any]]:
    """Add fields to every record logged from now on in this context (a task, or threads it starts)."""
    return _CONTEXT.set({**_CONTEXT.get(), **fields})


def context() -> dict[str, Any]:
    return dict(_CONTEXT.get())


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    token = bind(**fields)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


class RedactFilter(logging.Filter):
    """Masks key-shaped text in the message and in every extra field; adds the bound context fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = scrub(message), None
        for name, value in _CONTEXT.get().items():
            if not hasattr(record, name):  # an explicit extra= wins over the context
                setattr(record, name, value)
        for name, value in _extras(record).items():
            if isinstance(value, str):
                setattr(record, name, scrub(value))
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    @staticmethod
    def converter(seconds: float | None = None) -> time.struct_time:
        return time.gmtime(seconds)  # the record's own time, in UTC (the `Z` below)

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%SZ")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The message line only (a traceback is added after it): API text cannot forge lines or send escapes.
        return printable(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{k}={printable(str(v))}" for k, v in _extras(record).items())
        if not extras:
            return line
        head, sep, tail = line.partition("\n")  # fields go on the message line, before any traceback
        return f"{head} [{extras}]{sep}{tail}"

    def formatException(self, ei: Any) -> str:
        return scrub(super().formatException(ei))


class _WorkerHandler(logging.StreamHandler[Any]):
    """The handler setup_logging installs: a second call replaces it, and leaves any other alone."""


def setup_logging(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = _WorkerHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _WorkerHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "apscheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
