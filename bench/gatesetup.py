"""Make an account ready for admissions, the way a running instance would find it.

The lease is held by ``HOLDER`` with token 1 for an hour (the gate checks the lease
value and its liveness inside Redis), the limits are stored, the mark is set so the
price band check has something to compare with. Nothing here bypasses the gate: every
benchmarked decision is a real ``OrderGate.admit``.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from bench.account import HOLDER, MARK, SYMBOL, intent, risk_config
from guardrails.keys import SCHEMA_VERSION, AccountId, AccountKeys
from guardrails.model import Admitted, client_order_id_for

TOKEN = 1


async def seed(client: aioredis.Redis, acct: AccountId) -> Any:
    """Seed ``acct`` and return an ``OrderGate`` on ``client``."""
    from guardrails.gate import OrderGate

    keys = AccountKeys(acct)
    risk = risk_config()
    await client.set(keys.fence, TOKEN)
    await client.set(keys.lease, f"{TOKEN}:{HOLDER}", px=3_600_000)
    await client.set(keys.schema, SCHEMA_VERSION, nx=True)
    try:
        from guardrails import limits

        mismatch = await limits.check_or_init(client, keys, risk, "bench")
        if mismatch is not None:
            raise RuntimeError(f"stored limits differ from the bench's: {mismatch}")
    except ImportError:
        pass
    try:
        from guardrails.ledger import Ledger
    except ImportError:  # marks HASH: <symbol> -> mark in ticks (gate_admit.lua header)
        tick = risk.instruments[SYMBOL].tick
        await client.hset(keys.marks, SYMBOL, str(int(MARK / tick)))
    else:
        await Ledger(client, keys, risk).update_marks({SYMBOL: MARK})
    return OrderGate(client, keys, risk)


async def admit(gate: Any, intent: Any) -> None:
    """One decision; anything but an admission is a broken setup, not a data point."""
    decision = await gate.admit(
        intent, intent_id=intent.intent_id, token=TOKEN, holder_id=HOLDER
    )
    if not isinstance(decision, Admitted) or decision.duplicate:
        raise RuntimeError(f"bench intent was not freshly admitted: {decision}")


def call_args(gate: Any, i: int) -> tuple[list[bytes], list[bytes]]:
    """KEYS and ARGV of the EVALSHA that admits ``intent(i)`` alone (a batch of one)
    through ``gate`` — the keys and arguments ``OrderGate.admit`` sends (gate_admit.lua's
    header), as bytes, for benchmarks that call the script through another path than the
    gate's. Its reply is a list of one decision's reply."""
    from guardrails.gate import decimal_arg

    it = intent(i)
    iid = it.intent_id or ""
    coid = client_order_id_for(iid)
    day = gate._day.today()
    keys = [*gate._fixed, gate._keys.day(day).encode(), gate._keys.order(coid).encode()]
    args = [SCHEMA_VERSION, 0, TOKEN, HOLDER, iid, coid, it.symbol, it.side.value,
            decimal_arg(it.qty, "qty"), decimal_arg(it.price, "price"), 0, day]
    return list(keys), [str(a).encode() for a in args]
