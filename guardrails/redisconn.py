"""Opening Redis connections from a configured URL ('embedded' starts the embedded server).

Every client has a socket timeout: a command that does not answer in time is a failure
the caller must treat as "nothing admitted" (fail closed), never a hang.

URL schemes, besides redis-py's own (``redis://``, ``rediss://``, ``unix://``):

- ``redis+sentinel://[user:pass@]host:port,host:port/<master-name>[/<db>]`` — redis-py's
  asyncio ``Sentinel``: the client asks the sentinels for the current master on every
  (re)connect, and a master that was demoted answers ``READONLY``, which drops the
  connection, so the next command reaches the new master. Credentials are the master's
  (and, unless ``?sentinel_password=`` says otherwise, nothing is sent to the sentinels).
- ``redis+cluster://[user:pass@]host:port,host:port[,...]`` — redis-py's asyncio
  ``RedisCluster`` (database 0 only). Every per-account script touches one slot (the
  account's hash tag); the cross-account index is one key, hence one slot.

``connect`` returns every kind as the ``redis.asyncio.Redis`` interface the rest of the
package is written against: a ``RedisCluster`` offers the same commands, scripts,
pipelines and pub/sub (a classic PUBLISH reaches subscribers on every node). Code that
must see each server (persistence checks) asks ``primaries``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from guardrails import embedded
from guardrails.config import EMBEDDED, ConfigError, RedisConfig

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"


class RedisUrlError(ConfigError, ValueError):
    """A Redis URL that cannot be used; ``str()`` names the URL (masked) and the fault.
    A ``ConfigError``: the CLI prints it as one line and exits 2."""


@dataclass(frozen=True, slots=True)
class HaTarget:
    """A parsed ``redis+sentinel://`` or ``redis+cluster://`` URL."""

    scheme: str
    nodes: tuple[tuple[str, int], ...]
    master: str | None
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None


def is_ha_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in (SENTINEL_SCHEME, CLUSTER_SCHEME)


def parse_ha_url(url: str) -> HaTarget:
    """Parse a Sentinel or Cluster URL; ``RedisUrlError`` names what is wrong."""
    where = describe(url)
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        raise RedisUrlError(f"redis url {where}: not a {SENTINEL_SCHEME} or {CLUSTER_SCHEME} URL")
    rest, _, query_text = rest.partition("?")
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        hostpart = rest
    netloc, _, path = hostpart.partition("/")
    username = password = None
    if userinfo:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
    nodes: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, colon, port_text = item.strip().rpartition(":")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise RedisUrlError(f"redis url {where}: node {item.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port_text)))
    parts = [p for p in path.split("/") if p]
    query = parse_qs(query_text)
    sentinel_password = query["sentinel_password"][0] if "sentinel_password" in query else None
    master: str | None = None
    db = 0
    if scheme == SENTINEL_SCHEME:
        if not parts or len(parts) > 2:
            raise RedisUrlError(
                f"redis url {where}: expected {SENTINEL_SCHEME}://host:port,.../<master-name>/<db>"
            )
        master = unquote(parts[0])
        if len(parts) == 2:
            if not parts[1].isdigit():
                raise RedisUrlError(f"redis url {where}: db {parts[1]!r} is not a number")
            db = int(parts[1])
    elif parts and parts != ["0"]:
        raise RedisUrlError(f"redis url {where}: Redis Cluster has only database 0")
    return HaTarget(scheme, tuple(nodes), master, db, username, password, sentinel_password)


async def resolve_url(url: str) -> str:
    """The concrete URL: ``embedded`` starts (or reuses) the per-user server."""
    if url == EMBEDDED:
        return await asyncio.to_thread(embedded.ensure_running)
    return url


def describe(url: str) -> str:
    """The Redis target as it appears in logs and lock names (no password)."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        rest = rest.split("@", 1)[1] if "@" in rest.split("?", 1)[0] else rest
        url = f"{scheme}://***@{rest}"
    if "sentinel_password=" in url:
        head, _, query = url.partition("?")
        kept = [q if not q.startswith("sentinel_password=") else "sentinel_password=***"
                for q in query.split("&")]
        url = head + "?" + "&".join(kept)
    return url


async def connect(cfg: RedisConfig | str, *, decode_responses: bool = True) -> aioredis.Redis:
    """An asyncio client for ``cfg`` (a ``RedisConfig`` or a URL). ``RedisUrlError`` for
    a Sentinel/Cluster URL that cannot be parsed; a cluster is contacted here (it must
    answer to say which node owns which slot), other kinds on their first command."""
    url = cfg if isinstance(cfg, str) else cfg.url
    timeout = 1.0 if isinstance(cfg, str) else cfg.socket_timeout / 1000
    concrete = await resolve_url(url)
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if not is_ha_url(concrete):
        return aioredis.Redis.from_url(concrete, health_check_interval=0, **common)
    target = parse_ha_url(concrete)
    auth: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.scheme == SENTINEL_SCHEME:
        assert target.master is not None
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
        }
        if target.sentinel_password:
            sentinel_kwargs["password"] = target.sentinel_password
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes), sentinel_kwargs=sentinel_kwargs, **common
        )
        master: aioredis.Redis = sentinel.master_for(
            target.master, db=target.db, health_check_interval=0, **auth
        )
        return master
    cluster = RedisCluster(
        startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
        require_full_coverage=True,
        **auth,
        **common,
    )
    await cluster.initialize()
    # The same command surface as redis.asyncio.Redis (see the module docstring).
    return cast(aioredis.Redis, cluster)


def is_cluster(redis: object) -> bool:
    """Whether ``redis`` is a Redis Cluster client (some commands differ: TIME cannot be
    pipelined, KEYS/SCAN span every node)."""
    return isinstance(redis, RedisCluster)


_NODE_KWARGS = ("username", "password", "socket_timeout", "socket_connect_timeout",
                "decode_responses")


@contextlib.asynccontextmanager
async def primaries(redis: aioredis.Redis) -> AsyncIterator[list[tuple[str, aioredis.Redis]]]:
    """``(name, client)`` for each primary behind ``redis``: a client per node of a
    cluster (closed on exit), or the one server itself (a Sentinel client reaches the
    current master)."""
    if not isinstance(redis, RedisCluster):
        yield [("", redis)]
        return
    clients: list[tuple[str, aioredis.Redis]] = []
    try:
        for node in redis.get_primaries():
            kw = {k: node.connection_kwargs[k] for k in _NODE_KWARGS if k in node.connection_kwargs}
            clients.append((node.name, aioredis.Redis(host=node.host, port=node.port, **kw)))
        yield clients
    finally:
        for _, client in clients:
            await client.aclose()
