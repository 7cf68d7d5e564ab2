"""Shared fixtures: real redis-server processes the tests own, isolated state dirs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.redis_harness import RedisServer

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"


@pytest.fixture(autouse=True)
def _isolated_state(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Keep every test away from the user's real embedded Redis, lock dir and env; stop
    the simulator daemon a test's `url = "embedded"` venue started in its state dir."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("GUARDRAILS_STATE_DIR", str(state))
    monkeypatch.setenv("GUARDRAILS_LOCK_DIR", str(state / "locks"))
    # test-only: that lock directory replaces the host's defaults (localguard's module doc)
    monkeypatch.setenv("GUARDRAILS_LOCK_DIR_ISOLATED", "1")
    monkeypatch.delenv("GUARDRAILS_REDIS_URL", raising=False)
    yield
    for name in ("simulator", "clob-simulator"):
        if (state / name).exists():
            from guardrails.sim import daemon

            daemon.stop(root=state / name)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port: AOF with ``appendfsync everysec`` (no RDB),
    so ``guardrails run`` accepts it (a Redis without AOF is refused) without an fsync
    per write; ``restart()`` keeps its data. ``redis_server_volatile`` has no AOF."""
    server = RedisServer(aof=True, fsync="everysec").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_volatile() -> Iterator[RedisServer]:
    """A fresh redis-server with no persistence at all: a restart empties it."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_aof() -> Iterator[RedisServer]:
    """A fresh redis-server with append-only persistence (survives restart())."""
    server = RedisServer(aof=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for a `guardrails` child process: this venv, the test's state dir."""
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
