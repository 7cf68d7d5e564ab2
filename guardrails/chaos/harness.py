"""The chaos run: real processes, real Redis, real venue, faults from a seed.

Layout of one run (everything under one work directory, kept for inspection):

    redis-server (AOF)  <-- proxy 0 <-- guardrails run --standby  (instance 0)
                        <-- proxy 1 <-- guardrails run --standby  (instance 1)
                        <-- proxy k <-- guardrails run --standby  (instance k)
    guardrails venue serve (HTTP exchange simulator, JSONL record)  <-- every instance

With ``--redis sentinel`` Redis is a primary + replica + three sentinels
(``redisha.SentinelRedis``) and every instance connects through the sentinels (no
proxies: the proxy kinds are left out of the schedule).

After a fault that loses the account's history (``flushall``, ``redis_wipe``) the harness
waits until the instances refuse (the fence alarm is set), then runs ``guardrails fence
recover --above N`` like an operator would, N being the highest token in the venue's
record. The lost history is kept for the checker: a ``flushall`` empties database 0 with
one ``SWAPDB 0 k`` (the old keys land in database k, out of every instance's reach), a
``redis_wipe`` restarts the server in a fresh data directory and keeps the old one; the
checker reads every history, oldest first.

Phases: start → wait until the account trades (the fault clock starts) → faults
(``faults.schedule``) → settle (undo everything, restart what is dead, wait until
admissions resume: the active instance reconciled) → quiesce (kill switch HALTED: the
active instance cancels what rests at the venue) → handover (SIGTERM the active: a
standby must take over and reconcile) → stop the rest gracefully → run the independent
checker → report. Anything that goes wrong outside the invariants (an instance that
crashes, one that ignores SIGTERM, no recovery) is a run *problem*: it fails the run.

The harness reads Redis only to *aim* faults (who holds the lease now) and to know
when the system settled; the verdict comes from ``checker`` alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from guardrails import redacted, scripts
from guardrails.chaos import checker, faults, report
from guardrails.chaos.proxy import ChaosProxy
from guardrails.chaos.redisha import SentinelRedis
from guardrails.chaos.venue import VenueProcess
from guardrails.config import Config, load_config
from guardrails.infra import connect
from guardrails.infra.server import RedisProcess, free_port
from guardrails.keys import AccountId, AccountKeys
from guardrails.prune import default_archive_path

_REDIS_DOWN: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
"""What a read of the run's Redis raises while it restarts (a stale pooled connection):
the harness's own reads retry on these; anything else is a bug and propagates."""

log = logging.getLogger("guardrails.chaos")

ACCOUNT_VENUE = "sim"
TTL_S = 3.0
SETTLE_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 20.0
BOOT_TIMEOUT_S = 90.0
REFUSAL_TIMEOUT_S = 30.0
"""After a history loss: how long the instances get to refuse (set the fence alarm)."""
RECONCILE_WAIT_S = 5.0
"""After a takeover: time for the new active instance to reconcile and pump fills."""
HTTP_KEY = "0x" + "4c" * 32
"""A throwaway signing key for the simulator's account (test-only, not a secret). A
signing venue's account is its signer's address, so the account id derives from it."""
CCXT_KEY, CCXT_SECRET = "chaos-api-key", "chaos-" + "5e" * 24
"""Throwaway Binance-simulator credentials of ``--venue ccxt`` (test-only, not secrets)."""
VENUES = ("http", "ccxt")
"""``http``: the EIP-712 HTTP venue; ``ccxt``: the ccxt venue on the Binance simulator."""

_CCXT_VENUE = """[venue]
kind = "ccxt"
exchange = "binance"
url = "{venue_url}"
api_key_env = "GUARDRAILS_CHAOS_CCXT_KEY"
secret_env = "GUARDRAILS_CHAOS_CCXT_SECRET"
enable_rate_limit = false
request_timeout = "1s"
"""

CONFIG_TEMPLATE = """\
# Written by the chaos harness (guardrails/chaos/harness.py) for one run.
[account]
venue = "{account_venue}"
id = "{account_id}"

[redis]
url = "{redis_url}"
socket_timeout = "1s"
{redis_extra}
[lease]
ttl = "3s"
renew_deadline = "2s"
renew_interval = "500ms"
drift_margin = "100ms"

[risk]
quote_decimals = 6
timezone = "UTC"
max_order_notional = "2500"
max_gross_exposure = "20000"
daily_loss_limit = "40"
price_band = "0.02"
orders_per_second = "12"
burst = 12

[risk.instruments.BTC-USD]
tick = "0.01"
lot = "0.0001"
max_position = "0.02"

[risk.instruments.ETH-USD]
tick = "0.01"
lot = "0.001"
max_position = "0.3"

[venue]
kind = "http"
url = "{venue_url}"
key_env = "GUARDRAILS_CHAOS_HTTP_KEY"
request_timeout = "1s"

[venue.simulator]
kind = "paper"
seed = {seed}
step = "250ms"
volatility = "0.0015"
start_prices = {{ BTC-USD = "60000.00", ETH-USD = "3000.00" }}

# Crossing buys outpace crossing sells: the BTC position presses against max_position.
[[strategies]]
name = "btc-buyer"
module = "strategies.looper:Looper"
[strategies.params]
symbol = "BTC-USD"
qty = "0.002"
interval = "250ms"
side = "buy"
offset = "0.001"

[[strategies]]
name = "btc-seller"
module = "strategies.looper:Looper"
[strategies.params]
symbol = "BTC-USD"
qty = "0.002"
interval = "600ms"
side = "sell"
offset = "0.001"

# Resting ETH orders on both sides: some rest, some fill as the walk crosses them.
[[strategies]]
name = "eth-rester"
module = "strategies.looper:Looper"
[strategies.params]
symbol = "ETH-USD"
qty = "0.02"
interval = "400ms"
side = "alternate"
offset = "-0.0005"

[runtime]
heartbeat_interval = "1s"
heartbeat_ttl = "5s"
"""


@dataclass
class RunOptions:
    duration_s: float
    seed: int
    instances: int
    report_path: Path
    workdir: Path
    venue: str = "http"
    """One of ``VENUES``."""
    redis_mode: str = "single"
    """One of ``faults.REDIS_MODES``: one server behind proxies, or Sentinel."""


@dataclass
class Instance:
    """One ``guardrails run`` process slot (restarted in place after a SIGKILL)."""

    index: int
    proxy: ChaosProxy | None
    """The instance's TCP proxy to Redis (none with Sentinel: it follows the master)."""
    redis_url: str
    config: Path
    logdir: Path
    generation: int = 0
    proc: asyncio.subprocess.Process | None = None
    paused: bool = False
    starts: list[float] = field(default_factory=list)

    @property
    def instance_id(self) -> str:
        return f"chaos-{self.index}.{self.generation}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, env: dict[str, str]) -> None:
        self.generation += 1
        args = [
            sys.executable, "-m", "guardrails", "run",
            "--config", str(self.config),
            "--redis-url", self.redis_url,
            "--instance-id", self.instance_id,
            # Every copy is a deliberate extra one: the host lock refuses a plain copy while
            # any copy of the account runs, and instances are SIGKILLed and restarted here.
            "--standby",
        ]  # fmt: skip
        out = (self.logdir / f"instance-{self.index}.log").open("ab")
        try:
            out.write(f"\n===== start {self.instance_id} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = await asyncio.create_subprocess_exec(
                *args, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env
            )
        finally:
            out.close()
        self.paused = False
        self.starts.append(time.time())

    def signal(self, sig: signal.Signals) -> bool:
        if not self.alive or self.proc is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
            if sig is signal.SIGSTOP:
                self.paused = True
            elif sig is signal.SIGCONT:
                self.paused = False
            return True
        return False

    async def wait(self, timeout: float) -> int | None:  # noqa: ASYNC109
        if self.proc is None:
            return None
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return None


class Harness:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.work = opts.workdir
        self.logdir = self.work / "logs"
        self.mode = opts.redis_mode
        self.kinds = faults.kinds_for(self.mode)
        self.redis: RedisProcess | SentinelRedis = (
            SentinelRedis(self.work / "redis") if self.mode == "sentinel"
            else RedisProcess(self.work / "redis" / "gen-0"))
        self.gen = 0
        """Data-directory generation of the single server (a ``redis_wipe`` starts a new one)."""
        self.lost: list[tuple[int, int]] = []
        """Every lost history, oldest first: (data-directory generation, database)."""
        self.next_db = 1
        self.recoveries: list[dict[str, Any]] = []
        self.venue_port = free_port()
        self.config_path = self.work / "chaos.toml"
        self.instances: list[Instance] = []
        self.injected: list[dict[str, Any]] = []
        self.cfg: Config | None = None
        self.keys = AccountKeys(chaos_account(opts.venue))
        self.venue: VenueProcess | None = None
        self.t0 = 0.0
        self.t_faults = 0.0
        """Monotonic moment the fault clock starts: once the account is trading."""
        self.problems: list[str] = []
        self.rng = random.Random(opts.seed ^ 0x5EED)

    # -- environment ------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        # The sandbox's own settings and test keys on the allow-listed environment: not the
        # caller's (a real venue key or Redis URL in the shell that started the run).
        env = redacted.child_environment()
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "GUARDRAILS_STATE_DIR": str(self.work / "state"),
                "GUARDRAILS_LOCK_DIR": str(self.work / "locks"),
                # its copies are a sandbox's: their lock directory alone (test-only switch)
                "GUARDRAILS_LOCK_DIR_ISOLATED": "1",
                "GUARDRAILS_CHAOS_HTTP_KEY": HTTP_KEY,
                "GUARDRAILS_CHAOS_CCXT_KEY": CCXT_KEY,
                "GUARDRAILS_CHAOS_CCXT_SECRET": CCXT_SECRET,
            }
        )
        return env

    def write_config(self) -> Config:
        account = chaos_account(self.opts.venue)
        text = CONFIG_TEMPLATE.format(
            account_venue=account.venue,
            account_id=account.account,
            redis_url=self.redis.url,
            redis_extra=('wait_replicas = 1\nwait_timeout = "1s"\n'
                         if self.mode == "sentinel" else ""),
            venue_url=f"http://127.0.0.1:{self.venue_port}",
            seed=self.opts.seed % 1_000_000,
        )
        if self.opts.venue == "ccxt":
            text = ccxt_config(text, f"http://127.0.0.1:{self.venue_port}")
        self.config_path.write_text(text)
        return load_config(self.config_path)

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        line = f"[chaos {self.elapsed():7.1f}s] {text}"
        print(line, flush=True)
        with (self.logdir / "harness.log").open("a") as f:
            f.write(line + "\n")

    # -- the run ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        self.work.mkdir(parents=True, exist_ok=True)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        schedule = faults.schedule(self.opts.seed, self.opts.duration_s, self.opts.instances, TTL_S,
                                   self.kinds)
        print(f"chaos schedule (seed {self.opts.seed}, redis {self.mode}, {len(schedule)} faults):",
              flush=True)
        for f in schedule:
            print("  " + f.describe(), flush=True)
        await asyncio.to_thread(self.redis.start)
        try:
            self.cfg = self.write_config()
            run_facts = await self.exercise(schedule)
            self.say("checking")
            data = await asyncio.to_thread(self.load_check_input)
        finally:
            self.redis.stop()  # also on cancellation (SIGTERM of the harness)
        result = checker.check(data)
        run_facts["redis"] = self.mode
        run_facts["redis_restarts"] = self.redis.restarts
        run_facts["history_losses"] = len(self.lost)
        run_facts["recoveries"] = self.recoveries
        if isinstance(self.redis, SentinelRedis):
            run_facts["failovers"] = self.redis.failovers
        run_facts["problems"] = self.problems
        run_facts["wall_s"] = round(self.elapsed(), 1)
        doc = report.build(
            seed=self.opts.seed,
            duration_s=self.opts.duration_s,
            instances=self.opts.instances,
            schedule=schedule,
            injected=self.injected,
            result=result,
            run=run_facts,
        )
        report.save(doc, self.opts.report_path)
        return doc

    def load_check_input(self) -> checker.CheckInput:
        """The checker's input: the live history and every lost one, oldest first (a lost
        history in an older data directory is read from a server started on a copy of it)."""
        assert self.cfg is not None
        record = self.work / "venue-record.jsonl"
        archives: list[Any] = []
        servers: dict[int, RedisProcess] = {}
        try:
            for gen, db in self.lost:
                if gen == self.gen:
                    archives.append(self.redis.client(db))
                    continue
                if gen not in servers:
                    servers[gen] = RedisProcess(self.work / "redis" / f"gen-{gen}")
                    servers[gen].start()
                archives.append(servers[gen].client(db))
            return checker.load(self.redis.client(), self.keys, self.cfg.risk, record,
                                # what the instances' prune sweeps moved out of Redis
                                default_archive_path(self.keys, self.work / "state"),
                                lost_histories=archives)
        finally:
            for srv in servers.values():
                srv.stop()

    async def exercise(self, schedule: list[faults.Fault]) -> dict[str, Any]:
        """Start everything, inject the faults, settle, stop everything; always clean up."""
        direct = await connect.connect(self.redis.url)
        run_facts: dict[str, Any] = {"workdir": str(self.work)}
        try:
            self.venue = VenueProcess(
                self.config_path, self.venue_port, self.work / "venue-record.jsonl",
                self.logdir / "venue.log", seed=self.opts.seed,
                protocol="binance" if self.opts.venue == "ccxt" else "eip712",
                keys={CCXT_KEY: CCXT_SECRET} if self.opts.venue == "ccxt" else None,
            )  # fmt: skip
            await self.venue.start(self.env())
            for i in range(self.opts.instances):
                proxy: ChaosProxy | None = None
                if isinstance(self.redis, RedisProcess):
                    proxy = ChaosProxy(f"p{i}", "127.0.0.1", self.redis.port)
                    await proxy.start()
                url = proxy.url if proxy is not None else self.redis.url
                self.instances.append(Instance(i, proxy, url, self.config_path, self.logdir))
            for inst in self.instances:
                await inst.start(self.env())
                await asyncio.sleep(0.5)  # instance 0 first: it becomes the first active
            self.say(f"started redis {connect.describe(self.redis.url)}, venue :{self.venue_port}, "
                     f"{len(self.instances)} instances")  # fmt: skip
            run_facts["trading_after_s"] = await self.wait_trading(direct)
            self.t_faults = time.monotonic()
            await self.run_schedule(schedule, direct)
            await self.sleep_until(self.opts.duration_s)
            settled = await self.settle(direct)
            run_facts["settled"] = settled
            await self.quiesce(direct)
            run_facts["handover"] = await self.handover(direct)
            run_facts["stop"] = await self.stop_instances()
        finally:
            for inst in self.instances:
                inst.signal(signal.SIGCONT)
                if inst.alive and inst.proc is not None:
                    inst.proc.kill()
                    await inst.wait(5)
            for inst in self.instances:
                if inst.proxy is not None:
                    await inst.proxy.close()
            if self.venue is not None:
                await self.venue.stop()
            await direct.aclose()
        return run_facts

    def fault_clock(self) -> float:
        return time.monotonic() - self.t_faults

    async def wait_trading(self, direct: aioredis.Redis) -> float | None:
        """Block until the gate admitted a few orders (an instance leads and trades), so
        the first faults hit a trading account, not processes still importing."""
        start = time.monotonic()
        while time.monotonic() - start < BOOT_TIMEOUT_S:
            n = await _admitted(direct, self.keys)
            if n is not None and n >= 3:
                took = round(time.monotonic() - start, 1)
                self.say(f"trading after {took}s; fault clock starts")
                return took
            await asyncio.sleep(0.5)
        self.problems.append(f"no admissions within {BOOT_TIMEOUT_S}s of starting the instances")
        return None

    async def sleep_until(self, t: float) -> None:
        """Sleep until ``t`` seconds on the fault clock."""
        delay = t - self.fault_clock()
        if delay > 0:
            await asyncio.sleep(delay)

    # -- faults -----------------------------------------------------------------------

    async def run_schedule(self, schedule: list[faults.Fault], direct: aioredis.Redis) -> None:
        for n, fault in enumerate(schedule):
            await self.sleep_until(fault.at_s)
            await self.keep_alive()
            record: dict[str, Any] = {
                "n": n,
                "kind": fault.kind.value,
                "at_s": round(self.fault_clock(), 1),
            }
            try:
                await self.apply(fault, direct, record)
                record.setdefault("ok", True)
            except Exception as e:  # a fault that could not be applied is reported, not fatal
                record["ok"] = False
                record["error"] = f"{type(e).__name__}: {e}"
            self.say(f"fault {n} {fault.kind.value}: {json.dumps(record, default=str)}")
            self.injected.append(record)

    async def keep_alive(self) -> None:
        """Restart any instance that died on its own (recorded: it should not happen)."""
        for inst in self.instances:
            if inst.proc is not None and not inst.alive:
                note = f"instance {inst.instance_id} exited on its own with {inst.proc.returncode}"
                self.problems.append(note)
                self.say(note + "; restarting")
                await inst.start(self.env())

    async def resolve(self, target: str, direct: aioredis.Redis) -> Instance:
        if target.startswith("instance:"):
            return self.instances[int(target.split(":", 1)[1]) % len(self.instances)]
        holder = await self.holder(direct)
        if holder is not None:
            return holder
        # Nobody holds the lease right now: hit a live instance, chosen by the seed.
        return self.rng.choice([i for i in self.instances if i.alive] or self.instances)

    async def apply(self, fault: faults.Fault, direct: aioredis.Redis, rec: dict[str, Any]) -> None:
        kind = fault.kind
        K = faults.FaultKind
        if kind in (K.SIGKILL, K.SIGSTOP, K.PARTITION, K.BLACKHOLE, K.REPLY_LOSS, K.LATENCY):
            inst = await self.resolve(fault.target, direct)
            rec["instance"] = inst.instance_id
            if kind is K.SIGKILL:
                inst.signal(signal.SIGKILL)
                await inst.wait(10)
                await asyncio.sleep(fault.hold_s)
                await inst.start(self.env())
                rec["restarted_as"] = inst.instance_id
            elif kind is K.SIGSTOP:
                inst.signal(signal.SIGSTOP)
                await asyncio.sleep(fault.hold_s)
                inst.signal(signal.SIGCONT)
            else:
                assert inst.proxy is not None, "proxy faults need the single-server mode"
                await self.hold_proxy(inst.proxy, kind, fault)
        elif kind is K.REDIS_RESTART:
            assert isinstance(self.redis, RedisProcess)
            await asyncio.to_thread(self.redis.kill)
            await asyncio.sleep(fault.hold_s)
            await asyncio.to_thread(self.redis.start)
            self.redis.restarts += 1
        elif kind is K.FLUSHALL:
            db = self.next_db
            self.next_db += 1
            # One atomic step empties database 0 for every client, as a FLUSHALL would;
            # the lost keys land in database ``db``, which no instance reads.
            try:
                await direct.swapdb(0, db)
            except Exception:
                # The reply can be lost after Redis swapped (seen under load): look.
                if not await asyncio.to_thread(self.archived, db):
                    raise
                rec["swapdb_reply_lost"] = True
            self.lost.append((self.gen, db))
            rec["archived_db"] = db
            await self.recover_history(direct, fault, rec)
        elif kind is K.REDIS_WIPE:
            assert isinstance(self.redis, RedisProcess)
            await asyncio.to_thread(self.redis.kill)
            self.lost.append((self.gen, 0))
            self.gen += 1
            self.redis.dir = self.work / "redis" / f"gen-{self.gen}"
            await asyncio.to_thread(self.redis.start)  # same port, empty data directory
            self.redis.restarts += 1
            rec["generation"] = self.gen
            await self.recover_history(direct, fault, rec)
        elif kind is K.SENTINEL_FAILOVER:
            assert isinstance(self.redis, SentinelRedis)
            group = self.redis
            old = await asyncio.to_thread(group.kill_master)
            t_kill = time.monotonic()
            rec["killed"] = old.port
            new = await asyncio.to_thread(group.wait_failover, old)
            rec["promoted"] = new.port
            rec["failover_s"] = round(time.monotonic() - t_kill, 1)
            await asyncio.sleep(fault.hold_s)
            await asyncio.to_thread(group.rejoin, old, new)
        elif kind is K.KILL_SWITCH:
            mode = str(fault.params.get("mode", "halt"))
            extra = {"halt": [], "reduce_only": ["--reduce-only"], "revoke": ["--revoke"]}[mode]
            rec["mode"] = mode
            rc = await self.cli("kill", "--account", str(self.keys.account),
                                "--reason", f"chaos fault at {fault.at_s}s", *extra)  # fmt: skip
            rec["kill_rc"] = rc
            await asyncio.sleep(fault.hold_s)
            rc2 = await self.resume()
            rec["resume_rc"] = rc2
            if rc != 0 or rc2 != 0:
                rec["ok"] = False
        elif kind is K.VENUE_DROP:
            assert self.venue is not None
            mode = str(fault.params.get("mode", "drop"))
            rec["mode"] = mode
            await self.venue.lose_responses(mode)
            try:
                await asyncio.sleep(fault.hold_s)
            finally:
                await self.venue.lose_responses(None)
        else:  # pragma: no cover - every kind is handled above
            raise ValueError(f"unhandled fault {kind}")

    def archived(self, db: int) -> bool:
        """Whether database ``db`` holds the account's keys (a swap happened)."""
        for _ in range(5):
            try:
                c = self.redis.client(db)
                try:
                    return bool(c.exists(self.keys.epoch, self.keys.journal, self.keys.fence))
                finally:
                    c.close()
            except Exception:
                time.sleep(0.5)
        return False

    async def recover_history(self, direct: aioredis.Redis, fault: faults.Fault,
                              rec: dict[str, Any]) -> None:
        """After a history loss, as an operator: wait until the instances refuse (the
        fence alarm is set: they admit nothing), wait ``hold``, then ``guardrails fence
        recover --above N`` with N the highest token the venue's record shows."""
        start = time.monotonic()
        alarm: dict[Any, Any] = {}
        while time.monotonic() - start < REFUSAL_TIMEOUT_S:
            with contextlib.suppress(Exception):
                alarm = await direct.hgetall(self.keys.fence_alarm)
            if alarm:
                break
            await asyncio.sleep(0.2)
        if not alarm:
            rec["ok"] = False
            self.problems.append(f"no instance refused the lost history within {REFUSAL_TIMEOUT_S}s "
                                 f"(fault at {fault.at_s}s)")
        else:
            rec["refused_after_s"] = round(time.monotonic() - start, 1)
            rec["alarm"] = {k: alarm.get(k, "") for k in ("reason", "seen_token", "by")}
        # After one TTL every order admitted before the loss has reached the venue or can
        # no longer (its permit deadline passed): then the venue's listing is complete.
        await asyncio.sleep(max(fault.hold_s, TTL_S + 0.5 - (time.monotonic() - start)))
        record = self.work / "venue-record.jsonl"
        above = venue_max_token(record)
        listing = self.work / f"venue-orders-{len(self.recoveries)}.jsonl"
        rec["venue_orders"] = venue_order_export(record, listing)
        rc = -1
        for _ in range(3):  # an operator runs it again when Redis timed out (exit 2)
            rc = await self.cli("fence", "recover", "--above", str(above),
                                "--venue-orders", str(listing))
            if rc == 0:
                break
            await asyncio.sleep(1.0)
        rec["recover_rc"] = rc
        rec["above"] = above
        if rc == 0:
            # The active's fills pump may have met a fill of a lost order before it
            # refused (foreign activity: halted, fail closed); the operator resumes.
            rec["resume_rc"] = await self.resume()
        self.recoveries.append({"at_s": round(self.fault_clock(), 1), "above": above, "rc": rc})
        if rc != 0:
            rec["ok"] = False
            self.problems.append(f"guardrails fence recover exited {rc} (fault at {fault.at_s}s)")

    async def hold_proxy(self, proxy: ChaosProxy, kind: faults.FaultKind, fault: faults.Fault) -> None:
        if kind is faults.FaultKind.PARTITION:
            proxy.partition()
        elif kind is faults.FaultKind.BLACKHOLE:
            proxy.blackhole()
        elif kind is faults.FaultKind.REPLY_LOSS:
            proxy.lose_replies()
        else:
            proxy.set_latency(float(fault.params.get("ms", 200)))
        try:
            await asyncio.sleep(fault.hold_s)
        finally:
            proxy.heal()

    async def cli(self, *args: str) -> int:
        """``guardrails <args>`` against Redis directly (operators do not go through proxies)."""
        out = (self.logdir / "cli.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "guardrails", *args,
                "--config", str(self.config_path), "--redis-url", self.redis.url,
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=self.env(),
            )  # fmt: skip
            try:
                return await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return -9
        finally:
            out.close()

    async def resume(self) -> int:
        return await self.cli("resume", "--account", str(self.keys.account), "--reason", "chaos")

    # -- settle, quiesce, stop ---------------------------------------------------------

    async def settle(self, direct: aioredis.Redis) -> dict[str, Any]:
        """Undo every fault, then wait until a live leader decides orders again.

        "Decides" = the gate admits, or denies for a reason it checks only *after* the
        fence (a limit, the budget...): either proves an instance holds a live lease and
        its strategies run, which they do only after reconciliation. (Admissions alone
        would not do: a long run can spend its daily loss budget, and then every order
        is rightly denied.)"""
        for inst in self.instances:
            if inst.proxy is not None:
                inst.proxy.heal()
            inst.signal(signal.SIGCONT)
        assert self.venue is not None
        await self.venue.lose_responses(None)
        await self.keep_alive()
        await self.resume()
        self.say("faults over; settling")
        start = time.monotonic()
        base = await _decisions(direct, self.keys)
        facts: dict[str, Any] = {"decisions_before": base}
        while time.monotonic() - start < SETTLE_TIMEOUT_S:
            await asyncio.sleep(1.0)
            await self.keep_alive()
            now = await _decisions(direct, self.keys)
            if base is None:
                base = now
                continue
            if now is not None and now >= base + 5:
                facts["decisions_after"] = now - base
                facts["settle_s"] = round(time.monotonic() - start, 1)
                self.say(f"settled: {now - base} gate decisions after the faults")
                return facts
        facts["decisions_after"] = 0
        facts["settle_s"] = None
        self.problems.append(f"no leader deciding orders within {SETTLE_TIMEOUT_S}s after the faults")
        self.say("did not settle")
        return facts

    async def quiesce(self, direct: aioredis.Redis) -> None:
        """HALT the account: nothing new is admitted, the active instance cancels what rests."""
        rc = -1
        for _ in range(3):  # an operator retries a kill that could not be confirmed
            rc = await self.cli("kill", "--account", str(self.keys.account),
                                "--reason", "chaos: end of run")
            if rc == 0:
                break
            await asyncio.sleep(1.0)
        if rc != 0:
            self.problems.append(f"final kill exited {rc}")
        start = time.monotonic()
        while time.monotonic() - start < 20:
            await asyncio.sleep(1.0)
            with contextlib.suppress(*_REDIS_DOWN):  # a restart mid-wait: ask again next second
                if await direct.scard(self.keys.open_orders) == 0:
                    break
        await asyncio.sleep(2.0)  # one more fills/marks pump round

    async def holder(self, direct: aioredis.Redis) -> Instance | None:
        """The live instance named in the lease value, if any (a few tries: a pooled
        connection can be stale right after a Redis restart)."""
        for _ in range(3):
            try:
                value = await direct.get(self.keys.lease)
            except _REDIS_DOWN:
                await asyncio.sleep(0.2)
                continue
            if value:
                name = str(value).split(":", 1)[1]
                for inst in self.instances:
                    if name == inst.instance_id and inst.alive:
                        return inst
            return None
        return None

    async def handover(self, direct: aioredis.Redis) -> dict[str, Any]:
        """Gracefully stop the active instance: a standby must take over and reconcile
        (its takeover reconciliation finalises whatever the faults left undecided)."""
        old = await self.holder(direct)
        if old is None:
            self.problems.append("no active instance at the end of the run")
            return {"from": None}
        old.signal(signal.SIGTERM)
        rc = await old.wait(STOP_TIMEOUT_S)
        facts: dict[str, Any] = {"from": old.instance_id, "exit": rc}
        if rc != 0:
            self.problems.append(f"{old.instance_id} exited {rc} on SIGTERM (handover)")
        start = time.monotonic()
        while time.monotonic() - start < STOP_TIMEOUT_S:
            new = await self.holder(direct)
            if new is not None and new is not old:
                facts["to"] = new.instance_id
                facts["takeover_s"] = round(time.monotonic() - start, 2)
                await asyncio.sleep(RECONCILE_WAIT_S)
                self.say(f"handover {old.instance_id} -> {new.instance_id}")
                return facts
            await asyncio.sleep(0.2)
        self.problems.append(f"no standby took over within {STOP_TIMEOUT_S}s of a graceful stop")
        return facts

    async def stop_instances(self) -> dict[str, Any]:
        """SIGTERM standbys first, then whoever is left; each must exit 0 in time."""
        codes: dict[str, Any] = {}
        for inst in sorted(self.instances, key=lambda i: -i.index):
            if not inst.alive:
                continue
            inst.signal(signal.SIGTERM)
            rc = await inst.wait(STOP_TIMEOUT_S)
            codes[inst.instance_id] = rc
            if rc is None:
                self.problems.append(f"{inst.instance_id} did not stop within {STOP_TIMEOUT_S}s of SIGTERM")
            elif rc != 0:
                self.problems.append(f"{inst.instance_id} exited {rc} on SIGTERM")
        return codes


async def _admitted(direct: aioredis.Redis, keys: AccountKeys) -> int | None:
    """The gate's admission counter; None if Redis cannot be read (after a few tries:
    a pooled connection may be stale after a Redis restart)."""
    for _ in range(3):
        with contextlib.suppress(*_REDIS_DOWN):
            v = await direct.hget(keys.stats, "admitted")
            return scripts.stored_nat(v, f"{keys.stats} admitted")
        await asyncio.sleep(0.2)
    return None


POST_FENCE_REASONS = frozenset(
    {
        "bad_order", "unknown_symbol", "off_tick", "off_lot", "max_notional", "price_band",
        "throttled", "position_limit", "gross_exposure", "daily_loss",
    }
)  # fmt: skip
"""Denials the gate decides only after the fence check passed (docs/gate.md order)."""


async def _decisions(direct: aioredis.Redis, keys: AccountKeys) -> int | None:
    """Admissions plus post-fence denials so far: decisions only a live leader gets."""
    for _ in range(3):
        with contextlib.suppress(*_REDIS_DOWN):
            stats = await direct.hgetall(keys.stats)
            total = scripts.stored_nat(stats.get("admitted"), f"{keys.stats} admitted")
            for field_name, value in stats.items():
                reason = str(field_name).removeprefix("denied:")
                if reason in POST_FENCE_REASONS and str(field_name).startswith("denied:"):
                    total += scripts.stored_nat(value, f"{keys.stats} denied:{reason}")
            return total
        await asyncio.sleep(0.2)
    return None


def venue_max_token(record: Path) -> int:
    """The highest fencing token on any order row of the venue's record (what an
    operator reads from the venue before ``fence recover --above``)."""
    best = 0
    with contextlib.suppress(FileNotFoundError):
        for line in record.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                row = json.loads(line)
                if row.get("type") == "order" and row.get("token") is not None:
                    best = max(best, int(row["token"]))
    return best


def venue_order_export(record: Path, out: Path) -> int:
    """Write the order rows of the venue's record to ``out`` (what an operator exports
    from the venue's order history for ``fence recover --venue-orders``); their count."""
    n = 0
    with out.open("w", encoding="utf-8") as f:
        with contextlib.suppress(FileNotFoundError):
            for line in record.read_text(encoding="utf-8").splitlines():
                with contextlib.suppress(ValueError, AttributeError):
                    row = json.loads(line)
                    if row.get("type") == "order" and row.get("symbol"):
                        f.write(json.dumps(row) + "\n")
                        n += 1
    return n


def chaos_account(venue: str = "http") -> AccountId:
    """The run's account: for ``http`` the simulator venue and the signing key's wallet
    address; for ``ccxt`` a Binance account label."""
    if venue == "ccxt":
        return AccountId("binance", "chaos")
    from eth_account import Account

    return AccountId(ACCOUNT_VENUE, Account.from_key(HTTP_KEY).address)


def ccxt_config(text: str, venue_url: str) -> str:
    """The HTTP run's config as a ccxt one: ccxt symbols (``BTC/USD``), the same market
    and strategies, ``[venue] kind = "ccxt"`` on the Binance-protocol simulator."""
    http_venue = text[text.index("[venue]\n"):text.index("[venue.simulator]")]
    out = text.replace(http_venue, _CCXT_VENUE.format(venue_url=venue_url) + "\n")
    for sym in ("BTC", "ETH"):
        for old, new in ((f"[risk.instruments.{sym}-USD]", f'[risk.instruments."{sym}/USD"]'),
                         (f"{sym}-USD = ", f'"{sym}/USD" = '),
                         (f'"{sym}-USD"', f'"{sym}/USD"')):
            if old not in out:
                raise ValueError(f"chaos config template changed: {old!r} not found")
            out = out.replace(old, new)
    return out
