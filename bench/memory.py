"""Memory per instance: resident set size of an idle active ``guardrails run``.

One active instance (no strategies: what the harness itself costs) on a
benchmark-owned redis-server; RSS and USS (memory unique to the process) sampled with
psutil once a second for a few seconds after start-up, the maximum reported. Baseline in
the same run: a bare interpreter that only imports what ``guardrails run`` imports
(``guardrails.runtime`` and the venue factory), to show how much is imports.

Also reported: the same imports-only figure with the EVM venue's modules (web3,
eth-account), which an EVM-configured instance loads on top.

Target: RSS < 150 MB. Why 150 MB: an operator runs an active and one or two standbys
per account next to Redis on small hosts (a 1 GB VM, a laptop); at 150 MB, three
instances stay under half of such a host, including the EVM venue's web3 stack, which
is a large, third-party share of an EVM instance's memory.
"""

from __future__ import annotations

import asyncio
import sys

import psutil

from bench.account import account, available, write_run_config
from bench.core import Row, not_measured, progress, redis_server, verdict
from bench.procs import Instance, private_env, workspace

NAME = "memory"
TARGET = "RSS < 150 MB"
LIMIT_MB = 150.0
MB = 2**20

_IMPORTS_ONLY = (
    "import guardrails.runtime.term, guardrails.venues, sys, time; {extra}"
    "print('ready', flush=True); time.sleep(60)"
)


async def _sample(pid: int, seconds: int) -> tuple[float, float]:
    proc = psutil.Process(pid)
    rss = uss = 0.0
    for _ in range(seconds):
        info = proc.memory_full_info()
        rss = max(rss, info.rss / MB)
        uss = max(uss, info.uss / MB)
        await asyncio.sleep(1)
    return rss, uss


async def _imports_only(env: dict[str, str], extra: str = "") -> tuple[float, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _IMPORTS_ONLY.format(extra=extra), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line.startswith(b"ready"):
            raise OSError(f"the import-only interpreter exited ({extra or 'base imports'} failed)")
        await asyncio.sleep(1)
        return await _sample(proc.pid, 2)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def run(*, quick: bool) -> list[Row]:
    why = available("guardrails.runtime")
    if why:
        return [not_measured(NAME, "RSS of an idle active instance", TARGET, why)]
    seconds = 3 if quick else 10
    acct = account("memory")
    with redis_server() as server:
        async with workspace(NAME) as (tmp, instances):
            cfg = write_run_config(tmp / "run.toml", redis_url=server.url, acct=acct, ttl=None)
            env = private_env(tmp)
            active = await Instance(cfg, "bench-mem", env, standby=False).start()
            instances.append(active)
            await active.wait_event("lease.acquired", within=60)
            await asyncio.sleep(3)
            progress(NAME, f"sampling RSS of the idle active for {seconds}s")
            rss, uss = await _sample(active.pid, seconds)
            base_rss, base_uss = await _imports_only(env)
            try:
                evm_rss, _ = await _imports_only(env, "import guardrails.venues.evm; ")
                evm = f"; with the EVM venue's imports: {evm_rss:.1f} MB"
            except (TimeoutError, OSError) as e:
                evm_rss, evm = None, f"; EVM imports not measured: {e}"
    return [
        Row(
            NAME,
            "RSS of an idle active instance (max)",
            f"{rss:.1f} MB (USS {uss:.1f} MB)",
            target=TARGET,
            status=verdict(rss < LIMIT_MB),
            baseline=f"imports only: {base_rss:.1f} MB (USS {base_uss:.1f} MB)",
            note="no strategies, paper venue, default timings; target: three instances "
            "stay under half of a 1 GB host (see bench/memory.py)" + evm,
            data={"rss_mb": round(rss, 1), "uss_mb": round(uss, 1),
                  "imports_only_rss_mb": round(base_rss, 1),
                  "imports_only_uss_mb": round(base_uss, 1),
                  "imports_with_evm_rss_mb": None if evm_rss is None else round(evm_rss, 1)},
        )
    ]
