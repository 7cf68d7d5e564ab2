"""Opening Redis connections from a configured URL ('embedded' starts the embedded server).

Every client has a socket timeout: a command that does not answer in time is a failure
the caller must treat as "nothing admitted" (fail closed), never a hang.

Credentials: a password in the URL works, but a URL given as ``--redis-url`` is in the
process's argv, which every local user can read (``ps``). So the password can come from
the environment instead: ``$GUARDRAILS_REDIS_PASSWORD``, or a file named by
``$GUARDRAILS_REDIS_PASSWORD_FILE`` (first line; keep it 0600) — used when the URL itself
carries none. Every password a connection uses is registered with ``guardrails.redacted``
so no log line, status document or error message can print it; ``describe`` is the
masked form of a URL for messages.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis

from guardrails import embedded, redacted
from guardrails.config import EMBEDDED, ConfigError, RedisConfig

PASSWORD_ENV = "GUARDRAILS_REDIS_PASSWORD"
"""Environment variable holding the Redis password (when the URL carries none)."""
PASSWORD_FILE_ENV = "GUARDRAILS_REDIS_PASSWORD_FILE"
"""Environment variable naming a file whose first line is the Redis password."""


async def resolve_url(url: str, *, start: bool = False) -> str:
    """The concrete URL. ``embedded`` is the per-user server: started (or reused) only with
    ``start`` — what ``guardrails run`` does. Operator commands never start one as a side
    effect (a kill that lands in a fresh empty Redis no bot listens to would look like
    success): without ``start`` a missing server is ``EmbeddedRedisError`` saying so."""
    if url != EMBEDDED:
        return url
    if start:
        return await asyncio.to_thread(embedded.ensure_running)
    found = await asyncio.to_thread(embedded.running_url)
    if found is None:
        raise embedded.EmbeddedRedisError(
            f"no embedded Redis is running for this user ({embedded.paths().socket}); operator "
            "commands never start one: point --redis-url or $GUARDRAILS_REDIS_URL at the bot's "
            "Redis (a supervised bot's URL is in its unit's environment), or start the bot"
        )
    return found


def describe(url: str) -> str:
    """The Redis target as it appears in logs and messages: every credential masked."""
    return redacted.mask_url(url)


def password_from_env(
    env_name: str = PASSWORD_ENV, file_env_name: str = PASSWORD_FILE_ENV
) -> str | None:
    """The password in ``$env_name``, else the first line of the file ``$file_env_name``
    names, else None. An unreadable or empty file is a ``ConfigError`` naming it."""
    value = os.environ.get(env_name)
    if value:
        redacted.register(value)
        return value
    path = os.environ.get(file_env_name)
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file_env_name}={path}: cannot read the Redis password file: "
                          f"{type(e).__name__}") from None
    lines = text.splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise ConfigError(f"{file_env_name}={path}: the Redis password file is empty")
    redacted.register(value)
    return value


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def register_url(url: str) -> None:
    """Remember the credentials inside ``url`` so nothing prints them."""
    for secret in redacted.url_secrets(url):
        redacted.register(secret)


async def connect(
    cfg: RedisConfig | str,
    *,
    decode_responses: bool = True,
    password: str | None = None,
) -> aioredis.Redis:
    """An asyncio client for ``cfg`` (a ``RedisConfig`` or a URL).

    The password is the URL's own, else ``password``, else ``password_from_env()``
    (never applied to the embedded server, which is per user).
    """
    url = cfg if isinstance(cfg, str) else cfg.url
    timeout = 1.0 if isinstance(cfg, str) else cfg.socket_timeout / 1000
    concrete = await resolve_url(url)
    register_url(concrete)
    extra: dict[str, Any] = {}
    if url != EMBEDDED and _url_password(concrete) is None and "password=" not in concrete:
        chosen = password if password is not None else password_from_env()
        if chosen:
            redacted.register(chosen)
            extra["password"] = chosen
    try:
        return aioredis.Redis.from_url(
            concrete,
            decode_responses=decode_responses,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=0,
            **extra,
        )
    except ValueError as e:  # a malformed URL: say which (masked), never echo the secret
        raise ConfigError(f"redis url {describe(url)}: {redacted.scrub(str(e))}") from None
