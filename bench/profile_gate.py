"""Where a gate decision spends its time — ``python -m bench.profile_gate [--instructions] [N]``.

Not part of the ``make bench`` table: a diagnostic for the gate's owner.

1. **Inside Redis, step by step.** Copies of ``gate_admit.lua`` cut short at each
   documented step (``do return {0} end`` inserted before the step's comment, and
   before each write of step 12) are run on one redis-server, rotating variant by
   variant in rounds of N pipelined admissions of fresh intents; each variant's time is
   ``INFO commandstats`` µs per EVALSHA, the minimum over the rounds. A step's cost is
   the difference from the cut before it. Wall time moves with the machine's load;
   ``--instructions`` runs redis-server under ``valgrind --tool=callgrind`` instead and
   reports instructions per call, which are repeatable whatever the load (about
   564,000 per admission with redis-server 7.0.15, 3 December 2026; every variant is
   loaded and compiled before anything is counted).
   Then the whole script deciding in batches of 1, 2, 4, 8 and 16 (what the gate wire
   sends when decisions meet in one event-loop turn): instructions or µs per decision.
   ``--wall [ROUNDS]`` instead takes a lone decision's wall time apart by layer (the
   PINGs, the request's framing, the script on the wire, the gate's Python): ``wall``.
2. **In the client**: the Python parts of ``OrderGate.admit`` timed one by one
   (``timeit``): redis-py packing the EVALSHA's keys and arguments (the
   ``execute_command`` path) against packing a PING, and the gate wire's own packing
   (``OrderGate._parts`` + ``pack_batch``, the path a plain client takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

from bench import gatesetup
from bench.account import account, intent, risk_config
from bench.core import redis_server
from guardrails.infra.server import RedisProcess
from guardrails.model import client_order_id_for, intent_args
from guardrails.scripts import source as lua_source

_STEP = re.compile(r"^  -- (\d+[a-z]?(?:-\d+)?)\. (.*)$", re.MULTILINE)
_WRITE = re.compile(r"^  (journal_add\(|redis\.call\('(\w+)', (K_\w+))", re.MULTILINE)


def variants() -> list[tuple[str, str]]:
    """(label, script text): the gate cut short before each step and write, then whole."""
    src = lua_source("gate_admit.lua")
    body_at = src.index("\nlocal function admit(K, A")
    cuts: list[tuple[int, str]] = [(src.index("\n", body_at + 1) + 1, "(entered admit: KEYS/ARGV bound)")]
    for m in _STEP.finditer(src, body_at):
        cuts.append((m.start(), f"before step {m.group(1)}: {m.group(2)[:48]}"))
    writes_at = src.index("  -- 12. reserve", body_at)
    for m in _WRITE.finditer(src, writes_at):
        what = "journal XADD" if m.group(1).startswith("journal") else f"{m.group(2)} {m.group(3)}"
        cuts.append((m.start(), f"before write: {what}"))
    cuts.sort()
    out = [("EVALSHA of 'return {0}' (same keys and arguments)", "return {0}"),
           ("script prologue (libraries, helpers)", src[:body_at] + "\ndo return {0} end\n" + src[body_at:])]
    out += [(label, src[:at] + "  do return {0} end\n" + src[at:]) for at, label in cuts]
    out.append(("whole admission", src))
    return out


async def inside_redis(n: int, rounds: int, instructions: bool) -> None:
    vs = variants()
    with contextlib.ExitStack() as stack:
        if instructions:
            if not shutil.which("valgrind"):
                raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
            url, pid, out = stack.enter_context(_callgrind_server())
        else:
            server = stack.enter_context(redis_server())
            url, pid, out = server.url, 0, ""
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            gate = await gatesetup.seed(client, account())
            for i in range(300):  # warm-up through the real gate
                await gatesetup.admit(gate, intent(i))
            scripts = [client.register_script(text) for _, text in vs]
            counter = itertools.count(10_000)
            for script in scripts:  # loaded and compiled before anything is counted
                keys, args = gatesetup.call_args(gate, next(counter))
                await script(keys=keys, args=args)
            best: list[float] = [float("inf")] * len(vs)
            for _ in range(1 if instructions else rounds):
                for v, script in enumerate(scripts):
                    if instructions:
                        _callgrind(pid, "-i", "on")
                    else:
                        await client.config_resetstat()
                    pipe = client.pipeline(transaction=False)
                    for _ in range(n):
                        keys, args = gatesetup.call_args(gate, next(counter))
                        await script(keys=keys, args=args, client=pipe)
                    replies = await pipe.execute()
                    # a cut inside a decision answers [[0]], one before it [0]
                    if any(int(r[0][0] if isinstance(r[0], list) else r[0]) != 0
                           for r in replies):
                        raise SystemExit(f"{vs[v][0]}: a call was denied: {replies[0]}")
                    if instructions:
                        _callgrind(pid, "-i", "off")
                        _callgrind(pid, "-d", f"v{v}")
                        best[v] = _last_dump_total(out) / n
                    else:
                        stats = await client.info("commandstats")
                        best[v] = min(best[v], float(stats["cmdstat_evalsha"]["usec_per_call"]))
            per_batch = await _batches(client, gate, counter, n, rounds, pid, out, instructions)
        finally:
            await client.aclose()
    unit = "instructions per call" if instructions else f"µs per call (min of {rounds} rounds)"
    print(f"inside Redis, {n} pipelined admissions per variant (each a batch of one), {unit}:")
    prev = 0.0
    for (label, _), value in zip(vs, best, strict=True):
        fmt_v = f"{value:9.0f}" if instructions else f"{value:7.1f}"
        delta = f"{value - prev:+9.0f}" if instructions else f"{value - prev:+7.1f}"
        print(f"  {fmt_v}  {delta}  {label}")
        prev = value
    unit = "instructions" if instructions else "µs (min of rounds)"
    print(f"the whole script, per DECISION by batch size (decisions per EVALSHA), {unit}:")
    for size, value in per_batch.items():
        print(f"  {value:9.0f}  batch of {size}" if instructions else f"  {value:7.1f}  batch of {size}")


BATCH_SIZES = (1, 2, 4, 8, 16)


async def _batches(client: aioredis.Redis, gate: object, counter: itertools.count[int], n: int,
                   rounds: int, pid: int, out: str, instructions: bool) -> dict[int, float]:
    """The real script (``gate.pack_batch``'s layout) deciding about ``n`` fresh intents in
    batches of each size: instructions or inside-Redis µs per decision."""
    sha: str = gate._script.sha  # type: ignore[attr-defined]
    result: dict[int, float] = {}
    for size in BATCH_SIZES:
        calls = max(1, n // size)
        best = float("inf")
        for _ in range(1 if instructions else rounds):
            pipe = client.pipeline(transaction=False)
            for _ in range(calls):
                keys, args = gatesetup.call_args(gate, next(counter))
                for _ in range(size - 1):  # the decisions' own (day, order) keys and args
                    k, a = gatesetup.call_args(gate, next(counter))
                    keys, args = keys + k[-2:], args + a[2:]
                pipe.evalsha(sha, len(keys), *keys, *args)
            if instructions:
                _callgrind(pid, "-i", "on")
            else:
                await client.config_resetstat()
            replies = await pipe.execute()
            if not all(int(d[0]) == 0 for r in replies for d in r):
                raise SystemExit(f"batch of {size}: a decision was denied: {replies[0]}")
            if instructions:
                _callgrind(pid, "-i", "off")
                _callgrind(pid, "-d", f"b{size}")
                best = _last_dump_total(out) / (calls * size)
            else:
                stats = await client.info("commandstats")
                best = min(best, float(stats["cmdstat_evalsha"]["usec_per_call"]) / size)
        result[size] = best
    return result


@contextlib.contextmanager
def _callgrind_server() -> Iterator[tuple[str, int, str]]:
    """A redis-server (the one launcher, no persistence) under callgrind, instrumentation
    off until ``_callgrind(pid, "-i", "on")``: (url, pid, callgrind output file)."""
    with tempfile.TemporaryDirectory(prefix="gr-callgrind-") as workdir:
        out = os.path.join(workdir, "callgrind.out")
        server = RedisProcess(aof=False, wrapper=[
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--instr-atstart=no"])
        try:
            server.start(timeout=120)
            assert server.proc is not None
            yield server.url, server.proc.pid, out
        finally:
            server.stop()


def _callgrind(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _last_dump_total(out: str) -> int:
    """The event total of the newest callgrind dump (its ``totals:`` line)."""
    for _ in range(50):
        dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
        if dumps:
            with open(dumps[-1]) as f:
                # 'totals:' is the dump's own count ('summary:' may be 0 when instrumentation
                # was switched on and off inside the dump's interval)
                totals = [int(line.split()[1]) for line in f if line.startswith("totals:")]
            if totals:
                os.remove(dumps[-1])
                return totals[-1]
        time.sleep(0.1)
    raise SystemExit("callgrind wrote no dump")


def in_client() -> None:
    conn = Connection()
    it = intent(1)
    keys = [f"gr:{{paper:bench}}:key{i}" for i in range(16)]
    args: list[str | int] = [1, 0, 1, "bench-holder", "bench-1", "c" * 32, "BTC-USD", "buy",
                             "0.0100", "60000.00", 0, "2026-11-22"]
    from guardrails.tradingday import TradingDay

    day = TradingDay("UTC", None)
    from guardrails.gate import OrderGate
    from guardrails.keys import AccountKeys

    gate = OrderGate(aioredis.Redis(), AccountKeys(account()), risk_config())
    gate._bind("2026-11-22", 1, "bench-holder", 0)
    coid = client_order_id_for("bench-1")
    parts = [
        ("TradingDay.today()", lambda: day.today()),
        ("client_order_id_for()", lambda: client_order_id_for("bench-1")),
        ("intent_args() (shape checks, qty and price strings)", lambda: intent_args(it)),
        ("pack EVALSHA, 16 keys + 12 args", lambda: conn.pack_command("EVALSHA", "a" * 40, 16,
                                                                      *keys, *args)),
        ("pack PING", lambda: conn.pack_command("PING")),
        ("OrderGate._parts + pack_batch of one (the gate wire's EVALSHA bytes)",
         lambda: gate.pack_batch(*([part] for part in gate._parts(
             "bench-1", coid, it, "0.0100", "60000.00", False)))),
    ]
    print("in the client (µs per call, timeit):")
    for name, fn in parts:
        n = 20_000
        print(f"  {timeit.timeit(fn, number=n) / n * 1e6:7.1f}  {name}")


def main() -> None:
    argv = sys.argv[1:]
    if "--wall" in argv:
        rest = [a for a in argv if a != "--wall"]
        asyncio.run(wall(int(rest[0]) if rest else 3000))
        return
    instructions = "--instructions" in argv
    rest = [a for a in argv if a != "--instructions"]
    n = int(rest[0]) if rest else (100 if instructions else 200)
    asyncio.run(inside_redis(n, rounds=8, instructions=instructions))
    in_client()


_PING = b"*1\r\n$4\r\nPING\r\n"


async def wall(rounds: int) -> None:
    """A lone decision's wall time taken apart, one layer at a time, interleaved round by
    round (order rotating) on one redis-server: redis-py's PING; a PING on the gate's
    wire; the gate's EVALSHA bytes with a ``return {0}`` script (the request's size and
    framing); the real script's EVALSHA bytes on the wire (no gate Python); the whole
    ``OrderGate.admit``. Each layer's p50 minus the one before is what it adds."""
    from guardrails.gatewire import pack

    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            gate = await gatesetup.seed(client, account())
            for i in range(300):
                await gatesetup.admit(gate, intent(i))
            wire = gate._wire
            if wire is None:
                raise SystemExit("the gate has no wire on this client")
            empty = (await client.script_load("return {0}")).encode()
            real = gate._script.sha.encode()
            counter = itertools.count(10_000)

            def raw(sha: bytes) -> bytes:
                keys, args = gatesetup.call_args(gate, next(counter))
                return pack(b"EVALSHA", sha, b"%d" % len(keys), *keys, *args)

            layers = ["redis-py PING", "PING on the gate's wire", "EVALSHA return {0} (wire)",
                      "EVALSHA gate_admit (wire)", "OrderGate.admit"]
            got: dict[str, list[float]] = {k: [] for k in layers}
            for r in range(rounds):
                for k in layers[r % 5:] + layers[:r % 5]:
                    it = intent(next(counter))
                    data = raw(empty if "{0}" in k else real)
                    t = time.perf_counter()
                    if k == layers[0]:
                        await client.ping()
                    elif k == layers[1]:
                        await wire.call(_PING)
                    elif k == layers[4]:
                        await gatesetup.admit(gate, it)
                    else:
                        await wire.call(data)
                    got[k].append((time.perf_counter() - t) * 1e6)
        finally:
            await client.aclose()
    base = sorted(got[layers[0]])[rounds // 2]
    print(f"a lone decision, {rounds} interleaved rounds, p50 µs (ratio to redis-py's PING):")
    prev = None
    for k in layers:
        v = sorted(got[k])[rounds // 2]
        step = "" if prev is None else f"  {v - prev:+6.1f}"
        print(f"  {v:7.1f}  {v / base:5.2f}×{step}  {k}")
        prev = v


if __name__ == "__main__":
    main()
