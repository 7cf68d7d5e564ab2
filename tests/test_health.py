"""The per-instance health endpoint serves the runtime's current facts as JSON."""

from __future__ import annotations

import aiohttp

from guardrails.runtime.health import start_health_server


async def test_health_when_requested_then_returns_current_provider_facts() -> None:
    # Arrange
    facts = {"role": "standby", "token": None, "version": "0.1.0", "config_digest": "abc"}
    runner, url = await start_health_server(0, lambda: facts)
    try:
        async with aiohttp.ClientSession() as session:
            # Act
            async with session.get(url) as resp:
                first = await resp.json()
            facts["role"] = "active"
            facts["token"] = 7

            async with session.get(url) as resp:
                second = await resp.json()

        # Assert
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/health")
        assert first["role"] == "standby" and first["token"] is None
        assert second["role"] == "active" and second["token"] == 7
        assert isinstance(second["pid"], int)
    finally:
        await runner.cleanup()


async def test_health_when_provider_is_async_then_awaited() -> None:
    # Arrange
    async def provider() -> dict[str, object]:
        return {"role": "active", "lease_deadline_ms": 123}

    runner, url = await start_health_server(0, provider)
    try:
        # Act
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.json()
        # Assert
        assert body["lease_deadline_ms"] == 123 and body["role"] == "active"
    finally:
        await runner.cleanup()
