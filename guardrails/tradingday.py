"""The trading day: which day's loss budget an instant belongs to.

Invariant upheld: *risk is shared, not per process* — the daily loss budget is keyed in
Redis by the trading day (``YYYY-MM-DD`` in the account's configured timezone, rolling
over at local midnight there), so a restart, a failover or a second process all find
the same day's baseline; nothing in a process's memory can reset it.

Time is injected (``clock_ms`` returns Unix milliseconds) so tests can cross midnight
without waiting for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

ClockMs = Callable[[], int]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def wall_clock_ms() -> int:
    """Unix time in integer milliseconds (no float on the way)."""
    return time.time_ns() // 1_000_000


def trading_day_of(epoch_ms: int, tz: ZoneInfo) -> str:
    """The trading day (``YYYY-MM-DD`` in ``tz``) containing the instant ``epoch_ms``."""
    return datetime.fromtimestamp(epoch_ms // 1000, tz=tz).date().isoformat()


class TradingDay:
    """Today's trading day in ``timezone``, cheap to ask many times a second.

    The day is recomputed only when the clock passes the next local midnight (or moves
    backwards), so the gate's hot path does one comparison.
    """

    __slots__ = ("_clock", "_day", "_end_ms", "_start_ms", "_tz")

    def __init__(self, timezone: str, clock_ms: ClockMs | None = None) -> None:
        self._tz = ZoneInfo(timezone)
        self._clock: ClockMs = clock_ms or wall_clock_ms
        self._day = ""
        self._start_ms = 0
        self._end_ms = -1

    def now_ms(self) -> int:
        return self._clock()

    def today(self) -> str:
        now = self._clock()
        if self._start_ms <= now < self._end_ms:
            return self._day
        local = datetime.fromtimestamp(now // 1000, tz=self._tz)
        start = datetime(local.year, local.month, local.day, tzinfo=self._tz)
        nxt = start.date() + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self._tz)
        self._day = start.date().isoformat()
        self._start_ms = (start - _EPOCH) // timedelta(milliseconds=1)
        self._end_ms = (end - _EPOCH) // timedelta(milliseconds=1)
        return self._day
