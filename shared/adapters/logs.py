"""The one logging set-up of every styleq process (API, workers, CLI), and the job fields its lines carry.

Each process's entry point calls `configure_logging` once: one handler on the root logger, writing to
standard error either JSON lines (python-json-logger: one object a line, for a log collector) or
text, at `Settings.log_level`. A line logged while `log_context(job_id=...)` is open carries that
job's fields, whichever logger wrote it: the worker's runner opens it around each job (with
`worker` and `attempt`), the API around each request that concerns a job (with the `request_id`).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from types import MappingProxyType
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from .settings import Settings

# The fields of what the current thread or task is doing (a job, a request), added to its log lines.
# The default is read-only: one mapping shared by every context, which `log_context` replaces, never changes.
_context: ContextVar[Mapping[str, Any]] = ContextVar("styleq_log_context", default=MappingProxyType({}))
# The order fields come in a JSON line; the context's fields and any `extra` follow.
JSON_FIELDS = ("asctime", "levelname", "name", "process", "message")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
# The context fields a text line ends with, when set, in this order.
TEXT_FIELDS = ("job_id", "worker", "attempt", "request_id")


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add `fields` to every line logged in this thread (or task) until the block ends."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> Any:
    """Add `fields` to the lines logged from here on in this context; return a token for `unbind`.

    For code that cannot wrap its work in `log_context`, such as Flask's before- and teardown-request hooks.
    """
    return _context.set({**_context.get(), **fields})


def unbind(token: Any) -> None:
    """Drop the fields `bind` added."""
    _context.reset(token)


def in_this_context(target: Callable[[], None]) -> Callable[[], None]:
    """Return `target` to run in a copy of the current context: a new thread's lines then carry its job's fields."""
    context = copy_context()
    return lambda: context.run(target)


class ContextFilter(logging.Filter):
    """Put the context's fields (and the process's own, such as a worker's name) on each record, unless it has them."""

    def __init__(self, static_fields: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static_fields = dict(static_fields or {})

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in {**self.static_fields, **_context.get()}.items():
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class TextFormatter(logging.Formatter):
    """The text line: time, level, logger, pid, message, then the job's fields that are set (`job_id=...`)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(f"{name}={getattr(record, name)}" for name in TEXT_FIELDS if hasattr(record, name))
        if not fields:
            return line
        first, newline, rest = line.partition("\n")  # a traceback stays below the line it explains
        return f"{first} [{fields}]{newline}{rest}"


class StandardErrorHandler(logging.StreamHandler):
    """A stream handler on whatever `sys.stderr` is when a line is written (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def uses_json(settings: Settings, stream: TextIO | None = None) -> bool:
    """Tell whether lines are written as JSON: as the setting says, or with `auto` unless `stream` is a terminal."""
    if settings.log_format != "auto":
        return settings.log_format == "json"
    stream = stream or sys.stderr
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def make_formatter(settings: Settings) -> logging.Formatter:
    """Return the formatter of the configured format."""
    if uses_json(settings):
        return JsonFormatter(list(JSON_FIELDS), rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    return TextFormatter()


def make_handler(settings: Settings, static_fields: Mapping[str, Any] | None = None) -> logging.Handler:
    """Return the one handler every styleq process logs through: standard error, the configured format, the job's fields."""
    handler = StandardErrorHandler()
    handler.setFormatter(make_formatter(settings))
    handler.addFilter(ContextFilter(static_fields))
    handler._styleq = True  # type: ignore[attr-defined]  # so that configuring again replaces it
    return handler


_configure_lock = threading.Lock()


def configure_logging(settings: Settings, static_fields: Mapping[str, Any] | None = None) -> logging.Handler:
    """Route every logger through one handler on the root logger, at `settings.log_level`; return the handler.

    Calling it again replaces the handler it installed before and leaves other handlers (a test
    runner's) alone. `static_fields` go on every line of this process (a worker's name).
    """
    handler = make_handler(settings, static_fields)
    root = logging.getLogger()
    with _configure_lock:
        for old in [old for old in root.handlers if getattr(old, "_styleq", False)]:
            root.removeHandler(old)
        root.addHandler(handler)
        root.setLevel(settings.log_level)
    # Python's own warnings become log lines too, in the same format.
    logging.captureWarnings(True)
    return handler


def dict_config(settings: Settings) -> dict[str, Any]:
    """Return a `logging.config.dictConfig` of the same set-up, for servers configured that way (gunicorn's `logconfig_dict`).

    Their own loggers keep no handler of their own and pass every line to the root's.
    """
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": settings.log_level, "handlers": ["styleq"]},
        "loggers": {
            "gunicorn.error": {"level": settings.log_level, "handlers": [], "propagate": True},
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
        },
        "handlers": {"styleq": {"()": make_handler, "settings": settings}},
        "formatters": {},
    }
