"""Structured logs: one line per event, ``event=<name>`` followed by ``key=value`` fields.

Lease events (``lease.acquired``, ``lease.renewed_late``, ``lease.lost``,
``lease.released``) and order decisions (``order.admitted``, ``order.denied``) are each
one line, so tests and operators can grep a process's story. Secrets never go through
here: callers pass ids and amounts, never keys — and as a second fence every line the
handler writes (tracebacks included) passes through ``redacted.mask_text``: URL
credentials are masked and every secret the process registered is scrubbed.
"""

from __future__ import annotations

import logging
import sys
import time
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
    if text and all(c in _SAFE for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: object) -> None:
    """Log ``event=name k=v ...`` as one line."""
    parts = [f"event={name}"] + [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    logger.log(level, " ".join(parts))


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ms = int(record.msecs)
        line = f"{ts}.{ms:03d}Z {record.levelname.lower():<5} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redacted.mask_text(line)


def setup(level: int = logging.INFO) -> None:
    """Line-per-event logs to stderr (what `guardrails run` prints)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiohttp.access", "web3", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
