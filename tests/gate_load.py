"""Worker of the gate concurrency test: fire N concurrent intents, print decisions as JSON.

Run as ``python -m tests.gate_load URL WORKER_NAME N``; the account is set up by the test.
"""

from __future__ import annotations

import asyncio
import json
import sys

import redis.asyncio as aioredis

from guardrails.gate import OrderGate
from guardrails.model import Admitted
from tests.gatekit import HOLDER, TOKEN, account_keys, buy, risk_for_load


async def main(url: str, name: str, n: int) -> None:
    pool = aioredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=32)
    r = aioredis.Redis(connection_pool=pool)
    try:
        gate = OrderGate(r, account_keys("load"), risk_for_load())
        decisions = await asyncio.gather(*[
            gate.admit(buy("0.0010"), intent_id=f"{name}-{i}", token=TOKEN, holder_id=HOLDER)
            for i in range(n)
        ])
    finally:
        await r.aclose()
    out = {
        "admitted": [d.client_order_id for d in decisions if isinstance(d, Admitted)],
        "denied": [d.reason.value for d in decisions if not isinstance(d, Admitted)],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
