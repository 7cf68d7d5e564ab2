"""Opening Redis connections from a configured URL ('embedded' starts the embedded server).

Every client has a socket timeout: a command that does not answer in time is a failure
the caller must treat as "nothing admitted" (fail closed), never a hang.
"""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from guardrails import embedded
from guardrails.config import EMBEDDED, RedisConfig


async def resolve_url(url: str) -> str:
    """The concrete URL: ``embedded`` starts (or reuses) the per-user server."""
    if url == EMBEDDED:
        return await asyncio.to_thread(embedded.ensure_running)
    return url


def describe(url: str) -> str:
    """The Redis target as it appears in logs and lock names (no password)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


async def connect(cfg: RedisConfig | str, *, decode_responses: bool = True) -> aioredis.Redis:
    """An asyncio client for ``cfg`` (a ``RedisConfig`` or a URL)."""
    url = cfg if isinstance(cfg, str) else cfg.url
    timeout = 1.0 if isinstance(cfg, str) else cfg.socket_timeout / 1000
    concrete = await resolve_url(url)
    return aioredis.Redis.from_url(
        concrete,
        decode_responses=decode_responses,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=0,
    )
