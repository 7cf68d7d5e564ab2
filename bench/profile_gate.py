"""Where a gate decision spends its time — ``python -m bench.profile_gate [N]``.

Not part of the ``make bench`` table: a diagnostic for the gate's owner.

1. **Inside Redis**: a copy of ``gate_admit.lua`` with ``redis.call('TIME')`` ticks
   inserted at the start of each documented step (found by the step comments; a step
   whose anchor is missing is skipped and said so) returns the per-step times of an
   admission instead of its decision. Each tick itself costs about a microsecond, so
   the sum is a little above the real script's time (compare with the ``INFO
   commandstats`` mean printed beside it).
2. **In the client**: the Python parts of ``OrderGate.admit`` timed one by one
   (``timeit``): redis-py packing the EVALSHA's 17 keys and 11 arguments (the
   ``execute_command`` path) against packing a PING, and the gate wire's own packing
   (``OrderGate._packed``, the path a plain client takes).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import timeit

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from bench import gatesetup
from bench.account import HOLDER, account, intent, risk_config
from bench.core import redis_server
from guardrails.gate import decimal_arg
from guardrails.model import client_order_id_for
from guardrails.scripts import source as lua_source

# (anchor text in gate_admit.lua, phase that starts there, insert before the anchor?)
_ANCHORS = [
    ("  local schema = rd('GET', K_SCHEMA)\n", "reads (schema, limits, positions, reservations, state)",
     True),
    ("  sane_code, sane_detail = sanity()\n", "order sanity (parse qty/price, tick/lot)", True),
    ("  -- 2. trading state", "trading state", True),
    ("  -- 3. fence", "fence (GET + PTTL lease)", True),
    ("  -- 4. idempotency", "idempotency (HGET intents)", True),
    ("  -- 5. order sanity", "sanity verdict, limits parsing, notional", True),
    ("  -- 7. price band", "price band (HGETALL marks)", True),
    ("  -- 8. order-rate throttle", "throttle (TIME, HMGET)", True),
    ("  local side_name = side == 1", "position, gross, daily loss", True),
    ("  -- the write keys must have the shapes", "write-key shape checks", True),
    ("  -- 12. reserve", "journal XADD", True),
    ("  redis.call('HSET', K_ORDER,", "order record HSET", True),
    ("  redis.call('SADD', K_OPEN, coid)\n", "open set, reservations, throttle, intent, stats",
     True),
]
_TICK = (
    "local TT = {}\n"
    "local function tick(n) local t = redis.call('TIME'); TT[#TT + 1] = n; "
    "TT[#TT + 1] = tonumber(t[1]) * 1000000 + tonumber(t[2]) end\n"
)
_DONE = "  return {0, 0, tonumber(token), deadline, nonce, symbol, side_name, qty_s, price_s}\n"


def instrumented() -> tuple[str, list[str]]:
    src = lua_source("gate_admit.lua")
    missing = []
    src = src.replace("local REASON = {", _TICK + "local REASON = {", 1)
    for anchor, phase, _ in _ANCHORS:
        if anchor in src:
            src = src.replace(anchor, f"  tick({phase!r})\n" + anchor, 1)
        else:
            missing.append(phase)
    if _DONE not in src:
        raise SystemExit("gate_admit.lua's admitted return changed; update bench/profile_gate.py")
    src = src.replace(_DONE, "  tick('end')\n  return TT\n", 1)
    return src, missing


async def inside_redis(n: int) -> None:
    src, missing = instrumented()
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            gate = await gatesetup.seed(client, account())
            for i in range(300):  # warm-up through the real gate
                await gatesetup.admit(gate, intent(i))
            await client.config_resetstat()
            for i in range(300, 300 + n):
                await gatesetup.admit(gate, intent(i))
            real = (await client.info("commandstats"))["cmdstat_evalsha"]["usec_per_call"]
            script = client.register_script(src)
            phases: dict[str, list[int]] = {}
            for i in range(300 + n, 300 + 2 * n):
                it = intent(i)
                iid = it.intent_id or ""
                coid = client_order_id_for(iid)
                day = gate._day.today()
                keys = [*gate._head, gate._keys.day(day), gate._keys.order(coid), *gate._tail]
                args = [1, gatesetup.TOKEN, HOLDER, iid, coid, it.symbol, it.side.value,
                        decimal_arg(it.qty, "qty"), decimal_arg(it.price, "price"), 0, day]
                ticks = await script(keys=keys, args=args)
                for j in range(0, len(ticks) - 2, 2):
                    phases.setdefault(ticks[j], []).append(int(ticks[j + 3]) - int(ticks[j + 1]))
        finally:
            await client.aclose()
    print(f"inside Redis, one admission ({n} samples, µs; real script mean {real:.0f} µs/call):")
    total = 0.0
    for phase, xs in phases.items():
        med = statistics.median(xs)
        total += med
        print(f"  {med:7.1f}  {phase}")
    print(f"  {total:7.1f}  sum of medians (includes ~1 µs per tick)")
    if missing:
        print(f"  (anchors not found, folded into the previous phase: {', '.join(missing)})")


def in_client() -> None:
    conn = Connection()
    it = intent(1)
    keys = [f"gr:{{paper:bench}}:key{i}" for i in range(16)]
    args: list[str | int] = [1, 1, "bench-holder", "bench-1", "c" * 32, "BTC-USD", "buy",
                             "0.0100", "60000.00", 0, "2026-11-22"]
    from guardrails.tradingday import TradingDay

    day = TradingDay("UTC", None)
    from guardrails.gate import OrderGate
    from guardrails.keys import AccountKeys

    gate = OrderGate(aioredis.Redis(), AccountKeys(account()), risk_config())
    gate._token, gate._holder = (1, b"1"), ("bench-holder", b"bench-holder")
    gate._day_key = ("2026-11-22", b"gr:{paper:bench}:day:2026-11-22", b"2026-11-22")
    coid = client_order_id_for("bench-1")
    parts = [
        ("TradingDay.today()", lambda: day.today()),
        ("client_order_id_for()", lambda: client_order_id_for("bench-1")),
        ("decimal_arg() x2", lambda: (decimal_arg(it.qty, "q"), decimal_arg(it.price, "p"))),
        ("pack EVALSHA, 16 keys + 11 args", lambda: conn.pack_command("EVALSHA", "a" * 40, 16,
                                                                      *keys, *args)),
        ("pack PING", lambda: conn.pack_command("PING")),
        ("OrderGate._packed (the gate wire's EVALSHA bytes)",
         lambda: gate._packed("bench-1", coid, it, "0.0100", "60000.00", False)),
    ]
    print("in the client (µs per call, timeit):")
    for name, fn in parts:
        n = 20_000
        print(f"  {timeit.timeit(fn, number=n) / n * 1e6:7.1f}  {name}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    asyncio.run(inside_redis(n))
    in_client()


if __name__ == "__main__":
    main()
