"""30 accounts on one redis-server versus a three-primary Redis Cluster, same run.

Both setups hold the same 30 accounts (``paper:s00`` … ``paper:s29``), each seeded as a
running instance would find it (``gatesetup.seed``: lease, limits, mark). Rounds
alternate single, cluster, single, cluster…; in each round as many client processes as
the machine has cores (each with its own ``redis.asyncio`` client — ``RedisCluster`` on
the cluster — and 16 concurrent tasks) admit fresh intents round-robin over their share
of the accounts, for a fixed window that starts at one moment for every process. Every
decision is a real ``OrderGate.admit`` that admits (anything else is a broken setup).

Per round and per node, from the server itself: ``INFO commandstats`` (the gate
script's ``evalsha`` calls and usec) and ``INFO cpu`` (the server process's user + sys
time). Figures (medians over rounds):

- admissions/s, single vs cluster;
- Redis-side cost per admission: CPU seconds of every node / admissions, and script usec
  per call; target (issue 15): cluster ≤ 1.1 × single;
- load split: admissions on the busiest node / the mean over nodes; target ≤ 1.5.

What a 2-core machine cannot show: scale-out. Three primaries and the client processes
share the same two cores, so the cluster's throughput here is bounded by the same CPUs
as the single server's; bench/README.md projects the per-node figures to a cluster with
a core per node.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import redis

from bench import gatesetup
from bench.account import available, intent
from bench.core import Row, not_measured, progress, redis_server, verdict
from guardrails.keys import AccountId

NAME = "scaleout"
ACCOUNTS = [AccountId("paper", f"s{i:02d}") for i in range(30)]
TASKS_PER_PROCESS = 16
COST_TARGET = "cluster ≤ 1.1× single"
SPLIT_TARGET = "busiest ≤ 1.5× mean"
IDLE_S = 1.5


def _worker(url: str, names: list[str], start_at: float, window_s: float, base: int) -> int:
    """One client process: admit fresh intents over ``names`` from ``start_at`` (the
    system-wide monotonic clock) for ``window_s``; returns the admissions made."""
    return asyncio.run(_admit_loop(url, names, start_at, window_s, base))


async def _admit_loop(url: str, names: list[str], start_at: float, window_s: float,
                      base: int) -> int:
    from bench.account import risk_config
    from guardrails.config import RedisConfig
    from guardrails.gate import OrderGate
    from guardrails.infra import connect
    from guardrails.keys import AccountKeys

    # a generous timeout: the machine is shared; a timeout here is a lost data point
    client = await connect.connect(RedisConfig(url=url, socket_timeout="10s"))
    try:
        risk = risk_config()
        gates = [OrderGate(client, AccountKeys(AccountId.parse(n)), risk) for n in names]
        for g in gates:  # load the script on every node this process reaches
            await gatesetup.admit(g, intent(base))
            base += 1
        counter = base
        done = 0
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        end = start_at + window_s

        async def task() -> None:
            nonlocal counter, done
            while time.monotonic() < end:
                i = counter
                counter += 1
                await gatesetup.admit(gates[i % len(gates)], intent(i))
                done += 1

        async with asyncio.TaskGroup() as tg:
            for _ in range(TASKS_PER_PROCESS):
                tg.create_task(task())
        return done
    finally:
        await client.aclose()


def _node_stats(port: int) -> tuple[int, int, float]:
    """(evalsha calls, evalsha usec, server CPU seconds) of one node."""
    c = redis.Redis(port=port, decode_responses=True, socket_timeout=5)
    try:
        stats: Any = c.info("commandstats")
        cpu: Any = c.info("cpu")
    finally:
        c.close()
    ev = stats.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    return int(ev["calls"]), int(ev["usec"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _seed(url: str) -> None:
    from guardrails.infra import connect

    client = await connect.connect(url)
    try:
        for acct in ACCOUNTS:
            await gatesetup.seed(client, acct)
    finally:
        await client.aclose()


def _round(pool: ProcessPoolExecutor, url: str, ports: list[int], procs: int, window_s: float,
           base: int) -> dict[str, Any]:
    shares = [[str(a) for a in ACCOUNTS[i::procs]] for i in range(procs)]
    # Each node's own background CPU (cron, a cluster's gossip), measured idle just
    # before, is taken out: what is left is what the admissions cost.
    idle0, t_idle = [_node_stats(p) for p in ports], time.monotonic()
    time.sleep(IDLE_S)
    idle1 = [_node_stats(p) for p in ports]
    idle_rate = [(b[2] - a[2]) / (time.monotonic() - t_idle) for a, b in zip(idle0, idle1, strict=True)]
    before, t0 = [_node_stats(p) for p in ports], time.monotonic()
    start_at = time.monotonic() + 3.0  # every process connects and warms up before this
    futures = [pool.submit(_worker, url, share, start_at, window_s, base + k * 10_000_000)
               for k, share in enumerate(shares)]
    admitted = sum(f.result() for f in futures)
    after, wall = [_node_stats(p) for p in ports], time.monotonic() - t0
    calls = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    usec = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    cpu = [max(0.0, a[2] - b[2] - r * wall) for a, b, r in zip(after, before, idle_rate, strict=True)]
    total_calls = sum(calls)
    return {
        "admitted": admitted,
        "rate": admitted / window_s,
        "calls": calls,
        "idle_cpu_pct": [round(100 * r, 2) for r in idle_rate],
        "node_cpu_us_per_call": [round(1e6 * c / max(1, n), 1) for c, n in zip(cpu, calls, strict=True)],
        # per admission, not per EVALSHA (a plain client's gate batches; gate.py BATCH_MAX)
        "cpu_us_per_admission": 1e6 * sum(cpu) / max(1, admitted),
        "script_us_per_admission": sum(usec) / max(1, admitted),
        "admissions_per_call": admitted / max(1, total_calls),
        "busiest_over_mean": max(calls) / (total_calls / len(calls)) if total_calls else 0.0,
        "node_cpu_s": [round(x, 3) for x in cpu],
    }


async def run(*, quick: bool) -> list[Row]:
    why = available("guardrails.gate") or available("guardrails.infra.connect")
    figure_rate = "admissions/s, 30 accounts: 1 node vs 3-primary cluster"
    if why:
        return [not_measured(NAME, figure_rate, "", why)]
    from tests.ha_harness import ClusterGroup

    rounds = 2 if quick else 4
    window_s = 3.0 if quick else 6.0
    procs = os.cpu_count() or 2
    cluster = ClusterGroup()
    with redis_server(aof=True) as single:  # the same persistence as the cluster nodes
        cluster.start()
        try:
            await _seed(single.url)
            await _seed(cluster.url)
            ports = {"single": [single.port], "cluster": [n.port for n in cluster.nodes]}
            urls = {"single": single.url, "cluster": cluster.url}
            results: dict[str, list[dict[str, Any]]] = {"single": [], "cluster": []}
            with ProcessPoolExecutor(max_workers=procs, mp_context=get_context("spawn")) as pool:
                base = 1_000_000_000
                for r in range(rounds):
                    for kind in ("single", "cluster"):
                        res = await asyncio.to_thread(_round, pool, urls[kind], ports[kind],
                                                      procs, window_s, base)
                        base += 100_000_000
                        results[kind].append(res)
                        progress(NAME, f"round {r + 1}/{rounds} {kind}: {res['rate']:,.0f}/s, "
                                       f"{res['cpu_us_per_admission']:.1f} µs CPU/admission, "
                                       f"split {res['calls']}")
        finally:
            cluster.stop()

    def med(kind: str, key: str) -> float:
        return statistics.median(float(x[key]) for x in results[kind])

    s_rate, c_rate = med("single", "rate"), med("cluster", "rate")
    s_cpu, c_cpu = med("single", "cpu_us_per_admission"), med("cluster", "cpu_us_per_admission")
    s_us, c_us = med("single", "script_us_per_admission"), med("cluster", "script_us_per_admission")
    s_batch, c_batch = med("single", "admissions_per_call"), med("cluster", "admissions_per_call")
    split = med("cluster", "busiest_over_mean")
    cost_ratio = c_cpu / s_cpu
    load = os.getloadavg()[0]
    common = (f"{procs} client processes × {TASKS_PER_PROCESS} tasks, {rounds} alternating rounds "
              f"of {window_s:.0f} s, medians; load average {load:.1f} on {procs} cores: the three "
              "primaries and the clients share the same cores, so this shows per-admission "
              "cost and balance, not scale-out (bench/README.md projects it)")
    data = {"single": results["single"], "cluster": results["cluster"], "processes": procs,
            "window_s": window_s}
    return [
        Row(NAME, figure_rate, f"cluster {c_rate:,.0f}/s", baseline=f"single {s_rate:,.0f}/s",
            target="(information)", status="INFO", note=common, data=data),
        Row(NAME, "Redis CPU per admission, cluster vs single",
            f"{c_cpu:.1f} µs ({cost_ratio:.2f}×)", baseline=f"{s_cpu:.1f} µs",
            target=COST_TARGET, status=verdict(cost_ratio <= 1.1),
            note=(f"INFO cpu (user + sys) of every node over the round, less the node's idle "
                  f"CPU measured just before, / admissions; per node and EVALSHA (last round): "
                  f"{results['cluster'][-1]['node_cpu_us_per_call']} µs; inside the script "
                  f"only (INFO commandstats usec / admissions): cluster {c_us:.1f} µs, single "
                  f"{s_us:.1f} µs ({c_us / s_us:.2f}×); admissions per EVALSHA: single "
                  f"{s_batch:.2f} (a plain client's gate batches the decisions of one loop "
                  f"turn), cluster {c_batch:.2f} (RedisCluster: one per call); both setups AOF "
                  "appendfsync always")),
        Row(NAME, "load split over 3 primaries (admissions)",
            f"busiest {split:.2f}× mean", baseline="1.00× (perfect)", target=SPLIT_TARGET,
            status=verdict(split <= 1.5),
            note=("per-node evalsha calls of the last round: "
                  f"{results['cluster'][-1]['calls']}; the accounts' hash tags decide the node "
                  "(CRC16 slot), and every account gets the same share of the clients' work")),
    ]
