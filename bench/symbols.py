"""Gate admit p50 with positions and reservations in 1, 10, 100 and 1,000 symbols.

What is timed: one ``await OrderGate.admit(...)`` that admits a fresh intent in one
symbol of an account that holds a filled position AND an open reservation in every one
of N configured symbols (built through the real gate and ledger, not written by hand),
for N = 1, 10, 100, 1,000; each N on its own redis-server, the same client code, the
admits interleaved round by round (order rotating) so that drift hits every N. The
gate's gross-exposure and loss-budget checks cover the whole book, so this row shows
how a decision's cost grows with it. Target (issue 16): the 1,000-symbol p50 ≤ 1.5× the
1-symbol p50. Inside-Redis µs per decision (``INFO commandstats``) is in the note.
"""

from __future__ import annotations

import contextlib
import time
from decimal import Decimal

import redis.asyncio as aioredis

from bench.account import HOLDER, MARK, RISK, account
from bench.core import Row, fmt_pair, p50, p99, progress, redis_server, summary_ms, verdict
from guardrails.config import RiskConfig
from guardrails.gate import OrderGate
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.ledger import Ledger
from guardrails.limits import check_or_init
from guardrails.model import Admitted, Fill, Intent, Side

NAME = "symbols"
TARGET = "1,000-symbol p50 ≤ 1.5× 1-symbol p50"
RATIO = 1.5
SIZES = (1, 10, 100, 1000)
TOKEN = 1


def _risk(n: int) -> RiskConfig:
    inst = {f"S{i:04d}-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "100000000"}
            for i in range(n)}
    return RiskConfig.model_validate({**RISK, "instruments": inst})


async def _admit(gate: OrderGate, it: Intent) -> Admitted:
    d = await gate.admit(it, intent_id=it.intent_id or "", token=TOKEN, holder_id=HOLDER)
    if not isinstance(d, Admitted) or d.duplicate:
        raise RuntimeError(f"bench intent was not freshly admitted: {d}")
    return d


async def _prepared(client: aioredis.Redis, n: int) -> tuple[OrderGate, str]:
    """An account holding a filled position and a resting order in each of n symbols:
    (its gate, the symbol the timed admits use)."""
    keys = AccountKeys(account(f"sym{n}"))
    risk = _risk(n)
    await client.set(keys.fence, TOKEN)
    await client.set(keys.lease, f"{TOKEN}:{HOLDER}", px=3_600_000)
    await client.set(keys.schema, SCHEMA_VERSION, nx=True)
    if await check_or_init(client, keys, risk, "bench") is not None:
        raise RuntimeError("stored limits differ from the bench's")
    ledger = Ledger(client, keys, risk)
    syms = sorted(risk.instruments)
    await ledger.update_marks({s: MARK for s in syms})
    gate = OrderGate(client, keys, risk)
    for i, s in enumerate(syms):  # a position and a resting order in every symbol
        d = await _admit(gate, Intent(s, Side.BUY, Q, MARK, intent_id=f"pos-{i}"))
        await ledger.apply_fill(Fill(f"f-{i}", d.client_order_id, s, Side.BUY, Q, MARK,
                                     ts_ms=int(time.time() * 1000)))
        await _admit(gate, Intent(s, Side.SELL, Q, MARK, intent_id=f"rest-{i}"))
    return gate, syms[0]


Q = Decimal("0.0100")
WARMUP = 100


async def _interleaved(samples: int) -> dict[int, tuple[list[float], float]]:
    """Every N on its own redis-server, prepared first; then rounds of one admit per N,
    the order rotating round by round, so drift on the shared machine lands on all four
    (measured N after N, one run read 1.7× at 1,000 and the next, alone, 1.0×)."""
    with contextlib.ExitStack() as stack:
        clients: dict[int, aioredis.Redis] = {}
        try:
            for n in SIZES:
                server = stack.enter_context(redis_server())
                clients[n] = aioredis.Redis.from_url(server.url, decode_responses=True)
            prepared = {}
            for n in SIZES:
                progress(NAME, f"{n} symbols: a position and a resting order in each")
                prepared[n] = await _prepared(clients[n], n)
            out: dict[int, list[float]] = {n: [] for n in SIZES}
            progress(NAME, f"{samples} interleaved rounds (+{WARMUP} warm-up) of one admit per N")
            for i in range(-WARMUP, samples):
                side = Side.BUY if i % 2 == 0 else Side.SELL
                shift = i % len(SIZES)
                for n in SIZES[shift:] + SIZES[:shift]:
                    gate, sym = prepared[n]
                    it = Intent(sym, side, Q, MARK, intent_id=f"b-{i + WARMUP}")
                    t = time.perf_counter_ns()
                    await _admit(gate, it)
                    if i >= 0:
                        out[n].append((time.perf_counter_ns() - t) / 1e6)
                if i == -1:  # inside-Redis µs: the measured rounds only
                    for c in clients.values():
                        await c.config_resetstat()
            result = {}
            for n in SIZES:
                stats = await clients[n].info("commandstats")
                inside = float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))
                result[n] = (out[n], inside)
            return result
        finally:
            for c in clients.values():
                await c.aclose()


async def run(*, quick: bool) -> list[Row]:
    samples = 300 if quick else 1500
    results = await _interleaved(samples)
    base = p50(results[1][0])
    ratio = p50(results[SIZES[-1]][0]) / base
    parts = [f"{n}: {p50(results[n][0]) * 1000:.0f} µs" for n in SIZES]
    inside = ", ".join(f"{n}: {results[n][1]:.0f} µs" for n in SIZES)
    return [Row(
        NAME, "gate admit p50 by symbols held",
        f"{' / '.join(parts)}  ({ratio:.1f}× at 1,000)",
        baseline=f"1 symbol {fmt_pair(p50(results[1][0]), p99(results[1][0]))}",
        target=TARGET, status=verdict(ratio <= RATIO),
        note=f"a filled position and a resting order in every symbol; {samples} interleaved "
        f"rounds of one admit per N, order rotating; inside Redis "
        f"(INFO commandstats, mean per decision): {inside}",
        data={str(n): {**summary_ms(results[n][0]), "inside_redis_us": results[n][1]}
              for n in SIZES} | {"ratio_1000_to_1": round(ratio, 3)},
    )]
