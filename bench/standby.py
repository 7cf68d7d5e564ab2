"""Idle standby cost: Redis commands per second and CPU % of one waiting standby.

A benchmark-owned redis-server serves one account with the project's DEFAULT timings
(ttl 3 s, renew_deadline 2 s, renew_interval 500 ms, registry heartbeat 1 s, 15 s
while standby). Two
windows of equal length: (A) the active instance alone, (B) the active plus one idle
``--standby`` copy (started, subscribed and settled before B opens). Two figures:

- requests the standby *sends*: the standby alone reaches Redis through a counting
  proxy (``bench/proxy.py``), which counts every request by command name — exact;
- commands Redis *executes* for it, including the ones its scripts run inside Redis:
  (commands in B − commands in A) / window, from ``total_commands_processed`` (the
  benchmark's own INFO calls removed), attributed per command by ``INFO commandstats``.

Its CPU % is the process's user+system CPU time over window B (psutil). Targets
(issue 2): ≤ 1 command/s, < 1 % CPU; both command figures are held to the first.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import psutil
import redis.asyncio as aioredis

from bench.account import account, available, write_run_config
from bench.core import Row, not_measured, progress, redis_server, verdict
from bench.procs import Instance, private_env, workspace
from bench.proxy import CountingProxy
from guardrails.keys import AccountKeys

NAME = "standby"
CMD_TARGET = "≤ 1 command/s"
CPU_TARGET = "< 1 % CPU"
BENCH_CMDS_PER_WINDOW = 2
"""The benchmark's own commands counted between two snapshots (two INFO calls)."""


async def _snapshot(client: aioredis.Redis) -> tuple[int, dict[str, int]]:
    stats = await client.info("commandstats")
    total = (await client.info("stats"))["total_commands_processed"]
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    return int(total), calls


async def _window(client: aioredis.Redis, seconds: float, procs: list[psutil.Process]
                  ) -> tuple[float, dict[str, float], list[float], float]:
    """Commands/s (bench's own removed), per-command rates, CPU % of each proc, and the
    difference between the two halves' rates (the window's own noise)."""
    cpu0 = [sum(p.cpu_times()[:2]) for p in procs]
    t0 = time.monotonic()
    total0, calls0 = await _snapshot(client)
    await asyncio.sleep(seconds / 2)
    t_mid = time.monotonic()
    total_mid, _ = await _snapshot(client)
    await asyncio.sleep(seconds / 2)
    total1, calls1 = await _snapshot(client)
    wall = time.monotonic() - t0
    cpu1 = [sum(p.cpu_times()[:2]) for p in procs]
    rate = (total1 - total0 - 2 * BENCH_CMDS_PER_WINDOW) / wall
    first = (total_mid - total0 - BENCH_CMDS_PER_WINDOW) / (t_mid - t0)
    second = (total1 - total_mid - BENCH_CMDS_PER_WINDOW) / (t0 + wall - t_mid)
    per_cmd = {
        c: (n - calls0.get(c, 0)) / wall
        for c, n in calls1.items()
        if c != "info" and n - calls0.get(c, 0) > 0
    }
    cpu = [100 * (b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
    return rate, per_cmd, cpu, abs(first - second)


async def run(*, quick: bool) -> list[Row]:
    why = available("guardrails.runtime") or available("guardrails.lease")
    if why:
        return [
            not_measured(NAME, "idle standby: requests sent to Redis/s", CMD_TARGET, why),
            not_measured(NAME, "idle standby CPU %", CPU_TARGET, why),
        ]
    seconds = 15.0 if quick else 60.0
    acct = account("standby")
    keys = AccountKeys(acct)
    with redis_server() as server:
        proxy = await CountingProxy(server.port).start()
        try:
            async with workspace(NAME) as (tmp, instances):
                client = aioredis.Redis.from_url(server.url, decode_responses=True)
                try:
                    cfg = write_run_config(tmp / "run.toml", redis_url=server.url, acct=acct,
                                           ttl=None)
                    via_proxy = write_run_config(tmp / "standby.toml", redis_url=proxy.url,
                                                 acct=acct, ttl=None)
                    env = private_env(tmp)
                    active = await Instance(cfg, "bench-active", env, standby=False).start()
                    instances.append(active)
                    await active.wait_event("lease.acquired", within=60)
                    await asyncio.sleep(3)  # past start-up (limits, reconcile, heartbeats)
                    pa = psutil.Process(active.pid)
                    progress(NAME, f"window A: active alone, {seconds:.0f}s")
                    rate_a, per_a, (cpu_active,), noise = await _window(client, seconds, [pa])
                    subs = await _subscribers(client, keys)
                    standby = await Instance(via_proxy, "bench-standby", env, standby=True).start()
                    instances.append(standby)
                    deadline = time.monotonic() + 60
                    while await _subscribers(client, keys) <= subs:
                        if not standby.running() or time.monotonic() > deadline:
                            raise RuntimeError(f"standby never subscribed:\n{standby.tail()}")
                        await asyncio.sleep(0.1)
                    await asyncio.sleep(5)  # settle: start-up work is not idle cost
                    ps = psutil.Process(standby.pid)
                    progress(NAME, f"window B: active + idle standby, {seconds:.0f}s")
                    sent0, t0 = Counter(proxy.counts), time.monotonic()
                    window_b = await _window(client, seconds, [pa, ps])
                    sent = Counter(proxy.counts)
                    sent.subtract(sent0)
                    sent_wall = time.monotonic() - t0
                    rate_b, per_b, (cpu_active_b, cpu_standby), _ = window_b
                    if any(ln.event == "lease.acquired" for ln in standby.lines):
                        raise RuntimeError("the standby acquired the lease during the window")
                finally:
                    await client.aclose()
        finally:
            await proxy.close()
    sent_rate = sum(sent.values()) / sent_wall
    sent_by = ", ".join(f"{c} {n / sent_wall:.2f}/s" for c, n in sent.most_common() if n)
    executed = rate_b - rate_a
    diff = {c: per_b.get(c, 0.0) - per_a.get(c, 0.0) for c in set(per_a) | set(per_b)}
    executed_by = ", ".join(
        f"{c} {v:.2f}/s" for c, v in sorted(diff.items(), key=lambda kv: -kv[1]) if abs(v) >= 0.05
    )
    timings = ("default timings (ttl 3s, renew_interval 500ms, registry heartbeat 1s active / "
               "15s standby)")
    return [
        Row(
            NAME,
            f"idle standby: requests sent to Redis/s ({seconds:.0f}s window)",
            f"{sent_rate:.2f}/s",
            target=CMD_TARGET,
            status=verdict(sent_rate <= 1.0),
            baseline=f"idle active: {rate_a:.1f} cmds/s executed",
            note=f"{timings}; counted exactly by a proxy in front of the standby only; "
            f"by command: {sent_by or 'none'}",
            data={"sent_per_s": round(sent_rate, 3),
                  "sent_by_command": {c: n for c, n in sent.items() if n},
                  "window_s": round(sent_wall, 2)},
        ),
        Row(
            NAME,
            "idle standby: cmds Redis executed for it/s (incl. in scripts)",
            f"{executed:.2f}/s (± {noise:.2f})",
            target=CMD_TARGET,
            status=verdict(executed <= 1.0),
            baseline=f"window A {rate_a:.2f}/s, B {rate_b:.2f}/s",
            note="total_commands_processed, window B (active + standby) minus window A "
            "(active alone), own INFO calls removed; ± = how much the active-alone rate "
            f"moved between the halves of window A; by command: {executed_by}",
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


async def _subscribers(client: aioredis.Redis, keys: AccountKeys) -> int:
    return int(dict(await client.pubsub_numsub(keys.lease_channel)).get(keys.lease_channel, 0))
