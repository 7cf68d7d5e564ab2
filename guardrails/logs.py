"""Structured logs: one line per event, ``event=<name>`` followed by ``key=value`` fields.

Lease events (``lease.acquired``, ``lease.renewed_late``, ``lease.lost``,
``lease.released``) and order decisions (``order.admitted``, ``order.denied``) are each
one line, so tests and operators can grep a process's story. Secrets never go through
here: callers pass ids and amounts, never keys — and as a second fence every line the
handler writes (tracebacks included) passes through ``redacted.mask_text``: URL
credentials are masked and every secret the process registered is scrubbed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal

from guardrails import redacted

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:/@+-")


def _fmt(value: object) -> str:
    if isinstance(value, Decimal):
        text = format(value, "f")
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    if text and _SAFE.issuperset(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


Listener = Callable[[str, Mapping[str, object]], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(name, fields)`` for every event; returns the function that removes it.

    Listeners run inline in the caller of ``event`` (the order path, the lease loop), so they
    must be O(1) and never block: the alert router only appends to a bounded queue.
    """
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def event(logger: logging.Logger, name: str, level: int = logging.INFO, *,
          exc_info: bool | BaseException = False,
          **fields: object) -> None:
    """Log ``event=name k=v ...`` as one line (``exc_info``: True for the current exception, or
    an exception, whose traceback follows the line), and hand it to the listeners."""
    parts = [f"event={name}"] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    # The structured form rides along on the record for the JSON and console formats.
    logger.log(level, " ".join(parts), exc_info=exc_info,
               extra={"gr_event": name, "gr_fields": fields})
    for listener in tuple(_listeners):
        listener(name, fields)


@contextlib.contextmanager
def swallowed(logger: logging.Logger, step: str,
              *errors: type[Exception]) -> Iterator[None]:
    """A best-effort step on a way down (closing a client, a socket, a subscription the
    process is leaving anyway): an exception of ``errors`` (default: any ``Exception``;
    never a cancellation or ``KeyboardInterrupt``) raised inside is logged at debug as
    ``event=shutdown.swallowed step=<step>`` and not raised. The caller says in a comment
    what it may swallow and why going on is right."""
    caught: tuple[type[Exception], ...] = errors or (Exception,)
    try:
        yield
    except caught as e:
        event(logger, "shutdown.swallowed", logging.DEBUG, step=step,
              error=f"{type(e).__name__}: {e}")


FORMATS = ("auto", "kv", "json", "console")
"""``auto``: the console for people when stderr is a terminal, else ``kv`` (key=value lines)."""


def _json_value(value: object) -> object:
    value = redacted.mask_value(value)
    if isinstance(value, Decimal):
        return format(value, "f")  # exact: never a JSON float
    return value


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        line = f"{ts}.{ms:03d}Z {record.levelname.lower():<5} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redacted.mask_text(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line (Loki, ELK): ``ts``, ``level``, ``logger``, ``event`` and the
    event's fields; a plain log line has ``message`` instead. Decimals are strings."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, object] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        name = getattr(record, "gr_event", None)
        fields = getattr(record, "gr_fields", None)
        if isinstance(name, str) and isinstance(fields, Mapping):
            out["event"] = name
            for k, v in fields.items():
                if v is not None and k not in out:
                    out[k] = _json_value(v)
        else:
            out["message"] = redacted.mask_text(record.getMessage())
        if record.exc_info:
            out["exception"] = redacted.mask_text(self.formatException(record.exc_info))
        return json.dumps(out, separators=(",", ":"))


def setup(level: int = logging.INFO, fmt: str = "kv") -> None:
    """Logs to stderr in ``fmt`` (``FORMATS``): what `guardrails run` prints."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "kv"
    handler: logging.Handler
    if fmt == "console":
        from guardrails.console import ConsoleHandler  # rich is only imported for people

        handler = ConsoleHandler()
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter() if fmt == "json" else _Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiohttp.access", "web3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
