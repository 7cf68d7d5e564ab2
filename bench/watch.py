"""Watching Redis itself: keyspace notifications and pub/sub messages, timestamped on arrival.

The failover and kill-switch benchmarks time intervals *between two things Redis did*
(a release's DEL and the standby's SET; the kill script's PUBLISH), as seen by one
subscriber connection in the benchmark process. Both ends of an interval arrive over
the same connection, so its delivery delay cancels to first order, and nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass

import redis.asyncio as aioredis


@dataclass(frozen=True)
class Seen:
    mono: float
    """time.monotonic() on arrival."""
    wall: float
    """time.time() on arrival."""
    channel: str
    data: str


class Watcher:
    """Subscribes to channels (and patterns) and keeps every message with its arrival time."""

    def __init__(self, url: str) -> None:
        self._client = aioredis.Redis.from_url(url, decode_responses=True)
        self._pubsub = self._client.pubsub()
        self.seen: list[Seen] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, *channels: str) -> Watcher:
        await self._pubsub.subscribe(*channels)
        # Consume the subscribe confirmations before timing anything.
        for _ in channels:
            while True:
                msg = await self._pubsub.get_message(timeout=5)
                if msg is not None and msg["type"] == "subscribe":
                    break
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        while True:
            msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if msg is None:
                continue
            self.seen.append(
                Seen(time.monotonic(), time.time(), str(msg["channel"]), str(msg["data"]))
            )
            self._arrived.set()

    async def wait_for(
        self, data_prefix: str, *, after: float, within: float, channel: str | None = None
    ) -> Seen:
        """The first message arrived after monotonic ``after`` whose data starts with
        ``data_prefix`` (on ``channel`` if given)."""
        deadline = time.monotonic() + within
        while True:
            for s in self.seen:
                if s.mono >= after and s.data.startswith(data_prefix) and (
                    channel is None or s.channel == channel
                ):
                    return s
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {data_prefix!r} message within {within}s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._pubsub.aclose()
        await self._client.aclose()


def keyspace_channel(key: str, db: int = 0) -> str:
    return f"__keyspace@{db}__:{key}"
