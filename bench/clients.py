"""The gate's decision through other asyncio Redis clients, beside redis-py (issue 16).

Why: "keep the client choice honest" — if another client is faster for THIS workload, the
table shows it before anyone changes the gate's client. The workload is the real gate
decision: ``gate_admit.lua`` with the keys and arguments of a fresh intent
(``gatesetup.call_args``, what ``OrderGate.admit`` sends), on one redis-server, through:

1. redis-py: ``execute_command('EVALSHA', ...)`` (the gate's fallback path),
2. the gate's own path: ``OrderGate.admit`` on a plain client (``guardrails/gatewire.py``),
3. coredis: its ``evalsha`` (after its own ``script_load``),
4. valkey-glide: its ``invoke_script`` (EVALSHA, loading the script on NOSCRIPT),

each beside a PING through the same client (the gate's: a PING on its wire). Phase 1:
one call at a time, interleaved round by round, the order inside a round rotating, so
drift on the shared machine lands on every client alike: p50 / p99. Phase 2: 64
concurrent tasks on one client, rounds alternating kind by kind, median round: calls/s.
For clients 1, 3 and 4 the keys and arguments are built (as bytes) before the timer
starts, so the time is the client's alone; the gate's figure includes its own Python
(checks, packing, mapping the reply).

Invariant kept: a figure is only ever a count of real admissions — every reply's code
is checked to be 0 (admitted) and every intent is fresh; a client that errs or is
denied even once has a broken row (``not measured``, with its error count), never a
number. A client that is not installed (``pip install -e '.[bench]'``) is ``not
measured`` too.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import itertools
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis.asyncio as aioredis

from bench import gatesetup
from bench.account import account, available, intent
from bench.core import INFO, Row, fmt_pair, not_measured, p50, p99, progress, redis_server

NAME = "clients"
CONCURRENCY = 64
_WIRE_PING = b"*1\r\n$4\r\nPING\r\n"
_GIVE_UP = 20
"""A client with this many errors leaves the remaining rounds (its row is broken anyway)."""


def admitted(reply: object) -> bool:
    """True when ``reply`` is gate_admit.lua's answer to a batch of one FRESH admission: a
    list of one 9-element list with code 0 and the duplicate flag 0. Anything else (a
    denial's code, a duplicate, an error, a shape another client decoded differently) is
    not one."""
    if not isinstance(reply, list | tuple) or len(reply) != 1:
        return False
    reply = reply[0]
    if not isinstance(reply, list | tuple) or len(reply) != 9:
        return False
    code, duplicate = reply[0], reply[1]
    return all(isinstance(x, int) and not isinstance(x, bool) and x == 0
               for x in (code, duplicate))


def pong(reply: object) -> bool:
    return reply in (True, b"PONG", "PONG")


Prepared = Any
"""What a client's decision needs, built before the timer: (keys, args) or an Intent."""


@dataclass
class Subject:
    """One client under test: its PING and its decision, both checked."""

    name: str
    what: str
    """What is called, for the row's note."""
    ping: Callable[[], Awaitable[None]]
    decide: Callable[[Prepared], Awaitable[None]]
    prepare: Callable[[int], Prepared]
    missing: str | None = None
    errors: int = 0
    first_error: str = ""
    calls: int = 0
    conn_name: str = ""
    """Its connections' CLIENT SETNAME (connections are counted after the concurrent phase)."""
    connections: int = 0
    lat: dict[str, list[float]] = field(default_factory=lambda: {"ping": [], "decide": []})
    rate: dict[str, list[float]] = field(default_factory=lambda: {"ping": [], "decide": []})
    cpu: list[tuple[float, float]] = field(default_factory=list)
    """(this process, redis-server) CPU, % of one core, in each concurrent decision round."""

    def failed(self, e: BaseException) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = f"{type(e).__name__}: {e}"[:200]

    @property
    def usable(self) -> bool:
        return self.missing is None and self.errors < _GIVE_UP

    def broken(self) -> str | None:
        """Why this client has no figures, or None."""
        if self.missing is not None:
            return self.missing
        if self.errors:
            return (f"broken: {self.errors} error(s) in {self.calls} calls (first: "
                    f"{self.first_error})")
        return None


class NotAdmitted(RuntimeError):
    """A decision's reply was not an admission (a fresh intent must be admitted)."""


def _missing(module: str, package: str) -> str | None:
    """None if ``module`` (PyPI ``package``) imports, else why not, for a NOT MEASURED row."""
    if importlib.util.find_spec(module) is None:
        return (f"{package} is not installed (the bench extra: pip install -e '.[bench]', as "
                "`make bench` does)")
    return available(module)


def _script_subject(name: str, what: str, ping: Callable[[], Awaitable[object]],
                    evalsha: Callable[[list[bytes], list[bytes]], Awaitable[object]],
                    prepare: Callable[[int], Prepared], conn_name: str) -> Subject:
    """A client calling the gate's script with prepared (keys, args), each reply checked."""

    async def checked_ping() -> None:
        if not pong(await ping()):
            raise NotAdmitted(f"{name} PING did not PONG")

    async def decide(p: Prepared) -> None:
        reply = await evalsha(*p)
        if not admitted(reply):
            raise NotAdmitted(f"{name}: the decision was not an admission: {reply!r}"[:200])

    return Subject(name, what, checked_ping, decide, prepare, conn_name=conn_name)


def _absent(name: str, why: str) -> Subject:
    async def never(*_: object) -> None:
        raise NotAdmitted(f"{name} is not measured: {why}")

    return Subject(name, "", never, never, lambda i: i, missing=why)


async def _subjects(stack: contextlib.AsyncExitStack, url: str, port: int,
                    client: aioredis.Redis, gate: Any) -> list[Subject]:
    """The four clients, connected (each closed by ``stack``), or marked missing."""
    sha: str = gate._script.sha
    text: str = gate._script.script
    nkeys = b"%d" % len(gatesetup.call_args(gate, 0)[0])

    def raw(i: int) -> Prepared:
        return gatesetup.call_args(gate, i)

    wire = gate._wire

    async def wire_ping() -> None:
        if await wire.call(_WIRE_PING) != b"PONG":
            raise NotAdmitted("PING on the gate's wire did not PONG")

    async def gate_decide(it: Prepared) -> None:
        await gatesetup.admit(gate, it)

    subjects = [
        _script_subject(
            "redis-py", "redis.asyncio execute_command('EVALSHA', ...), the gate's fallback "
            "path; PING: client.ping()", client.ping,
            lambda k, a: client.execute_command("EVALSHA", sha, nkeys, *k, *a), raw,
            client.connection_pool.connection_kwargs.get("client_name") or ""),
        Subject("gate", "OrderGate.admit on a plain client: its own pipelined connection "
                "(guardrails/gatewire.py); PING: pre-packed bytes on that connection",
                wire_ping, gate_decide, intent,
                missing=None if wire is not None else "the gate has no wire on this client"),
    ]

    missing = _missing("coredis", "coredis")
    if missing is None:
        import coredis

        cd: Any = await stack.enter_async_context(
            coredis.Redis.from_url(url, client_name="bench-coredis"))
        loaded = await cd.script_load(text)
        if (loaded.decode() if isinstance(loaded, bytes) else loaded) != sha:
            raise RuntimeError(f"coredis script_load gave sha {loaded!r}, expected {sha}")
        subjects.append(_script_subject(
            "coredis", f"coredis {coredis.__version__} Redis.evalsha (after its script_load); "
            "PING: client.ping()", cd.ping, lambda k, a: cd.evalsha(sha, k, a), raw,
            "bench-coredis"))
    else:
        subjects.append(_absent("coredis", missing))

    missing = _missing("glide", "valkey-glide")
    if missing is None:
        from importlib.metadata import version

        import glide

        config = glide.GlideClientConfiguration([glide.NodeAddress("127.0.0.1", port)],
                                                client_name="bench-glide")
        gl: Any = await glide.GlideClient.create(config)
        stack.push_async_callback(gl.close)
        script = glide.Script(text)
        if script.get_hash() != sha:
            raise RuntimeError(f"glide Script hash {script.get_hash()}, expected {sha}")
        subjects.append(_script_subject(
            "valkey-glide", f"valkey-glide {version('valkey-glide')} GlideClient.invoke_script "
            "(EVALSHA, SCRIPT LOAD on NOSCRIPT); PING: client.ping()", gl.ping,
            lambda k, a: gl.invoke_script(script, k, a), raw, "bench-glide"))
    else:
        subjects.append(_absent("valkey-glide", missing))
    return subjects


async def _sequential(subjects: list[Subject], counter: itertools.count[int], rounds: int,
                      warmup: int) -> None:
    """Phase 1: one call at a time, every (client, PING | decision) once per round, the
    order rotating round by round."""
    kinds = [(s, k) for s in subjects if s.usable for k in ("ping", "decide")]
    for r in range(-warmup, rounds):
        shift = r % len(kinds)
        for s, kind in kinds[shift:] + kinds[:shift]:
            if not s.usable:
                continue
            prepared = s.prepare(next(counter)) if kind == "decide" else None
            t = time.perf_counter_ns()
            try:
                s.calls += 1
                await (s.decide(prepared) if kind == "decide" else s.ping())
            except Exception as e:  # a broken client is a broken row, not a crash
                s.failed(e)
                continue
            d = (time.perf_counter_ns() - t) / 1e6
            if r >= 0:
                s.lat[kind].append(d)
        if r > 0 and r % 1000 == 0:
            progress(NAME, f"{r}/{rounds} sequential rounds")


async def _concurrent(s: Subject, kind: str, counter: itertools.count[int], count: int,
                      info: aioredis.Redis) -> float:
    """``count`` calls of ``kind`` over CONCURRENCY tasks on ``s``'s client: calls/s (0.0
    when any failed; the failures are counted on ``s``). ``info`` reads redis-server's CPU
    before and after (outside the timed window)."""
    work = ([s.prepare(next(counter)) for _ in range(count)] if kind == "decide"
            else [None] * count)
    it = iter(work)
    ok = True

    async def worker() -> None:
        nonlocal ok
        for prepared in it:
            if not s.usable:
                break
            s.calls += 1
            try:
                await (s.decide(prepared) if kind == "decide" else s.ping())
            except Exception as e:
                s.failed(e)
                ok = False

    me = psutil.Process()
    r0 = await _redis_cpu(info)
    c0, t = sum(me.cpu_times()[:2]), time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(CONCURRENCY):
            tg.create_task(worker())
    wall = time.perf_counter() - t
    c1 = sum(me.cpu_times()[:2])
    if kind == "decide":
        s.cpu.append((100 * (c1 - c0) / wall, 100 * (await _redis_cpu(info) - r0) / wall))
    return count / wall if ok else 0.0


async def _redis_cpu(client: aioredis.Redis) -> float:
    """redis-server's user + sys CPU seconds so far (INFO cpu)."""
    cpu = await client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _throughput(subjects: list[Subject], counter: itertools.count[int], rounds: int,
                      per_round: int, info: aioredis.Redis) -> None:
    """Phase 2: rounds alternate kind by kind (the order rotating), each CONCURRENCY tasks."""
    kinds = [(s, k) for s in subjects if s.usable for k in ("ping", "decide")]
    for s, kind in kinds:  # warm-up: pools grow their connections, scripts are cached
        await _concurrent(s, kind, counter, 500, info)
    for r in range(rounds):
        shift = (2 * r) % len(kinds)
        for s, kind in kinds[shift:] + kinds[:shift]:
            if s.usable:
                s.rate[kind].append(await _concurrent(s, kind, counter, per_round, info))
        progress(NAME, f"concurrent round {r + 1}/{rounds}: " + ", ".join(
            f"{s.name} {statistics.median(s.rate['decide']):,.0f}/s" for s in subjects
            if s.rate["decide"]))


def rows_for(subjects: list[Subject], *, rounds: int, rate_rounds: int, per_round: int,
             inside_us: float) -> list[Row]:
    """The table's rows: per client, decision p50 / p99 and admits/s, each with its ratio
    to redis-py's PING and to the gate's path; a broken or missing client's rows are
    ``not measured``."""
    by = {s.name: s for s in subjects}
    rp, gate = by["redis-py"], by["gate"]
    if rp.broken() is not None:
        why = f"redis-py, the baseline, is {rp.broken()}"
        return [not_measured(NAME, f"{s.name}: decision p50 / p99", "", why) for s in subjects]
    ping50, ping99 = p50(rp.lat["ping"]), p99(rp.lat["ping"])
    ping_rate = statistics.median(rp.rate["ping"])
    gate_ok = gate.broken() is None
    g50 = p50(gate.lat["decide"]) if gate_ok else 0.0
    g_rate = statistics.median(gate.rate["decide"]) if gate_ok else 0.0
    rows = [Row(NAME, "redis-py PING p50 / p99; PING/s at 64 concurrent (baseline)",
                f"{fmt_pair(ping50, ping99)}; {ping_rate:,.0f}/s", status=INFO,
                note="redis.asyncio PING on the client whose execute_command path row 1 "
                "times (64 concurrent: a pool of up to 64 connections)",
                data={"ping_p50_ms": ping50, "ping_p99_ms": ping99, "ping_rate": ping_rate})]
    for s in subjects:
        why = s.broken()
        if why is not None:
            rows.append(not_measured(NAME, f"{s.name}: decision p50 / p99", "", why))
            rows.append(not_measured(NAME, f"{s.name}: admits/s at {CONCURRENCY} concurrent",
                                     "", why))
            continue
        d50, d99 = p50(s.lat["decide"]), p99(s.lat["decide"])
        own50, own99 = p50(s.lat["ping"]), p99(s.lat["ping"])
        rate, own_rate = statistics.median(s.rate["decide"]), statistics.median(s.rate["ping"])
        vs_gate = f", {d50 / g50:.2f}× gate" if gate_ok and s is not gate else ""
        rows.append(Row(
            NAME, f"{s.name}: decision p50 / p99",
            f"{fmt_pair(d50, d99)}  ({d50 / ping50:.2f}× redis-py PING{vs_gate})",
            baseline=f"own PING {fmt_pair(own50, own99)} ({own50 / ping50:.2f}× redis-py PING)",
            status=INFO,
            note=f"{s.what}; {rounds} interleaved rounds of every client's PING and decision "
            f"(order rotating), each decision a fresh intent admitted (reply code 0 checked); "
            f"inside Redis (INFO commandstats, mean over all clients and both phases): "
            f"{inside_us:.0f} µs per decision",
            data={"decide": _summary(s.lat["decide"]), "ping": _summary(s.lat["ping"]),
                  "ratio_p50_vs_redis_py_ping": round(d50 / ping50, 3),
                  "ratio_p50_vs_gate": round(d50 / g50, 3) if gate_ok else None},
        ))
        vs_gate_rate = f", {rate / g_rate:.2f}× gate" if gate_ok and s is not gate else ""
        rows.append(Row(
            NAME, f"{s.name}: admits/s at {CONCURRENCY} concurrent",
            f"{rate:,.0f}/s  ({rate / ping_rate:.2f}× redis-py PING{vs_gate_rate})",
            baseline=f"own PING {own_rate:,.0f}/s",
            status=INFO,
            note=f"{CONCURRENCY} tasks on one client{_connections(s)}; {rate_rounds} rounds of "
            f"{per_round} calls per kind, alternating, median round; every decision admitted; "
            f"CPU in the decision rounds (% of one core, median): this process "
            f"{statistics.median(c for c, _ in s.cpu):.0f} %, redis-server "
            f"{statistics.median(r for _, r in s.cpu):.0f} %",
            data={"decide_rates": [round(x) for x in s.rate["decide"]],
                  "ping_rates": [round(x) for x in s.rate["ping"]],
                  "ratio_vs_redis_py_ping": round(rate / ping_rate, 3),
                  "ratio_vs_gate": round(rate / g_rate, 3) if gate_ok else None,
                  "cpu_pct_median": {
                      "client": round(statistics.median(c for c, _ in s.cpu), 1),
                      "redis": round(statistics.median(r for _, r in s.cpu), 1)},
                  "connections": s.connections},
        ))
    return rows


def _connections(s: Subject) -> str:
    if s.name == "gate":
        return " (all on the gate's one pipelined connection)"
    if s.name == "redis-py":
        return f" ({s.connections} connections open after the run, the gate's wire among them)"
    return f" ({s.connections} connection(s) open after the run)" if s.conn_name else ""


def _summary(xs: list[float]) -> dict[str, float]:
    return {"n": len(xs), "p50_ms": round(p50(xs), 4), "p99_ms": round(p99(xs), 4)}


async def run(*, quick: bool) -> list[Row]:
    rounds, warmup = (1_000, 200) if quick else (5_000, 300)
    rate_rounds, per_round = (3, 2_000) if quick else (5, 5_000)
    why = available("guardrails.gate")
    if why:
        return [not_measured(NAME, "(all)", "", why)]
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True,
                                         client_name="bench-redis-py")
        try:
            async with contextlib.AsyncExitStack() as stack:
                gate = await gatesetup.seed(client, account())
                counter = itertools.count()
                await gatesetup.admit(gate, intent(next(counter)))  # loads the script
                subjects = await _subjects(stack, server.url, server.port, client, gate)
                await client.config_resetstat()  # inside-Redis µs: both phases, all clients
                admitted0 = int(await client.hget(gate._keys.stats, "admitted") or 0)
                progress(NAME, f"{rounds} sequential rounds (+{warmup} warm-up) of "
                         + ", ".join(s.name for s in subjects if s.usable))
                await _sequential(subjects, counter, rounds, warmup)
                progress(NAME, f"{rate_rounds} concurrent rounds of {per_round} calls per kind")
                await _throughput(subjects, counter, rate_rounds, per_round, client)
                stats = await client.info("commandstats")
                decisions = int(await client.hget(gate._keys.stats, "admitted") or 0) - admitted0
                named = [c.get("name", "") for c in await client.client_list()]
                for s in subjects:
                    s.connections = named.count(s.conn_name) if s.conn_name else 0
        finally:
            await client.aclose()
    # per decision, not per EVALSHA: the gate's own path batches concurrent decisions
    # (every decision here is a fresh admission, counted by the script)
    inside = float(stats.get("cmdstat_evalsha", {}).get("usec", 0.0)) / max(1, decisions)
    return rows_for(subjects, rounds=rounds, rate_rounds=rate_rounds, per_round=per_round,
                    inside_us=inside)
