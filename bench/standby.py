"""Idle standby cost: Redis commands per second and CPU % of one waiting standby.

A benchmark-owned redis-server serves one account with the project's DEFAULT timings
(ttl 3 s, renew_deadline 2 s, renew_interval 500 ms, registry heartbeat 1 s). Two
windows of equal length: (A) the active instance alone, (B) the active plus one idle
``--standby`` copy (started, subscribed and settled before B opens). The standby's
Redis cost is (commands in B − commands in A) / window, from ``total_commands_processed``
(the benchmark's own INFO calls subtracted); ``INFO commandstats`` deltas attribute it
per command. Its CPU % is the process's user+system CPU time over window B (psutil).
Targets (issue 2): ≤ 1 command/s, < 1 % CPU.
"""

from __future__ import annotations

import asyncio
import time

import psutil
import redis.asyncio as aioredis

from bench.account import account, available, write_run_config
from bench.core import Row, not_measured, progress, redis_server, verdict
from bench.procs import Instance, private_env, workspace
from guardrails.keys import AccountKeys

NAME = "standby"
CMD_TARGET = "≤ 1 command/s"
CPU_TARGET = "< 1 % CPU"
BENCH_CMDS_PER_WINDOW = 2
"""The benchmark's own commands counted inside one window (two INFO calls)."""


async def _snapshot(client: aioredis.Redis) -> tuple[int, dict[str, int]]:
    stats = await client.info("commandstats")
    total = (await client.info("stats"))["total_commands_processed"]
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return int(total), calls


async def _window(client: aioredis.Redis, seconds: float, procs: list[psutil.Process]
                  ) -> tuple[float, dict[str, float], list[float]]:
    """Commands/s (bench's own removed), per-command rates, CPU % of each proc."""
    cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
    t0 = time.monotonic()
    total0, calls0 = await _snapshot(client)
    await asyncio.sleep(seconds)
    total1, calls1 = await _snapshot(client)
    wall = time.monotonic() - t0
    cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
    rate = (total1 - total0 - BENCH_CMDS_PER_WINDOW) / wall
    per_cmd = {
        c: (n - calls0.get(c, 0)) / wall
        for c, n in calls1.items()
        if c != "info" and n - calls0.get(c, 0) > 0
    }
    cpu = [100 * (b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
    return rate, per_cmd, cpu


async def run(*, quick: bool) -> list[Row]:
    why = available("guardrails.runtime") or available("guardrails.lease")
    if why:
        return [
            not_measured(NAME, "idle standby Redis commands/s", CMD_TARGET, why),
            not_measured(NAME, "idle standby CPU %", CPU_TARGET, why),
        ]
    seconds = 15.0 if quick else 60.0
    acct = account("standby")
    keys = AccountKeys(acct)
    async with workspace(NAME) as (tmp, instances):
        with redis_server() as server:
            client = aioredis.Redis.from_url(server.url, decode_responses=True)
            try:
                cfg = write_run_config(tmp / "run.toml", redis_url=server.url, acct=acct, ttl=None)
                env = private_env(tmp)
                active = await Instance(cfg, "bench-active", env, standby=False).start()
                instances.append(active)
                await active.wait_event("lease.acquired", within=60)
                await asyncio.sleep(3)  # past start-up (limits, reconcile, first heartbeats)
                pa = psutil.Process(active.pid)
                progress(NAME, f"window A: active alone, {seconds:.0f}s")
                rate_a, per_a, (cpu_active,) = await _window(client, seconds, [pa])
                subs = dict(await client.pubsub_numsub(keys.lease_channel))[keys.lease_channel]
                standby = await Instance(cfg, "bench-standby", env, standby=True).start()
                instances.append(standby)
                deadline = time.monotonic() + 60
                while int(dict(await client.pubsub_numsub(keys.lease_channel))[keys.lease_channel]
                          ) <= int(subs):
                    if not standby.running() or time.monotonic() > deadline:
                        raise RuntimeError(f"standby never subscribed:\n{standby.tail()}")
                    await asyncio.sleep(0.1)
                await asyncio.sleep(5)  # settle: start-up work is not idle cost
                ps = psutil.Process(standby.pid)
                progress(NAME, f"window B: active + idle standby, {seconds:.0f}s")
                window_b = await _window(client, seconds, [pa, ps])
                rate_b, per_b, (cpu_active_b, cpu_standby) = window_b
                acquired = [ln for ln in standby.lines if ln.event == "lease.acquired"]
                if acquired:
                    raise RuntimeError("the standby acquired the lease during the window")
            finally:
                await client.aclose()
    standby_rate = rate_b - rate_a
    diff = {c: per_b.get(c, 0.0) - per_a.get(c, 0.0) for c in set(per_a) | set(per_b)}
    breakdown = ", ".join(
        f"{c} {v:.2f}/s" for c, v in sorted(diff.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.05
    )
    return [
        Row(
            NAME,
            f"idle standby Redis commands/s ({seconds:.0f}s windows)",
            f"{standby_rate:.2f}/s",
            target=CMD_TARGET,
            status=verdict(standby_rate <= 1.0),
            baseline=f"active alone {rate_a:.2f}/s",
            note=f"default timings (ttl 3s, renew 500ms, heartbeat 1s); by command: {breakdown}",
            data={"active_alone_cmds_per_s": round(rate_a, 3),
                  "active_plus_standby_cmds_per_s": round(rate_b, 3),
                  "standby_by_command_per_s": {k: round(v, 3) for k, v in diff.items()},
                  "window_s": seconds},
        ),
        Row(
            NAME,
            "idle standby CPU %",
            f"{cpu_standby:.2f} %",
            target=CPU_TARGET,
            status=verdict(cpu_standby < 1.0),
            baseline=f"idle active {cpu_active:.2f} % / {cpu_active_b:.2f} %",
            note="user+system CPU time of the process over the window / wall time (psutil), "
            "% of one core",
            data={"standby_cpu_pct": round(cpu_standby, 3),
                  "active_cpu_pct_a": round(cpu_active, 3),
                  "active_cpu_pct_b": round(cpu_active_b, 3)},
        ),
    ]
