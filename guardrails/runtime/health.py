"""Per-instance health endpoint: what this process is, without SSH.

Serves ``GET /health`` (JSON) on 127.0.0.1 by default: role (standby | active |
stopping), fencing token, version, config and limits digests, lease deadline, pid and
host — whatever the runtime's ``provider`` returns at the moment of the request.
It is a window, not an authority: ``doctor`` trusts the Redis lease and the process
table over anything an endpoint says about itself.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

HealthProvider = Callable[[], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
"""Returns the instance's current facts; may be sync or async."""

PROVIDER_KEY: web.AppKey[HealthProvider] = web.AppKey("health_provider", HealthProvider)  # type: ignore[arg-type]


async def _health(request: web.Request) -> web.Response:
    provider = request.app[PROVIDER_KEY]
    facts = provider()
    if inspect.isawaitable(facts):
        facts = await facts
    body: dict[str, Any] = {"pid": os.getpid(), "host": socket.gethostname()}
    body.update(facts)
    return web.Response(
        text=json.dumps(body, default=str, sort_keys=True), content_type="application/json"
    )


def create_health_app(provider: HealthProvider) -> web.Application:
    app = web.Application()
    app[PROVIDER_KEY] = provider
    app.router.add_get("/health", _health)
    return app


async def start_health_server(
    port: int, provider: HealthProvider, *, host: str = "127.0.0.1"
) -> tuple[web.AppRunner, str]:
    """Serve ``/health`` on ``host:port`` (0 = any free port). Returns the runner (call
    ``await runner.cleanup()`` to stop) and the endpoint's URL."""
    runner = web.AppRunner(create_health_app(provider), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    for address in runner.addresses:  # the bound (host, port, ...) of each listening socket
        if isinstance(address, tuple) and len(address) >= 2:
            bound = int(address[1])
            break
    return runner, f"http://{host}:{bound}/health"
