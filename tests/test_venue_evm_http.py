"""The EVM venue over its real transport: ``AsyncHTTPProvider`` against a JSON-RPC node.

The node is a small aiohttp JSON-RPC server the test runs in front of the local chain.
It answers the calls the venue makes at start and at takeover, and it can swallow a
``eth_sendRawTransaction``: it hands the transaction to the chain, then never answers
(a node that got the order while the response was lost) and stops answering anything.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from guardrails.venues.base import Unknown, VenueError, VenueOrderState
from guardrails.venues.evm import EvmVenue
from tests.evm_chain import (
    ChainProvider,
    World,
    allocate_nonce,
    order,
    take_lease,
    world,
)

__all__ = ["world"]  # the fixture, imported so pytest finds it here


class JsonRpcNode:
    """Just enough of a node's JSON-RPC for start, nonce sync and a swallowed send."""

    def __init__(self, w: World) -> None:
        self.world = w
        self.calls: Counter[str] = Counter()
        self.hung = False
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        method, params = body["method"], body.get("params", [])
        self.calls[method] += 1
        tester = self.world.chain.tester
        if method == "eth_sendRawTransaction":
            tester.send_raw_transaction(params[0])  # the node got it ...
            self.hung = True  # ... and the answer never comes
        if self.hung:
            await self.release.wait()
            raise web.HTTPServiceUnavailable()
        result: Any
        if method == "eth_chainId":
            result = hex(self.world.chain.chain_id)
        elif method == "eth_getTransactionCount":
            result = hex(tester.get_nonce(params[0]))
        elif method == "eth_getBlockByNumber":
            block = tester.get_block_by_number(params[0])
            result = {"number": hex(block["number"]), "hash": block["hash"],
                      "gasLimit": hex(block["gas_limit"]), "timestamp": hex(block["timestamp"]),
                      "baseFeePerGas": hex(block["base_fee_per_gas"])}
        elif method == "eth_call":
            out = tester.call({"from": self.world.chain.funder, "to": params[0]["to"],
                               "data": params[0]["data"]})
            result = out if isinstance(out, str) else "0x" + bytes(out).hex()
        else:
            return web.json_response({"jsonrpc": "2.0", "id": body["id"],
                                      "error": {"code": -32601, "message": "not here"}})
        return web.json_response({"jsonrpc": "2.0", "id": body["id"], "result": result})


@pytest.fixture
async def node(world: World) -> AsyncIterator[tuple[JsonRpcNode, str]]:
    rpc = JsonRpcNode(world)
    app = web.Application()
    app.router.add_post("/", rpc.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield rpc, f"http://127.0.0.1:{port}/"
    finally:
        rpc.release.set()
        await runner.cleanup()


async def test_http_node_when_wrong_chain_then_start_refused(
    world: World, node: tuple[JsonRpcNode, str]
) -> None:
    _, url = node
    venue = EvmVenue(world.venue_cfg(rpc_url=url, chain_id=world.chain.chain_id + 1),
                     world.account, world.wallet, redis=world.redis, risk=world.risk)
    try:
        with pytest.raises(VenueError, match="chain id mismatch"):
            await venue.start()
    finally:
        await venue.close()


async def test_http_send_when_response_lost_then_unknown_sent_once_and_reconciled(
    world: World, node: tuple[JsonRpcNode, str]
) -> None:
    # Arrange: the venue talks HTTP to the node, with a 1 s request timeout.
    rpc, url = node
    venue = EvmVenue(world.venue_cfg(rpc_url=url), world.account, world.wallet,
                     redis=world.redis, risk=world.risk, rpc_timeout_s=1.0)
    try:
        await venue.start()
        token = await take_lease(world, "A")
        assert await venue.sync_nonce(token, "A") == 0
        o = order("http-lost", token=token, nonce=await allocate_nonce(world.redis, world.keys))
        # Act
        result = await asyncio.wait_for(venue.submit(o), 60)
    finally:
        await venue.close()
    # Assert: Unknown (not rejected), the transport sent it exactly once, and the order
    # is found — not re-sent — once a node answers again.
    assert isinstance(result, Unknown), result
    assert rpc.calls["eth_sendRawTransaction"] == 1
    other = world.venue(ChainProvider(world.chain))
    status = await other.lookup(o.client_order_id)
    assert status.state is VenueOrderState.FILLED
    assert world.chain.nonce(world.wallet.address) == 1
