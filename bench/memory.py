"""Memory per instance: resident set size of an idle active ``guardrails run``.

One active instance (no strategies: what the harness itself costs) on a
benchmark-owned redis-server; RSS and USS (memory unique to the process) sampled with
psutil once a second for a few seconds after start-up, the maximum reported. Baseline in
the same run: a bare interpreter that only imports what ``guardrails run`` imports
(``guardrails.runtime`` and the venue factory), to show how much is imports.

Also reported: the same imports-only figure with the EVM venue's modules (web3,
eth-account), which an EVM-configured instance loads on top.

Also: **Redis memory over a sustained run** (issue #16). Admissions and full fills are
driven directly through the real gate and ledger scripts (``OrderGate.admit``,
``Ledger.apply_fill``) as fast as the machine allows, with the prune sweep
(``guardrails.prune.Pruner``) running beside them every couple of seconds with a short
retention window (seconds instead of the production hours: the code path is the same,
``[prune] retention`` only refuses less than 1h in a config). ``INFO memory`` is sampled
each second; reported: used memory at the end and its growth after the window filled,
bytes per live order, the tombstones' bytes per pruned order, and the same run without
the sweep (what every order cost before). Then the Redis-side cost of one prune batch
(``INFO commandstats`` over a sweep alone: ``EVALSHA`` µs per call), the figure that says
a batch never stalls the gate.

Target: RSS < 150 MB. Why 150 MB: an operator runs an active and one or two standbys
per account next to Redis on small hosts (a 1 GB VM, a laptop); at 150 MB, three
instances stay under half of such a host, including the EVM venue's web3 stack, which
is a large, third-party share of an EVM instance's memory.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import psutil

from bench.account import account, available, write_run_config
from bench.core import Row, not_measured, progress, redis_server, verdict
from bench.procs import Instance, private_env, workspace

NAME = "memory"
TARGET = "RSS < 150 MB"
LIMIT_MB = 150.0
MB = 2**20

_IMPORTS_ONLY = (
    "import guardrails.runtime.process, guardrails.venues, sys, time; {extra}"
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
    return [*await _rss_rows(rss, uss, base_rss, base_uss, evm_rss, evm),
            *await redis_rows(quick=quick)]


async def _rss_rows(rss: float, uss: float, base_rss: float, base_uss: float,
                    evm_rss: float | None, evm: str) -> list[Row]:
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


# -- Redis memory over a sustained run (issue #16) ----------------------------------------

REDIS_TARGET = "flat after the retention window"


def _b(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} B"


async def _used(client: Any) -> int:
    return int((await client.info("memory"))["used_memory"])


async def _key_bytes(client: Any, key: str) -> int:
    v = await client.memory_usage(key, samples=0)
    return int(v or 0)


async def _drive(client: Any, acct: Any, seconds: float, *, prune: bool, retention_ms: int,
                 rate: float,
                 archive_dir: Any, samples: list[tuple[float, int, int, int]]) -> dict[str, Any]:
    """Admit + fill at up to ``rate`` orders/s (8 callers) for ``seconds``, the sweep
    running beside them; sample memory each second."""
    from decimal import Decimal

    from bench.account import SYMBOL, intent
    from bench.gatesetup import HOLDER, TOKEN, seed
    from guardrails.keys import AccountKeys
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, Fill
    from guardrails.prune import MAX_BATCH, Archive, Pruner

    keys = AccountKeys(acct)
    gate = await seed(client, acct)
    from bench.account import risk_config

    ledger = Ledger(client, keys, risk_config())
    stop = asyncio.Event()
    done = [0]
    seq = iter(range(10**9))
    pruner = Pruner(client, keys, Archive(archive_dir / f"{acct.account}.jsonl"),
                    retention_ms=retention_ms, batch=MAX_BATCH, pause_s=0)
    sweeps: list[Any] = []

    t_start = time.monotonic()

    async def worker() -> None:
        while not stop.is_set():
            i = next(seq)
            ahead = i / rate - (time.monotonic() - t_start)
            if ahead > 0:
                await asyncio.sleep(ahead)
            it = intent(i)
            d = await gate.admit(it, intent_id=it.intent_id, token=TOKEN, holder_id=HOLDER)
            if not isinstance(d, Admitted):
                raise RuntimeError(f"bench intent denied: {d}")
            f = Fill(f"bf-{i}", d.client_order_id, SYMBOL, it.side, it.qty, it.price,
                     ts_ms=1_700_000_000_000 + i, fee=Decimal(0))
            if (await ledger.apply_fill(f)).value != "applied":
                raise RuntimeError("bench fill not applied")
            done[0] += 1

    async def sweeper() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.5)
            sweeps.append(await pruner.sweep())

    async def sampler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((time.monotonic() - t0, await _used(client), done[0],
                            await _key_bytes(client, keys.journal)
                            + await _key_bytes(client, keys.tombstones)))
            await asyncio.sleep(1)

    base = await _used(client)
    tasks = [asyncio.create_task(worker()) for _ in range(8)]
    tasks.append(asyncio.create_task(sampler()))
    if prune:
        tasks.append(asyncio.create_task(sweeper()))
    try:
        await asyncio.sleep(seconds)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    names = [k async for k in client.scan_iter(match=keys.order("*"), count=1000)]
    live = len(names)
    # one live order's own bytes: its record, plus its share of the intents and fills hashes
    sample = names[:200]
    rec = sum([await _key_bytes(client, n) for n in sample]) / max(1, len(sample))
    n_int, n_fill = await client.hlen(keys.intents), await client.hlen(keys.fills)
    share = (await _key_bytes(client, keys.intents) / max(1, n_int)
             + await _key_bytes(client, keys.fills) / max(1, n_fill))
    return {
        "per_live": rec + share if live else 0.0,
        "orders": done[0], "base": base, "end": await _used(client), "live": live,
        "tomb": await _key_bytes(client, keys.tombstones),
        "journal": await _key_bytes(client, keys.journal),
        "pruned": sum(s.pruned_orders for s in sweeps),
        "max_batch_ms": max([s.max_batch_ms for s in sweeps] or [0.0]),
    }


async def _batch_cost(client: Any, acct: Any, archive_dir: Any, n: int,
                      batch: int) -> tuple[float, int]:
    """Redis-side µs per prune batch (EVALSHA in INFO commandstats over a sweep alone)."""
    from bench.account import SYMBOL, intent, risk_config
    from bench.gatesetup import HOLDER, TOKEN, seed
    from guardrails.keys import AccountKeys
    from guardrails.ledger import Ledger
    from guardrails.model import Admitted, Fill
    from guardrails.prune import Archive, Pruner

    keys = AccountKeys(acct)
    gate = await seed(client, acct)
    ledger = Ledger(client, keys, risk_config())
    for i in range(n):
        it = intent(i)
        d = await gate.admit(it, intent_id=it.intent_id, token=TOKEN, holder_id=HOLDER)
        assert isinstance(d, Admitted)
        await ledger.apply_fill(Fill(f"cf-{i}", d.client_order_id, SYMBOL, it.side, it.qty,
                                     it.price, ts_ms=1_700_000_000_000 + i))
    sec, usec = await client.time()
    pruner = Pruner(client, keys, Archive(archive_dir / "cost.jsonl"), retention_ms=1,
                    batch=batch)
    await client.config_resetstat()
    rep = await pruner.sweep(now_ms=int(sec) * 1000 + int(usec) // 1000 + 10)
    stats = await client.info("commandstats")
    ev = stats.get("cmdstat_evalsha", {})
    calls = int(ev.get("calls", 0)) - int(ev.get("failed_calls", 0))
    return (float(ev.get("usec", 0)) / max(1, calls), calls if rep.batches else 0)


async def redis_rows(*, quick: bool) -> list[Row]:
    from guardrails.config import PruneConfig

    seconds = 30.0 if quick else 180.0
    retention_ms = 5_000 if quick else 15_000
    rate = 300.0 if quick else 400.0
    name = "memory"
    async with workspace("memory-redis") as (tmp, _instances):
        with redis_server() as server:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(server.url)
            try:
                progress(name, f"sustained admit+fill, {rate:.0f}/s for {seconds:.0f}s, with the "
                               f"prune sweep (retention {retention_ms / 1000:.0f}s)")
                with_s: list[tuple[float, int, int, int]] = []
                pr = await _drive(client, account("mem-prune"), seconds, prune=True,
                                  retention_ms=retention_ms, rate=rate, archive_dir=tmp,
                                  samples=with_s)
            finally:
                await client.aclose()
        with redis_server() as server:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(server.url)
            try:
                progress(name, f"the same for {seconds / 3:.0f}s without pruning (the before)")
                no_s: list[tuple[float, int, int, int]] = []
                np_ = await _drive(client, account("mem-noprune"), seconds / 3, prune=False,
                                   retention_ms=retention_ms, rate=rate, archive_dir=tmp,
                                   samples=no_s)
                batch = PruneConfig().batch
                progress(name, f"Redis-side cost of one prune batch of {batch}")
                usec, calls = await _batch_cost(client, account("mem-cost"), tmp,
                                                500 if quick else 2000, batch)
                n_tomb = 1_000_000
                progress(name, f"gate admit with {n_tomb} tombstones vs none")
                tomb_p50, none_p50 = await _gate_with_tombstones(client, n_tomb,
                                                                 300 if quick else 2000)
            finally:
                await client.aclose()
    # growth after the window filled: from the first sample past 2 x retention (+ the
    # first sweeps) to the end, per order admitted meanwhile; "records" leaves out the
    # journal, which is capped (XADD MAXLEN ~100000) and still filling in a short run,
    # and the tombstones, which grow for ever by design (reported on their own)
    settle = 2 * retention_ms / 1000 + 4
    after = [x for x in with_s if x[0] >= settle]
    growth: float | None = None
    records: float | None = None
    if len(after) >= 6 and after[-1][2] > after[0][2]:
        head, tail = after[:3], after[-3:]

        def mid(xs: list[float]) -> float:
            return sorted(xs)[1]

        n_after = mid([x[2] for x in tail]) - mid([x[2] for x in head])
        growth = (mid([x[1] for x in tail]) - mid([x[1] for x in head])) / n_after
        records = (mid([x[1] - x[3] for x in tail]) - mid([x[1] - x[3] for x in head])) / n_after
    before_per_order = (np_["end"] - np_["base"]) / max(1, np_["orders"])
    per_live = pr["per_live"]
    tomb_per = pr["tomb"] / max(1, pr["pruned"])
    flat = records is not None and records < 0.05 * before_per_order
    hours = pr["orders"] / 10 / 3600
    rows = [
        Row(
            name, "Redis memory, sustained admit+fill with the prune sweep",
            f"{pr['end'] / MB:.1f} MB total after {pr['orders']} orders; after the window: "
            f"records {_b(records)}/order, total {_b(growth)}/order",
            target=REDIS_TARGET,
            status=verdict(flat),
            baseline=f"no sweep: {before_per_order:.0f} B/order, growing "
                     f"({np_['end'] / MB:.1f} MB after {np_['orders']} orders)",
            note=f"{pr['orders']} orders = {hours:.1f} h at 10 orders/s; {pr['live']} live order "
                 f"records at the end ({per_live:.0f} B each: MEMORY USAGE of the record plus its "
                 f"share of the intents and fills hashes); tombstones {tomb_per:.1f} B per pruned order "
                 f"({pr['tomb'] / 1024:.0f} KiB); the journal is capped (XADD MAXLEN ~100000): "
                 f"{pr['journal'] / MB:.1f} MB, flat once full; 'records' is used memory less "
                 f"the journal and the tombstones; retention {retention_ms} ms "
                 f"(production default 24h), sweeps back to back with batches of {200}; "
                 f"driven at up to {rate:.0f} orders/s; growth counted from {settle:.0f}s "
                 "(medians of 3 samples); 2-core machine shared with other work",
            data={"orders": pr["orders"], "used_end_bytes": pr["end"], "live_orders": pr["live"],
                  "bytes_per_live_order": round(per_live, 1),
                  "growth_bytes_per_order_after_window": growth,
                  "records_growth_bytes_per_order_after_window": records,
                  "tombstone_bytes_per_pruned_order": round(tomb_per, 2),
                  "journal_bytes": pr["journal"], "pruned": pr["pruned"],
                  "no_prune_bytes_per_order": round(before_per_order, 1),
                  "samples": [[round(t, 1), u, n, j] for t, u, n, j in with_s]},
        ),
        Row(
            name, f"Redis-side cost of one prune script ({batch} orders or fills)",
            f"{usec:.0f} µs per script (≈ {usec / batch:.1f} µs per item)",
            target="bounded: never stalls the gate for long",
            status=verdict(usec < 5000),
            baseline=f"client round trip, slowest batch in the sustained run: "
                     f"{pr['max_batch_ms']:.2f} ms",
            note=f"INFO commandstats EVALSHA over a sweep alone ({calls} scripts: order and "
                 "fill batches); 5 ms is where one script would cost more than a "
                 "1,000-symbol gate decision did before #16",
            data={"usec_per_batch": usec, "calls": calls},
        ),
        Row(
            name, f"gate admit p50 with {n_tomb:,} pruned-intent tombstones",
            f"{tomb_p50:.0f} µs",
            target="≈ the same as without (step 4b: one HGET of a bucket)",
            status=verdict(tomb_p50 < 1.2 * none_p50),
            baseline=f"no tombstones: {none_p50:.0f} µs (interleaved, same run)",
            note=f"{n_tomb // 4096 * 6} B per bucket, as after {n_tomb:,} prunes; client-side "
                 "round trip; machine shared",
            data={"p50_us_with": tomb_p50, "p50_us_without": none_p50, "tombstones": n_tomb},
        ),
    ]
    return rows


async def _gate_with_tombstones(client: Any, n_tomb: int, n: int) -> tuple[float, float]:
    """p50 (µs) of a fresh admit on an account with ``n_tomb`` tombstones, and on one
    with none, interleaved in the same run (what step 4b costs a decision)."""
    import os as _os

    from bench.account import intent
    from bench.core import p50
    from bench.gatesetup import HOLDER, TOKEN, seed
    from guardrails.keys import AccountKeys

    full, empty = account("tomb-full"), account("tomb-empty")
    gates = {"full": await seed(client, full), "empty": await seed(client, empty)}
    per_bucket = n_tomb // 4096
    keys = AccountKeys(full)
    for start in range(0, 4096, 256):
        await client.hset(keys.tombstones, mapping={
            f"{b:03x}": _os.urandom(6 * per_bucket) for b in range(start, start + 256)})
    times: dict[str, list[float]] = {"full": [], "empty": []}
    for i in range(n):
        for name, gate in gates.items():
            it = intent(2 * i + (name == "full"))
            t0 = time.perf_counter()
            await gate.admit(it, intent_id=f"{name}-{it.intent_id}", token=TOKEN,
                             holder_id=HOLDER)
            times[name].append((time.perf_counter() - t0) * 1e6)
    return p50(times["full"]), p50(times["empty"])
