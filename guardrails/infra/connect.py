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

Credentials: a password in the URL works, but a URL given as ``--redis-url`` is in the
process's argv, which every local user can read (``ps``). So the password can come from
the environment instead: ``$GUARDRAILS_REDIS_PASSWORD``, or a file named by
``$GUARDRAILS_REDIS_PASSWORD_FILE`` (first line; keep it 0600) — used when the URL itself
carries none; or the whole URL from a 0600 file, ``--redis-url-file`` (``url_from_file``).
Every password a connection uses is registered with ``guardrails.redacted``
so no log line, status document or error message can print it; ``describe`` is the
masked form of a URL for messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from guardrails import redacted
from guardrails.config import EMBEDDED, ConfigError, RedisConfig, redis_url_problem
from guardrails.infra import embedded

PASSWORD_ENV = "GUARDRAILS_REDIS_PASSWORD"
"""Environment variable holding the Redis password (when the URL carries none)."""
PASSWORD_FILE_ENV = "GUARDRAILS_REDIS_PASSWORD_FILE"
"""Environment variable naming a file whose first line is the Redis password."""

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
    password: str | None = field(repr=False)
    sentinel_password: str | None = field(repr=False)


def is_ha_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in (SENTINEL_SCHEME, CLUSTER_SCHEME)


def parse_ha_url(url: str) -> HaTarget:
    """Parse a Sentinel or Cluster URL; ``RedisUrlError`` names what is wrong by position
    (node 2, the db), never by quoting a part of the URL: a password with an unencoded
    ``?`` or ``/`` would be cut short and its rest read as a node or a db."""
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
    items = netloc.split(",")
    for n, item in enumerate(items, 1):
        host, colon, port_text = item.strip().rpartition(":")
        if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise RedisUrlError(f"redis url {where}: node {n} of {len(items)} is not host:port")
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
                raise RedisUrlError(f"redis url {where}: the db (after the master name) is "
                                    "not a number")
            db = int(parts[1])
    elif parts and parts != ["0"]:
        raise RedisUrlError(f"redis url {where}: Redis Cluster has only database 0")
    return HaTarget(scheme, tuple(nodes), master, db, username, password, sentinel_password)


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


def url_from_file(path: str | os.PathLike[str], origin: str = "--redis-url-file") -> str:
    """The Redis URL on the first line of ``path`` (``--redis-url-file``: a URL with its
    password kept out of argv). The file must be this user's and readable by no one else
    (mode 0600); its credentials are registered with ``guardrails.redacted``. Anything
    wrong is a ``ConfigError`` naming the file, never quoting it."""
    p = Path(path)
    try:
        st = p.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise ConfigError(f"{origin} {p}: must be a file of yours readable by no one else "
                              f"(chmod 600 {p}; mode {oct(st.st_mode & 0o777)})")
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{origin} {p}: cannot read it: {e.strerror or type(e).__name__}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{origin} {p}: not UTF-8 text") from None
    lines = text.splitlines()
    url = lines[0].strip() if lines else ""
    if not url:
        raise ConfigError(f"{origin} {p}: the file is empty (write the Redis URL on its first line)")
    register_url(url)
    return url


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
    max_connections: int | None = None,
    client_name: str | None = None,
) -> aioredis.Redis:
    """An asyncio client for ``cfg`` (a ``RedisConfig`` or a URL): plain, Sentinel or
    Cluster. ``RedisUrlError`` for a Sentinel/Cluster URL that cannot be parsed; a cluster
    is contacted here (it must answer to say which node owns which slot), other kinds on
    their first command.

    The password is the URL's own, else ``password``, else ``password_from_env()``
    (never applied to the embedded server, which is per user). ``max_connections`` caps
    the client's pool (per node on a cluster; default: redis-py's); ``client_name`` is
    what ``CLIENT LIST`` shows for its connections.
    """
    url = cfg if isinstance(cfg, str) else cfg.url
    timeout = 1.0 if isinstance(cfg, str) else cfg.socket_timeout / 1000
    concrete = await resolve_url(url)
    register_url(concrete)
    common: dict[str, Any] = {
        "decode_responses": decode_responses,
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if max_connections is not None:
        common["max_connections"] = max_connections
    if client_name is not None:
        common["client_name"] = client_name

    def fallback_password() -> str | None:
        chosen = password if password is not None else password_from_env()
        if chosen:
            redacted.register(chosen)
        return chosen

    if not is_ha_url(concrete):
        problem = redis_url_problem(concrete)
        if problem:  # before redis-py, whose parse errors quote what it took for the port
            raise ConfigError(f"redis url {describe(url)}: {problem}")
        extra: dict[str, Any] = {}
        if url != EMBEDDED and _url_password(concrete) is None and "password=" not in concrete:
            chosen = fallback_password()
            if chosen:
                extra["password"] = chosen
        try:
            return aioredis.Redis.from_url(concrete, health_check_interval=0, **common, **extra)
        except ValueError as e:  # a malformed URL: say which (masked), never echo the secret
            raise ConfigError(f"redis url {describe(url)}: {redacted.scrub(str(e))}") from None
    target = parse_ha_url(concrete)
    auth: dict[str, Any] = {"username": target.username,
                            "password": target.password or fallback_password()}
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


# -- one name per Redis target ----------------------------------------------------------

DEFAULT_PORT = 6379
LOCAL_HOST = "localhost"
"""Canonical name of every address of this host (loopback or a local interface)."""


def _is_local_address(addr: str) -> bool:
    """True for a loopback address or one of this host's own (bindable) addresses."""
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((str(ip), 0))  # only an address of this host can be bound
        return True
    except OSError:
        return False


def _canonical_ip(addr: str) -> str:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return LOCAL_HOST if _is_local_address(str(ip)) else str(ip)


def _canonical_host(host: str) -> str:
    """One name per server host: every address of this host is ``localhost``; an IP is
    in its compressed form; a DNS name is replaced by the sorted addresses it resolves
    to (or kept, lower-cased, when it does not resolve)."""
    host = host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")
    if not host or host == LOCAL_HOST or host.endswith(".localhost"):
        return LOCAL_HOST
    try:
        return _canonical_ip(host.split("%", 1)[0])
    except ValueError:
        pass  # a name, not an address literal
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return host
    addrs = sorted({_canonical_ip(str(info[4][0]).split("%", 1)[0]) for info in infos})
    if LOCAL_HOST in addrs:
        return LOCAL_HOST
    return ",".join(addrs) or host


def _db(text: str | None, where: str) -> int:
    if text is None or text == "":
        return 0
    if not text.isdigit():
        raise ValueError(f"redis target {where!r}: database {text!r} is not a number")
    return int(text)


def normalise_redis_target(url: str) -> str:
    """The one name of the Redis keyspace ``url`` reaches (to compare targets).

    ``redis://`` and ``rediss://`` become ``redis://<host>:<port>/<db>`` with the host
    canonical (see ``_canonical_host``: ``localhost``, ``127.0.0.1``, ``::1`` and this
    host's own addresses are all ``localhost``), the port defaulting to 6379 and the db
    to 0; ``unix://`` (or ``unix:``) becomes ``unix://<real path of the socket>?db=<db>``.
    Credentials are dropped. An unrecognised scheme is returned stripped, as typed.
    """
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    if scheme in ("redis", "rediss"):
        path_db = unquote(parts.path).strip("/")
        db = _db(path_db or (query.get("db") or [""])[0], url)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            raise ValueError(f"redis target {url!r}: bad port") from None
        return f"redis://{_canonical_host(parts.hostname or '')}:{port}/{db}"
    if scheme == "unix":
        path = unquote(parts.path or parts.netloc)
        db = _db((query.get("db") or [""])[0], url)
        return f"unix://{os.path.realpath(path)}?db={db}"
    return text


def same_target(a: str | None, b: str | None) -> bool:
    """Whether two Redis URLs name the same server and database, however spelled
    (``LOCALHOST``, a trailing slash, ``?db=0``, a default port; 'embedded' resolved to
    this user's embedded server). A URL that cannot be normalised compares as typed."""

    def norm(u: str | None) -> str | None:
        if u is None:
            return None
        if u == EMBEDDED:
            u = embedded.paths().url
        try:
            return normalise_redis_target(u)
        except ValueError:
            return u.strip()

    return a is not None and norm(a) == norm(b)
