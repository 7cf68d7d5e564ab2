"""Crash takeover after a Sentinel failover versus after a plain SIGKILL, same run.

A real Sentinel setup (``tests/ha_harness.SentinelGroup``: primary + replica, both AOF
``appendfsync always``, three sentinels, ``down-after-milliseconds`` 1000, quorum 2) and
two ``guardrails run`` of one account connected through the sentinels
(``redis+sentinel://``; ttl 1 s, renew_deadline 700 ms, renew_interval 250 ms). Trials
alternate:

- **sigkill**: SIGKILL the active instance; the time until the standby logs
  ``lease.acquired`` with a larger token (its own timestamp, ms resolution). A new
  standby replaces the killed one.
- **failover**: SIGKILL the Redis *primary*; the sentinels must notice (1 s), agree and
  promote the replica; the active's renew fails, so it self-fences; the time until
  either instance logs ``lease.acquired`` with a larger token on the new master. The
  old primary then rejoins as a replica.

Both are measured from the kill to the acquiring process's log line, so they are
comparable; the difference is what the failover adds. There is no target in the issue
beyond "report it".
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time

import redis

from bench.account import account, available, write_run_config
from bench.core import Row, fmt_pair, not_measured, p50, p99, progress, summary_ms
from bench.procs import Instance, LogLine, private_env, workspace
from guardrails.keys import AccountKeys

NAME = "sentinel"
START_TIMEOUT = 60.0


def _token(value: object) -> int:
    return int(str(value).split(":", 1)[0]) if value else 0


async def _acquired_after(insts: list[Instance], token: int, t0_wall: float,
                          within: float) -> tuple[Instance, LogLine]:
    """The first ``lease.acquired`` above ``token`` logged after ``t0_wall`` by any of
    ``insts``."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for inst in insts:
            for ln in inst.lines:
                if (ln.event == "lease.acquired" and int(ln.fields.get("token", "0")) > token
                        and ln.logged_wall is not None and ln.logged_wall >= t0_wall - 0.002):
                    return inst, ln
        await asyncio.sleep(0.02)
    tails = "\n---\n".join(i.tail() for i in insts)
    raise TimeoutError(f"no lease.acquired above token {token} within {within}s:\n{tails}")


async def run(*, quick: bool) -> list[Row]:
    why = available("guardrails.runtime") or available("guardrails.infra.connect")
    fig_kill = "crash takeover p50 / p99 after a plain SIGKILL (Sentinel setup)"
    fig_fail = "takeover p50 / p99 after a Sentinel failover (primary SIGKILLed)"
    if why:
        return [not_measured(NAME, fig_kill, "", why), not_measured(NAME, fig_fail, "", why)]
    from tests.ha_harness import SentinelGroup, wait_replica_online

    trials = 3 if quick else 8
    acct = account("sentinel")
    keys = AccountKeys(acct)
    kill_ms: list[float] = []
    failover_ms: list[float] = []
    group = SentinelGroup().start()
    try:
        async with workspace(NAME) as (tmp, instances):
            cfg = write_run_config(tmp / "run.toml", redis_url=group.url, acct=acct, ttl="1s")
            env = private_env(tmp)
            seq = itertools.count()

            async def spawn(standby: bool) -> Instance:
                inst = Instance(cfg, f"bench-{next(seq)}", env, standby=standby)
                instances.append(inst)
                return await inst.start()

            def lease() -> str | None:
                c = redis.Redis(port=group.master_port(), decode_responses=True, socket_timeout=2)
                try:
                    v = c.get(keys.lease)
                    return None if v is None else str(v)
                finally:
                    c.close()

            progress(NAME, "starting an active and a standby on Sentinel")
            active = await spawn(False)
            await active.wait_event("lease.acquired", within=START_TIMEOUT)
            standby = await spawn(True)
            await standby.wait_event("lease.standby", within=START_TIMEOUT)
            for n, kind in enumerate(["sigkill", "failover"] * trials):
                await asyncio.sleep(1.0)
                old = _token(await asyncio.to_thread(lease))
                live = [i for i in (active, standby) if i.running()]
                t0 = time.time()
                if kind == "sigkill":
                    active.signal(signal.SIGKILL)
                    who, got = await _acquired_after([standby], old, t0, 20)
                    kill_ms.append((got.logged_wall or t0) * 1000 - t0 * 1000)
                    await active.wait_exit(15)
                    active, standby = standby, await spawn(True)
                    await standby.wait_event("lease.standby", within=START_TIMEOUT)
                    took = kill_ms[-1]
                else:
                    old_port = group.master_port()
                    group.server(old_port).kill()
                    who, got = await _acquired_after(live, old, t0, 60)
                    failover_ms.append((got.logged_wall or t0) * 1000 - t0 * 1000)
                    took = failover_ms[-1]
                    new_port = await asyncio.to_thread(group.wait_failover, old_port)
                    node = group.server(old_port)
                    node.extra = ["--replicaof", "127.0.0.1", str(new_port)]
                    await asyncio.to_thread(node.start)
                    await asyncio.to_thread(wait_replica_online, group.server(new_port))
                    if who is not active:
                        active, standby = standby, active
                progress(NAME, f"trial {n + 1}/{2 * trials} {kind}: {took:.0f} ms "
                               f"(token {old} -> {got.fields.get('token')})")
    finally:
        group.stop()
    added = p99(failover_ms) - p99(kill_ms)
    note = (f"{trials} trials each, alternating; ttl 1 s / renew_deadline 700 ms; sentinels "
            "down-after-milliseconds 1000, failover-timeout 4000; measured from the kill to "
            "the acquiring instance's lease.acquired log line (ms resolution); a failover "
            f"adds {added:.0f} ms at p99")
    return [
        Row(NAME, fig_kill, fmt_pair(p50(kill_ms), p99(kill_ms)), target="(information)",
            status="INFO", note=note, data={"sigkill": summary_ms(kill_ms),
                                            "samples_ms": [round(x) for x in kill_ms]}),
        Row(NAME, fig_fail, fmt_pair(p50(failover_ms), p99(failover_ms)),
            baseline=f"plain SIGKILL p99 {p99(kill_ms):.0f} ms", target="(information)",
            status="INFO", note=f"+{added:.0f} ms over a plain SIGKILL at p99",
            data={"failover": summary_ms(failover_ms),
                  "samples_ms": [round(x) for x in failover_ms]}),
    ]
