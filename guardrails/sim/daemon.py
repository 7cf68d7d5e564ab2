"""The per-user exchange simulator daemon behind ``[venue] kind = "http"``, ``url = "embedded"``.

Invariant upheld: *one writer per account* must be testable against one exchange. Every
``guardrails run`` of a user on a host — the active instance and its standbys — reaches
the SAME simulator, so a failover meets the book and fills a real venue would show.
Like the embedded Redis (``guardrails.infra.embedded``), the daemon lives in the state
directory (``statedir.state_dir()/simulator``, never under ``$HOME``), a private directory
of this user checked by ``guardrails.statedir`` (its files are read and written only
through it: a planted file or symlink is refused, never trusted or written through):

* ``start.lock`` — ``flock`` around check-and-start: of several processes starting at
  once, exactly one spawns the daemon, the others reuse it;
* ``sim.pid`` / ``sim.json`` — the daemon's pid, and its URL (``127.0.0.1``, a free TCP
  port) with its pid and market digest, written by the daemon once it listens and
  removed when it stops;
* ``market.json`` — the market it simulates (written by the process that starts it);
* ``record.jsonl`` — its append-only record, which *is* its state: replayed at start
  (orders, tombstones, fills, balances, last marks) and fsynced before every answer,
  so a restarted daemon agrees with the ledger in the persistent embedded Redis;
* ``sim.log`` — its log;
* ``daemon.lock`` — ``flock``-ed by the daemon for its life: the record's only writer.

Health check: ``GET /v1/info`` must answer with the pid of ``sim.json``. A second
client whose market differs from the running daemon's is refused (``SimDaemonError``)
rather than silently trading another market.

Not guaranteed: the market walks only while the daemon runs (after a restart the marks
resume from the last checkpoint); the daemon is a demo/test exchange holding no funds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from guardrails import logs, redacted, statedir
from guardrails.config import (
    CcxtVenueConfig,
    ConfigError,
    HttpVenueConfig,
    PaperVenueConfig,
    PolymarketVenueConfig,
    RiskConfig,
    load_config,
)
from guardrails.sim import binance, clob
from guardrails.sim.exchange import DEFAULT_MARKET, DEFAULT_RISK, SimExchange, SimStateError
from guardrails.sim.server import Simulator

log = logging.getLogger("guardrails.simulator")

_DIGEST_KEYS = ("quote_decimals", "instruments")


class SimDaemonError(RuntimeError):
    """The simulator daemon could not be started, reached or stopped."""


@dataclass(frozen=True)
class MarketSpec:
    """What the daemon simulates: the market, the instruments' units and the chain id."""

    market: PaperVenueConfig
    risk: RiskConfig
    chain_id: int
    protocol: str = "eip712"
    """``eip712`` (the HTTP venue's API) or ``binance`` (``guardrails.sim.binance``)."""
    clob_tokens: dict[str, str] | None = None
    """Set: the daemon serves the Polymarket CLOB API (``guardrails.sim.clob``) on these
    outcome tokens (symbol -> token id) instead of the HTTP venue's protocol."""
    clob_expiry_window_ms: int | None = None
    """CLOB: how far ahead a GTD order must expire (the venue's ``expiry_window``; None: the
    exchange's default). Not part of the digest: it is a rule of the venue, not its market."""

    def digest(self) -> str:
        """Equal markets have equal digests (limits other than units do not count)."""
        risk = self.risk.model_dump(mode="json")
        units = {k: risk[k] for k in _DIGEST_KEYS}
        for inst in units["instruments"].values():
            inst.pop("max_position", None)
        doc: dict[str, Any] = {"market": self.market.model_dump(mode="json"), "units": units,
                               "chain_id": self.chain_id}
        if self.protocol != "eip712":
            doc["protocol"] = self.protocol
        if self.clob_tokens:
            doc["clob"] = self.clob_tokens
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        market = self.market.model_dump(mode="json")
        return json.dumps({
            "market": market,
            "risk": self.risk.model_dump(mode="json"),
            "chain_id": self.chain_id,
            "protocol": self.protocol,
            "clob_tokens": self.clob_tokens,
        }, indent=2)

    @classmethod
    def from_json(cls, text: str) -> MarketSpec:
        data = json.loads(text)
        return cls(
            PaperVenueConfig.model_validate(data["market"]),
            RiskConfig.model_validate(data["risk"]),
            int(data["chain_id"]),
            str(data.get("protocol", "eip712")),
            data.get("clob_tokens"),
        )


@dataclass(frozen=True)
class DaemonPaths:
    root: Path

    @property
    def lockfile(self) -> Path:
        return self.root / "start.lock"

    @property
    def pidfile(self) -> Path:
        return self.root / "sim.pid"

    @property
    def infofile(self) -> Path:
        return self.root / "sim.json"

    @property
    def market(self) -> Path:
        return self.root / "market.json"

    @property
    def record(self) -> Path:
        return self.root / "record.jsonl"

    @property
    def logfile(self) -> Path:
        return self.root / "sim.log"

    @property
    def errorfile(self) -> Path:
        return self.root / "sim.error"

    @property
    def ownerlock(self) -> Path:
        return self.root / "daemon.lock"


PROTOCOLS = ("eip712", "binance")


def paths(root: Path | None = None, protocol: str = "eip712") -> DaemonPaths:
    """The daemon's files: one daemon per protocol (``simulator``, ``simulator-binance``)."""
    if root is not None:
        return DaemonPaths(root)
    name = "simulator" if protocol == "eip712" else f"simulator-{protocol}"
    return DaemonPaths(statedir.state_dir() / name)


def clob_root() -> Path:
    """State directory of the per-user CLOB simulator daemon (Polymarket, ``embedded``)."""
    return statedir.state_dir() / "clob-simulator"


def _private(p: DaemonPaths, *, create: bool) -> None:
    """The daemon's directory is this user's private one (``statedir.private_dir``);
    ``SimDaemonError`` naming it and what is wrong otherwise."""
    try:
        statedir.private_dir(p.root, create=create)
    except statedir.StateDirError as e:
        raise SimDaemonError(f"simulator state: {e}") from None


def _lock(path: Path) -> IO[bytes]:
    """The lock file ``path`` (``statedir.open_lock``: created 0600, never followed)."""
    try:
        return os.fdopen(statedir.open_lock(path), "r+b")
    except statedir.StateDirError as e:
        raise SimDaemonError(str(e)) from None


def _append(path: Path) -> IO[bytes]:
    """``path`` opened for appending (``statedir.open_append``: 0600, never followed)."""
    try:
        return os.fdopen(statedir.open_append(path), "ab")
    except statedir.StateDirError as e:
        raise SimDaemonError(str(e)) from None


def _read_error(p: DaemonPaths) -> str | None:
    try:
        raw = statedir.read_private(p.errorfile)
    except statedir.StateDirError as e:
        raise SimDaemonError(str(e)) from None
    return None if raw is None else raw.decode(errors="replace").strip()


def _read_info(p: DaemonPaths) -> dict[str, Any] | None:
    try:
        raw = statedir.read_private(p.infofile)
        data = json.loads(raw) if raw is not None else None
    except (OSError, ValueError):
        return None
    except statedir.StateDirError as e:
        raise SimDaemonError(str(e)) from None
    return data if isinstance(data, dict) else None


def _get_info(url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/v1/info", timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return data if isinstance(data, dict) else None


def _healthy(p: DaemonPaths) -> dict[str, Any] | None:
    """The running daemon's info (with its ``url``), or None: it must answer with the
    pid it wrote, so a stale file never points us at some other process's port."""
    info = _read_info(p)
    if info is None or "url" not in info:
        return None
    live = _get_info(str(info["url"]))
    if live is None or live.get("pid") != info.get("pid"):
        return None
    return {**live, "url": info["url"]}


def _log_tail(p: DaemonPaths, n: int = 2000) -> str:
    try:
        return p.logfile.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def ensure_running(spec: MarketSpec, *, root: Path | None = None, timeout: float = 30.0) -> str:
    """Start the daemon unless it already runs; return its base URL.

    Safe from several processes at once: a file lock serialises the check and the start.
    Raises ``SimDaemonError`` if the running daemon (or its record) simulates another
    market, or if it does not come up (the message quotes its log). It starts with
    ``redacted.child_environment()`` only: no key, token or password reaches it.
    """
    p = paths(root, spec.protocol)
    _private(p, create=True)
    digest = spec.digest()
    with _lock(p.lockfile) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = _healthy(p)
        if info is not None:
            if info.get("market_digest") != digest:
                raise SimDaemonError(
                    f"the simulator daemon at {info['url']} (state {p.root}) simulates another "
                    f"market (digest {info.get('market_digest')}, this config {digest}); stop it "
                    "with `guardrails venue stop` (and move its record.jsonl away for a fresh "
                    "exchange)"
                )
            return str(info["url"])
        p.infofile.unlink(missing_ok=True)
        p.errorfile.unlink(missing_ok=True)
        _write_atomic(p.market, spec.to_json())
        with _append(p.logfile) as logf:
            # The child forks the daemon off and exits at once (double fork): the daemon
            # is nobody's child, so it outlives this process and leaves no zombie.
            subprocess.run(
                [sys.executable, "-m", "guardrails", "venue", "serve", "--daemon-dir",
                 str(p.root)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                start_new_session=True, check=False, timeout=timeout,
                env=redacted.child_environment(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = _healthy(p)
            if info is not None:
                return str(info["url"])
            error = _read_error(p)
            if error is not None:
                raise SimDaemonError(
                    f"the simulator daemon refused to start: {error} (log {p.logfile})")
            time.sleep(0.05)
        raise SimDaemonError(f"the simulator daemon did not answer within {timeout}s "
                             f"(log {p.logfile}):\n{_log_tail(p)}")


def status(root: Path | None = None, protocol: str = "eip712") -> dict[str, Any]:
    """What ``guardrails venue status`` shows."""
    p = paths(root, protocol)
    if p.root.exists() or p.root.is_symlink():
        _private(p, create=False)
    info = _healthy(p)
    out: dict[str, Any] = {
        "running": info is not None,
        "url": info["url"] if info else None,
        "pid": info["pid"] if info else None,
        "state_dir": str(p.root),
        "record": str(p.record),
        "log": str(p.logfile),
    }
    if info is not None:
        for k in ("market_digest", "chain_id", "orders", "open_orders", "tombstones", "fills",
                  "replayed"):
            out[k] = info.get(k)
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(*, root: Path | None = None, timeout: float = 10.0, protocol: str = "eip712") -> bool:
    """SIGTERM the daemon and wait until it is gone. False if it was not running."""
    p = paths(root, protocol)
    if not p.root.exists() and not p.root.is_symlink():
        return False
    _private(p, create=False)
    with _lock(p.lockfile) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = _healthy(p)
        if info is None:
            return False
        pid = int(info["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # The daemon removes sim.json as its last act; a zombie child counts as gone.
            if not p.infofile.exists() and (not _pid_alive(pid) or _get_info(info["url"]) is None):
                return True
            time.sleep(0.05)
        raise SimDaemonError(f"the simulator daemon (pid {pid}) did not stop within {timeout}s")


def _write_atomic(path: Path, text: str) -> None:
    """``statedir.write_private``: a fresh 0600 file renamed over ``path``."""
    try:
        statedir.write_private(path, text.encode())
    except statedir.StateDirError as e:
        raise SimDaemonError(str(e)) from None


def market_from_config(
    path: str | None, seed: int | None
) -> tuple[PaperVenueConfig, RiskConfig, int]:
    """The market a config simulates: its paper venue, or its HTTP venue's ``simulator``."""
    market_cfg, risk, chain_id = DEFAULT_MARKET, DEFAULT_RISK, 1
    if path:
        cfg = load_config(path)
        risk = cfg.risk
        if isinstance(cfg.venue, PaperVenueConfig):
            market_cfg = cfg.venue
        elif isinstance(cfg.venue, HttpVenueConfig):
            chain_id = cfg.venue.chain_id
            if cfg.venue.simulator is not None:
                market_cfg = cfg.venue.simulator
        elif isinstance(cfg.venue, CcxtVenueConfig) and cfg.venue.simulator is not None:
            market_cfg = cfg.venue.simulator
    missing = sorted(set(risk.instruments) - set(market_cfg.start_prices))
    if missing:
        raise ConfigError(
            f"{path}: venue.simulator.start_prices lacks a price for: {', '.join(missing)}"
        )
    if seed is not None:
        market_cfg = market_cfg.model_copy(update={"seed": seed})
    return market_cfg, risk, chain_id


def spec_from_config(path: str | None, seed: int | None, protocol: str) -> MarketSpec:
    """The market ``guardrails venue serve --protocol P --config FILE`` simulates."""
    if protocol == "clob":
        if not path:
            raise ConfigError("--protocol clob needs --config (a kind = \"polymarket\" config)")
        cfg = load_config(path)
        venue = cfg.venue
        if not isinstance(venue, PolymarketVenueConfig) or venue.simulator is None:
            raise ConfigError(f"{path}: [venue] must be kind = \"polymarket\" with "
                              "[venue.simulator]")
        missing = sorted(set(cfg.risk.instruments) - set(venue.simulator.start_prices))
        if missing:
            raise ConfigError(f"{path}: venue.simulator.start_prices lacks: {', '.join(missing)}")
        sim_market = venue.simulator
        if seed is not None:
            sim_market = sim_market.model_copy(update={"seed": seed})
        return MarketSpec(sim_market, cfg.risk, venue.chain_id, clob_tokens=dict(venue.tokens),
                          clob_expiry_window_ms=venue.expiry_window)
    market_cfg, risk, chain_id = market_from_config(path, seed)
    return MarketSpec(market_cfg, risk, chain_id if protocol == "eip712" else 1, protocol=protocol)


def make_simulator(
    spec: MarketSpec, *, record: Path | None, resume: bool = False, admin: bool = False,
    keys: Mapping[str, binance.SimKey] | None = None, heartbeat_timeout_ms: int = 10_000,
) -> tuple[SimExchange, Simulator]:
    """The engine and the protocol front ``spec`` asks for: the EIP-712 HTTP API, Binance
    (``keys``: API key -> ``binance.SimKey``; none: the demo keys), or the CLOB
    (``spec.clob_tokens``).
    ``resume``: the record is the state (the per-user daemon), bound to the spec's digest.
    ``SimStateError`` / ``OSError`` / ``ValueError`` when the record or market is refused."""
    digest = spec.digest() if resume else ""
    if spec.protocol == "binance":
        bex = binance.make_exchange(spec.market, spec.risk, chain_id=spec.chain_id,
                                    record_path=record, resume=resume, market_digest=digest)
        front = binance.BinanceSim(bex, keys, accept_demo_keys=not keys)
        return bex, Simulator(bex, app=lambda: binance.build_binance_app(front, admin=admin))
    if spec.clob_tokens:
        window = spec.clob_expiry_window_ms
        cex = clob.ClobExchange(spec.market, spec.risk, spec.clob_tokens, chain_id=spec.chain_id,
                                record_path=record, resume=resume, market_digest=digest,
                                heartbeat_timeout_ms=heartbeat_timeout_ms,
                                min_expiry_window_ms=clob.MIN_EXPIRY_WINDOW_MS if window is None
                                else window)
        return cex, clob.ClobSimulator(cex, admin=admin)
    ex = SimExchange(spec.market, spec.risk, chain_id=spec.chain_id, record_path=record,
                     resume=resume, market_digest=digest)
    return ex, Simulator(ex, admin=admin)


def _announce(url: str) -> None:
    # The first stdout line is the contract with SimulatorProcess: the URL served.
    print(f"listening {url}", flush=True)


async def serve_until_signal(
    sim: Simulator, host: str = "127.0.0.1", port: int = 0, *,
    on_listening: Callable[[str], None] = _announce, on_stopped: Callable[[], None] | None = None,
    **fields: Any,
) -> None:
    """Serve ``sim`` until SIGTERM/SIGINT. ``on_listening(url)`` runs once it listens (by
    default: the URL on stdout), ``on_stopped()`` after it stopped serving."""
    url = await sim.start(host, port)
    stop_ev = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_ev.set)
    on_listening(url)
    logs.event(log, "simulator.listening", url=url, **fields)
    try:
        await stop_ev.wait()
    finally:
        await sim.stop()
        if on_stopped is not None:
            on_stopped()
        logs.event(log, "simulator.stopped", url=url)


def cmd_serve(args: argparse.Namespace) -> int:
    """``guardrails venue serve``: one simulator (any protocol) until SIGTERM/SIGINT."""
    logs.setup()
    record = Path(args.record) if args.record else None
    admin = bool(args.admin)
    try:
        spec = spec_from_config(args.config, args.seed, args.protocol)
        keys = binance.load_keys(args.keys_file) if args.keys_file else {}
        _, sim = make_simulator(spec, record=record, admin=admin, keys=keys,
                                heartbeat_timeout_ms=args.heartbeat_timeout_ms)
    except (ConfigError, OSError, ValueError) as e:
        print(f"guardrails venue serve: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve_until_signal(sim, args.host, args.port, record=record, admin=admin,
                                   protocol=args.protocol, chain_id=spec.chain_id,
                                   keys=len(keys)))
    return 0


def serve_daemon(root: Path) -> int:
    """The daemon itself (``guardrails venue serve --daemon-dir DIR``): replay, listen,
    publish ``sim.json``, serve until SIGTERM, then checkpoint and unpublish."""
    p = paths(root)
    _private(p, create=False)
    raw = statedir.read_private(p.market)
    if raw is None:
        raise SimDaemonError(f"{p.market} does not exist (written by the starting process)")
    spec = MarketSpec.from_json(raw.decode())
    if os.fork() != 0:
        os._exit(0)  # the first child returns at once; the grandchild is the daemon
    os.setsid()
    # One writer per record: held for the daemon's life, so a second daemon (say, started
    # while this one hung and failed its health check) refuses instead of appending too.
    owner = _lock(p.ownerlock)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        msg = f"another simulator daemon holds {p.ownerlock} (its record's only writer)"
        logs.event(log, "simulator.refused", logging.ERROR, error=msg)
        _write_atomic(p.errorfile, msg + "\n")
        return 1
    try:
        try:
            exchange, sim = make_simulator(spec, record=p.record, resume=True)
        except (SimStateError, OSError, KeyError, ValueError) as e:
            logs.event(log, "simulator.refused", logging.ERROR, error=f"{type(e).__name__}: {e}")
            _write_atomic(p.errorfile, f"{type(e).__name__}: {e}\n")
            return 1

        def publish(url: str) -> None:
            _write_atomic(p.pidfile, f"{os.getpid()}\n")
            _write_atomic(p.infofile, json.dumps({"pid": os.getpid(), "url": url,
                                                  "market_digest": spec.digest()}))

        def unpublish() -> None:
            p.infofile.unlink(missing_ok=True)
            p.pidfile.unlink(missing_ok=True)

        asyncio.run(serve_until_signal(
            sim, on_listening=publish, on_stopped=unpublish, record=p.record, daemon=1,
            replayed=exchange.replayed, chain_id=spec.chain_id, protocol=spec.protocol))
        return 0
    finally:
        owner.close()


class SimulatorProcess:
    """``guardrails venue serve`` as a child process: the one way tests, the benchmarks and
    the chaos run start a simulator of their own (``url = "embedded"`` uses the daemon).

    ``port`` 0 picks a free port; ``log`` appends the child's log to that file (default: a
    temporary file, see ``logs()``). ``start()`` returns the URL once the child listens;
    ``stop()`` terminates it (SIGKILL after 5 s) and returns its log. The child's
    environment is ``redacted.child_environment(env)`` (default: of ``os.environ``): the
    simulator reads keys from ``keys_file``, never from its environment, so none of the
    caller's keys or tokens reach it.
    """

    def __init__(self, *, config: str | None = None, record: Path | None = None,
                 admin: bool = False, seed: int | None = None,
                 env: Mapping[str, str] | None = None, protocol: str = "eip712",
                 keys_file: Path | None = None, host: str = "127.0.0.1", port: int = 0,
                 heartbeat_timeout_ms: int | None = None, log: Path | None = None) -> None:
        self._args = [sys.executable, "-m", "guardrails", "venue", "serve", "--host", host,
                      "--port", str(port), "--protocol", protocol]
        if keys_file:
            self._args += ["--keys-file", str(keys_file)]
        if config:
            self._args += ["--config", config]
        if record:
            self._args += ["--record", str(record)]
        if seed is not None:
            self._args += ["--seed", str(seed)]
        if heartbeat_timeout_ms is not None:
            self._args += ["--heartbeat-timeout-ms", str(heartbeat_timeout_ms)]
        if admin:
            self._args.append("--admin")
        self._env = redacted.child_environment(env)  # never the caller's keys or tokens
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        # stderr goes to a file, not a pipe: a chatty child must never block on a full pipe.
        self._stderr: IO[str] = (log.open("a+", encoding="utf-8") if log is not None
                                 else tempfile.TemporaryFile(mode="w+", encoding="utf-8"))
        self._final_logs = ""

    def start(self, timeout: float = 30.0) -> str:
        self.proc = subprocess.Popen(
            self._args, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=self._env
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        # readline blocks; the child prints its URL as soon as it listens (or exits).
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("listening "):
                self.url = line.split(" ", 1)[1].strip()
                return self.url
            if not line and self.proc.poll() is not None:
                break
        err = self.stop()
        raise RuntimeError(f"simulator did not start: {line!r} {err[-2000:]}")

    def stop(self) -> str:
        """Stop the child; returns its stderr (logs)."""
        if self._stderr.closed:
            return self._final_logs
        if self.proc is None:
            self._stderr.close()
            return ""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        text = self.logs()
        self._stderr.close()
        self._final_logs = text
        return text

    def logs(self) -> str:
        """Everything the child wrote to stderr so far (all of it, after ``stop()``)."""
        if self._stderr.closed:
            return self._final_logs
        with contextlib.suppress(ValueError, OSError):
            self._stderr.seek(0)
            return self._stderr.read()
        return ""


# -- CLI -----------------------------------------------------------------------------------


def cmd_venue(args: argparse.Namespace) -> int:
    """``guardrails venue serve|status|stop``."""
    if args.venue_command == "serve":
        if args.daemon_dir:
            logs.setup()
            try:
                return serve_daemon(Path(args.daemon_dir))
            except (SimDaemonError, statedir.StateDirError) as e:
                print(f"guardrails venue serve: {e}", file=sys.stderr)
                return 2
        return cmd_serve(args)
    protocol = getattr(args, "protocol", "eip712")
    try:
        if args.venue_command == "stop":
            stopped = stop(protocol=protocol)
            print("simulator daemon stopped" if stopped else "simulator daemon was not running")
            if stop(root=clob_root()):
                print("CLOB simulator daemon stopped")
            return 0
        info = status(protocol=protocol)
    except SimDaemonError as e:
        print(f"guardrails venue: {e}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0 if info["running"] else 3
