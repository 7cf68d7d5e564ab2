"""Gate decision latency against a plain PING, through the same asyncio client.

What is timed: one ``await OrderGate.admit(...)`` (Python validation + ONE EVALSHA +
mapping the reply) that admits a fresh intent, against one ``await client.ping()`` on
the same ``redis.asyncio`` client, in the same run. Beside them, for the record (issue
16): a PING on the gate's own connection (the floor of its client path) and the two
anchors of bench/anchors.py (a 30-line fenced Lua gate; redis-py ``Lock`` acquire +
release), each anchor on its own redis-server so ``INFO commandstats`` gives each its
inside-Redis µs. Two phases, each interleaved round by round (the order inside a round
rotates, so drift on the shared machine lands on all equally): PING / admit / PING on the
wire, then PING / anchors — apart, so the anchors' servers do not perturb the target's
pairs; each anchor's ratio is to the PINGs of its own phase.
Target (issues 3, 16): gate p50 ≤ 1.3 × PING p50 and p99 ≤ 2 × PING p99.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from bench import gatesetup
from bench.account import account, available, intent
from bench.anchors import Anchors
from bench.core import (
    Row,
    fmt_pair,
    not_measured,
    p50,
    p99,
    parser,
    progress,
    redis_server,
    summary_ms,
    verdict,
)

NAME = "gate"
TARGET = "p50 ≤ 1.3×, p99 ≤ 2× PING"
RATIO = 1.3
RATIO_P99 = 2.0
_WIRE_PING = b"*1\r\n$4\r\nPING\r\n"


def _usec(stats: dict[str, Any], *commands: str) -> float:
    """Inside-Redis µs of one operation made of ``commands`` (each called once per op)."""
    return sum(float(stats.get(f"cmdstat_{c}", {}).get("usec_per_call", 0.0)) for c in commands)


async def run(*, quick: bool) -> list[Row]:
    pairs = 1_000 if quick else 5_000
    warmup = 200
    # the gate and PING on one server; each anchor on its own, so INFO commandstats
    # separates their EVALSHAs
    with redis_server() as server, redis_server() as a_server, redis_server() as l_server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        a_client = aioredis.Redis.from_url(a_server.url, decode_responses=True)
        l_client = aioredis.Redis.from_url(l_server.url, decode_responses=True)
        try:
            progress(NAME, f"2 x {pairs} interleaved rounds: PING / admit, then PING / anchors "
                           f"(+{warmup} warm-up each)")
            why = available("guardrails.gate")
            gate = None if why else await gatesetup.seed(client, account())
            wire = getattr(gate, "_wire", None)
            fenced, lock = Anchors(a_client), Anchors(l_client)
            await fenced.seed()
            samples: dict[str, list[float]] = {k: [] for k in
                                               ("ping", "gate", "wire", "ping_a", "fenced",
                                                         "lock")}

            async def one(kind: str, i: int, it: Any) -> None:
                if kind in ("ping", "ping_a"):
                    await client.ping()
                elif kind == "gate":
                    await gatesetup.admit(gate, it)
                elif kind == "wire":
                    if await wire.call(_WIRE_PING) != b"PONG":
                        raise RuntimeError("PING on the gate's wire did not PONG")
                elif kind == "fenced":
                    await fenced.fenced(i + warmup)
                else:
                    await lock.lock_cycle()

            async def rounds(kinds: list[str], clients: list[aioredis.Redis]) -> None:
                for i in range(-warmup, pairs):
                    shift = i % len(kinds)  # the order inside a round rotates
                    for kind in kinds[shift:] + kinds[:shift]:
                        # the intent is the caller's, built before the clock starts
                        it = intent(i + warmup) if kind == "gate" else None
                        t = time.perf_counter_ns()
                        await one(kind, i, it)
                        d = (time.perf_counter_ns() - t) / 1e6
                        if i >= 0:
                            samples[kind].append(d)
                    if i == -1:  # server-side times: measured rounds only
                        for c in clients:
                            await c.config_resetstat()
                    if i > 0 and i % 1000 == 0:
                        progress(NAME, f"{i}/{pairs} rounds of {', '.join(kinds)}")

            # Phase 1, the target's figure: PING / admit (/ PING on the gate's wire), on
            # one server. Phase 2, the anchors with their own interleaved PING: run apart
            # so that two more redis-servers do not perturb phase 1's pairs.
            await rounds(["ping"] + (["gate"] if gate is not None else [])
                         + (["wire"] if wire is not None else []), [client])
            stats = await client.info("commandstats")
            await rounds(["ping_a", "fenced", "lock"], [a_client, l_client])
            a_stats = await a_client.info("commandstats")
            l_stats = await l_client.info("commandstats")
        finally:
            for c in (client, a_client, l_client):
                await c.aclose()
    pings = samples["ping"]
    server_ping = _usec(stats, "ping")
    ping_row_note = f"redis.asyncio, one client, 127.0.0.1 TCP, {parser()} parser"
    base = fmt_pair(p50(pings), p99(pings))
    rows: list[Row] = []
    if gate is None:
        rows += [
            not_measured(NAME, "gate admit p50 / p99", TARGET, why or "?"),
            Row(NAME, "PING p50 / p99 (baseline)", base, status="INFO", note=ping_row_note,
                data={"ping": summary_ms(pings)}),
        ]
    else:
        gates = samples["gate"]
        server_gate = _usec(stats, "evalsha")
        ratio = p50(gates) / p50(pings)
        ratio99 = p99(gates) / p99(pings)
        path = ("the gate's own pipelined connection (guardrails/gatewire.py)" if wire is not None
                else "redis-py execute_command")
        rows.append(Row(
            NAME,
            "gate admit p50 / p99",
            f"{fmt_pair(p50(gates), p99(gates))}  ({ratio:.2f}× / {ratio99:.2f}× PING)",
            target=TARGET,
            status=verdict(ratio <= RATIO and ratio99 <= RATIO_P99),
            baseline=f"PING {base}",
            note=f"{pairs} interleaved rounds; each admit admits a fresh intent (all checks, "
            f"reservation and order record written) through {path}; PING: {ping_row_note}. "
            f"Inside Redis (INFO commandstats, mean): the gate script {server_gate:.0f} µs per "
            f"decision, PING {server_ping:.1f} µs; the rest is the client and the network",
            data={
                "gate": summary_ms(gates),
                "ping": summary_ms(pings),
                "ratio_p50": round(ratio, 3),
                "ratio_p99": round(ratio99, 3),
                "server_usec_per_call": {"evalsha": server_gate, "ping": server_ping},
            },
        ))
    if wire is not None:
        w = samples["wire"]
        rows.append(Row(
            NAME, "PING on the gate's wire p50 / p99",
            f"{fmt_pair(p50(w), p99(w))}  ({p50(w) / p50(pings):.2f}× PING p50)",
            baseline=f"PING {base}",
            note="the same PING sent as pre-packed bytes on the gate's pipelined connection: "
            "the floor of the gate's client path (the gate = this + the script's time)",
            data={"wire_ping": summary_ms(w)},
        ))
    for kind, figure, st, cmds, what in (
        ("fenced", "anchor: 30-line fenced Lua gate p50 / p99", a_stats, ("evalsha",),
         "bench/anchors.py FENCED_LUA through redis-py's Script (register_script): lease "
         "token + PTTL, kill latch, idempotency, notional and position limits, reserve, "
         "order record, open set, journal; far fewer checks than gate_admit.lua"),
        ("lock", "anchor: redis-py Lock acquire + release p50 / p99", l_stats,
         ("set", "evalsha"), "redis.asyncio Lock: SET NX PX, then its release script"),
    ):
        xs, pa = samples[kind], samples["ping_a"]
        inside = _usec(st, *cmds)
        rows.append(Row(
            NAME, figure,
            f"{fmt_pair(p50(xs), p99(xs))}  ({p50(xs) / p50(pa):.2f}× PING p50)",
            baseline=f"PING {fmt_pair(p50(pa), p99(pa))}",
            note=f"{what}; interleaved with its own PINGs (phase 2, after the gate's pairs); "
            f"inside Redis (INFO commandstats): {inside:.1f} µs per operation",
            data={kind: summary_ms(xs), "ping": summary_ms(pa), "inside_redis_us": inside},
        ))
    return rows
