"""Gate decision latency against a plain PING, through the same asyncio client.

What is timed: one ``await OrderGate.admit(...)`` (Python validation + ONE EVALSHA +
mapping the reply) that admits a fresh intent, against one ``await client.ping()`` on
the same ``redis.asyncio`` client and connection pool, in the same run. The two are
interleaved pair by pair — and the order inside each pair alternates — so drift on the
shared machine (other engineers' test runs) lands on both equally. Target (issue 3):
gate p50 ≤ 1.3 × PING p50.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from bench import gatesetup
from bench.account import account, available, intent
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
TARGET = "p50 ≤ 1.3× PING p50"
RATIO = 1.3
_ARGS = "17 keys + 11"


async def run(*, quick: bool) -> list[Row]:
    pairs = 1_000 if quick else 5_000
    warmup = 200
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            pings: list[float] = []
            progress(NAME, f"{pairs} interleaved PING / admit pairs (+{warmup} warm-up)")
            why = available("guardrails.gate")
            gate = None if why else await gatesetup.seed(client, account())
            gates: list[float] = []
            for i in range(-warmup, pairs):
                order = (0, 1) if i % 2 == 0 else (1, 0)
                for which in order:
                    if which == 0:
                        t = time.perf_counter_ns()
                        await client.ping()
                        d = (time.perf_counter_ns() - t) / 1e6
                        if i >= 0:
                            pings.append(d)
                    elif gate is not None:
                        it = intent(i + warmup)
                        t = time.perf_counter_ns()
                        await gatesetup.admit(gate, it)
                        d = (time.perf_counter_ns() - t) / 1e6
                        if i >= 0:
                            gates.append(d)
                if i == -1:
                    await client.config_resetstat()  # server-side times: measured pairs only
                if i > 0 and i % 1000 == 0:
                    progress(NAME, f"{i}/{pairs} pairs")
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
    server_ping = float(stats.get("cmdstat_ping", {}).get("usec_per_call", 0.0))
    server_gate = float(stats.get("cmdstat_evalsha", {}).get("usec_per_call", 0.0))
    ping_row_note = f"redis.asyncio, one client, 127.0.0.1 TCP, {parser()} parser"
    base = fmt_pair(p50(pings), p99(pings))
    if gate is None:
        return [
            not_measured(NAME, "gate admit p50 / p99", TARGET, why or "?"),
            Row(NAME, "PING p50 / p99 (baseline)", base, status="INFO", note=ping_row_note,
                data={"ping": summary_ms(pings)}),
        ]
    ratio = p50(gates) / p50(pings)
    status = verdict(ratio <= RATIO)
    return [
        Row(
            NAME,
            "gate admit p50 / p99",
            f"{fmt_pair(p50(gates), p99(gates))}  ({ratio:.2f}× PING p50)",
            target=TARGET,
            status=status,
            baseline=f"PING {base}",
            note=f"{pairs} interleaved pairs; each admit admits a fresh intent (all checks, "
            f"reservation and order record written); {ping_row_note}. Inside Redis "
            f"(INFO commandstats, mean): the gate script {server_gate:.0f} µs/call, PING "
            f"{server_ping:.1f} µs/call; the rest is the client (packing {_ARGS} arguments, "
            "parsing, asyncio)",
            data={
                "gate": summary_ms(gates),
                "ping": summary_ms(pings),
                "ratio_p50": round(ratio, 3),
                "ratio_p99": round(p99(gates) / p99(pings), 3),
                "server_usec_per_call": {"evalsha": server_gate, "ping": server_ping},
            },
        )
    ]
