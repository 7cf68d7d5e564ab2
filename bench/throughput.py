"""Throughput with 64 concurrent intents from one process: gate vs PING.

64 asyncio tasks share one ``redis.asyncio`` client (its pool opens a connection per
concurrent command) and pull work from one counter until a round's quota is done.
Rounds alternate PING, gate, PING, gate… on the same client; each kind's rate is the
median over its rounds, so drift on the shared machine hits both. Target (issue 3):
gate throughput ≥ 0.75 × concurrent PING throughput.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import psutil
import redis.asyncio as aioredis

from bench import gatesetup
from bench.account import account, available, intent
from bench.core import Row, not_measured, progress, redis_server, verdict

NAME = "throughput"
TARGET = "gate ≥ 0.75× PING rate"
CONCURRENCY = 64


async def _redis_cpu(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def _measured(client: aioredis.Redis, op: Callable[[int], Awaitable[object]], start: int,
                    count: int) -> tuple[float, float, float]:
    """ops/s, Redis server CPU % and this (client) process's CPU % over one round."""
    me = psutil.Process()
    r0, c0, t0 = await _redis_cpu(client), sum(me.cpu_times()[:2]), time.perf_counter()
    rate = await _round(op, start, count)
    wall = time.perf_counter() - t0
    r1, c1 = await _redis_cpu(client), sum(me.cpu_times()[:2])
    return rate, 100 * (r1 - r0) / wall, 100 * (c1 - c0) / wall


async def _round(op: Callable[[int], Awaitable[object]], start: int, count: int) -> float:
    """Run ``count`` ops over CONCURRENCY tasks; return ops/s."""
    next_i = start
    end = start + count

    async def worker() -> None:
        nonlocal next_i
        while next_i < end:
            i = next_i
            next_i += 1
            await op(i)

    t = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(CONCURRENCY):
            tg.create_task(worker())
    return count / (time.perf_counter() - t)


async def run(*, quick: bool) -> list[Row]:
    rounds = 3 if quick else 7
    per_round = 2_000 if quick else 5_000
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            why = available("guardrails.gate")
            gate = None if why else await gatesetup.seed(client, account())

            async def ping(_: int) -> object:
                return await client.ping()

            async def admit(i: int) -> object:
                await gatesetup.admit(gate, intent(i))
                return None

            await _round(ping, 0, 500)  # warm-up: open the pool's connections
            if gate is not None:
                await _round(admit, 0, 500)
            await client.config_resetstat()  # inside-Redis µs: the measured rounds only
            ping_rates: list[float] = []
            gate_rates: list[float] = []
            cpu: dict[str, list[tuple[float, float]]] = {"ping": [], "gate": []}
            next_intent = 500
            for r in range(rounds):
                rate, server_cpu, client_cpu = await _measured(client, ping, 0, per_round)
                ping_rates.append(rate)
                cpu["ping"].append((server_cpu, client_cpu))
                if gate is not None:
                    rate, server_cpu, client_cpu = await _measured(
                        client, admit, next_intent, per_round
                    )
                    gate_rates.append(rate)
                    cpu["gate"].append((server_cpu, client_cpu))
                    next_intent += per_round
                progress(
                    NAME,
                    f"round {r + 1}/{rounds}: PING {ping_rates[-1]:,.0f}/s"
                    + (f", gate {gate_rates[-1]:,.0f}/s" if gate_rates else ""),
                )
            connections = len(client.connection_pool._available_connections)
            stats = await client.info("commandstats")
        finally:
            await client.aclose()
    ping_rate = statistics.median(ping_rates)
    base = f"PING {ping_rate:,.0f}/s"
    note = (
        f"{CONCURRENCY} tasks, one redis.asyncio client ({connections} pooled connections), "
        f"{rounds} alternating rounds of {per_round} ops, median round"
    )
    if gate is None:
        figure = f"gate admits/s at {CONCURRENCY} concurrent"
        return [not_measured(NAME, figure, TARGET, why or "?")]
    gate_rate = statistics.median(gate_rates)
    ratio = gate_rate / ping_rate

    def cpus(kind: str) -> tuple[float, float]:
        return (statistics.median(x[0] for x in cpu[kind]),
                statistics.median(x[1] for x in cpu[kind]))

    (gs, gc), (ps, pc) = cpus("gate"), cpus("ping")
    # per decision, not per EVALSHA: the gate batches the decisions that meet in one
    # event-loop turn (gate.py BATCH_MAX), so one call carries several
    decisions = rounds * per_round
    ev = stats.get("cmdstat_evalsha", {})
    calls = int(ev.get("calls", 0)) or 1
    inside = {"evalsha": float(ev.get("usec", 0.0)) / decisions,
              "ping": float(stats.get("cmdstat_ping", {}).get("usec_per_call", 0.0))}
    path = ("decisions on the gate's own pipelined connection (guardrails/gatewire.py)"
            if getattr(gate, "_wire", None) is not None else "decisions through execute_command")
    note += (f"; {path}; CPU (% of one core, median round): gate rounds redis-server {gs:.0f} %, "
             f"client {gc:.0f} %; PING rounds redis-server {ps:.0f} %, client {pc:.0f} %; "
             f"inside Redis (INFO commandstats, mean): {inside['evalsha']:.0f} µs per decision "
             f"({decisions / calls:.1f} decisions per EVALSHA), PING {inside['ping']:.1f} µs")
    return [
        Row(
            NAME,
            f"gate admits/s at {CONCURRENCY} concurrent",
            f"{gate_rate:,.0f}/s  ({ratio:.2f}× PING)",
            target=TARGET,
            status=verdict(ratio >= 0.75),
            baseline=base,
            note=note,
            data={
                "gate_rates": [round(x) for x in gate_rates],
                "ping_rates": [round(x) for x in ping_rates],
                "ratio": round(ratio, 3),
                "server_usec_per_decision": inside, "decisions_per_evalsha": decisions / calls,
                "cpu_pct_median": {"gate": {"redis": gs, "client": gc},
                                   "ping": {"redis": ps, "client": pc}},
            },
        )
    ]
