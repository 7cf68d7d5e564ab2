"""Secrets never leave the process (issue #9 item 4): a Redis password given in a URL —
in argv, in the environment, in a query parameter — appears nowhere in Redis, in
``status --json``, ``doctor --json``, the dashboard's API and ``/metrics``, the run's
logs or an error message; and the simulator daemon starts without the starter's secrets
in its environment."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from ccxt.base import errors as ccxt_errors
from eth_account import Account
from pydantic import ValidationError
from rich.console import Console

from guardrails import logs, redacted
from guardrails.chaos import harness
from guardrails.config import (
    CcxtVenueConfig,
    Config,
    ConfigError,
    PaperVenueConfig,
    load_config,
    parse_config,
    redis_url_problem,
)
from guardrails.console import ConsoleHandler
from guardrails.gate import OrderGate
from guardrails.infra import connect, embedded, server
from guardrails.ledger import Ledger
from guardrails.model import Admitted, Rejected
from guardrails.ops import notify
from guardrails.ops.doctor.checks import Census
from guardrails.sim import daemon
from guardrails.sim.exchange import DEFAULT_RISK
from guardrails.venues import signing
from guardrails.venues.ccxt import classify_submit_error, load_credentials
from tests.conftest import subprocess_env
from tests.gatekit import HOLDER, TOKEN, account_keys, buy, risk, seed
from tests.redis_harness import RedisServer, free_port
from tests.run_harness import RunProc, run_cli, write_config

PASSWORD = "Pw-7f3a9c1e-not-for-logs"
USER = "gr"


def _acl_user(server: RedisServer) -> None:
    c = server.client()
    try:
        c.execute_command("ACL", "SETUSER", USER, "on", f">{PASSWORD}", "~*", "&*", "+@all")
    finally:
        c.close()


# -- the masking rules ------------------------------------------------------------------


@pytest.mark.parametrize(("url", "shown"), [
    (f"redis://user:{PASSWORD}@10.0.0.5:6379/0", "redis://user:***@10.0.0.5:6379/0"),
    (f"redis://:{PASSWORD}@10.0.0.5:6379", "redis://:***@10.0.0.5:6379"),
    (f"redis://{PASSWORD}@10.0.0.5", "redis://***@10.0.0.5"),
    (f"rediss://user:{PASSWORD}@redis.example:6380/1", "rediss://user:***@redis.example:6380/1"),
    (f"unix://:{PASSWORD}@/var/run/redis.sock?db=2", "unix://:***@/var/run/redis.sock?db=2"),
    (f"unix:///var/run/redis.sock?db=0&password={PASSWORD}",
     "unix:///var/run/redis.sock?db=0&password=***"),
    (f"redis://h:6379/0?password={PASSWORD}&db=1", "redis://h:6379/0?password=***&db=1"),
    ("redis://:pa/ss?x@h:6379/0", "redis://:***@h:6379/0"),  # unencoded / and ? inside
    ("redis://:p%40ss-word@h:6379", "redis://:***@h:6379"),
    ("https://api.example/v3/order?symbol=X&signature=5f2b9c0a77",  # ccxt's error texts
     "https://api.example/v3/order?symbol=X&signature=***"),
])
def test_mask_url_when_credential_form_then_masked_and_target_kept(url: str, shown: str) -> None:
    # Act
    masked = connect.describe(url)

    # Assert
    assert masked == shown
    for secret in redacted.url_secrets(url):
        assert secret not in masked


def test_mask_url_when_no_credentials_then_unchanged() -> None:
    for url in ("redis://127.0.0.1:6379/0", "unix:///tmp/r.sock", "embedded"):
        assert connect.describe(url) == url
        assert not redacted.has_credentials(url)


def test_mask_argv_when_password_contains_space_then_whole_argument_masked() -> None:
    argv = ["guardrails", "run", "--redis-url=redis://:two words@h:1/0"]
    assert redacted.mask_argv(argv)[-1] == "--redis-url=redis://:***@h:1/0"


def test_log_line_when_registered_secret_or_url_in_message_or_traceback_then_scrubbed() -> None:
    # Arrange: a handler formatted exactly as `guardrails run` formats its stderr
    redacted.register("tok-5be0a1d2c3")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs._Formatter())
    log = logging.getLogger("test.secrets")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        # Act
        logs.event(log, "x", url=f"redis://u:{PASSWORD}@h:1/0", note="tok-5be0a1d2c3 here")
        try:
            raise RuntimeError(f"cannot reach redis://:{PASSWORD}@h:1")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)

    # Assert
    text = stream.getvalue()
    assert PASSWORD not in text and "tok-5be0a1d2c3" not in text
    assert "redis://u:***@h:1/0" in text and "RuntimeError" in text


@pytest.mark.parametrize("handler_kind", ["json", "console"])
def test_log_event_when_a_field_is_an_object_quoting_a_secret_then_scrubbed(
    handler_kind: str,
) -> None:
    # Arrange: a field that is not text (an exception, a request dict) but prints a secret
    redacted.register("ObjSecret-9a8b7c")
    stream = io.StringIO()
    handler: logging.Handler
    if handler_kind == "json":
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logs.JsonFormatter())
    else:
        handler = ConsoleHandler(Console(file=stream, width=400))
    log = logging.getLogger(f"test.secrets.{handler_kind}")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        # Act
        logs.event(log, "venue.failed", logging.WARNING,
                   error=RuntimeError("refused ObjSecret-9a8b7c"),
                   request={"apiKey": "ObjSecret-9a8b7c", "qty": 1})
    finally:
        log.removeHandler(handler)

    # Assert
    text = stream.getvalue()
    assert "venue.failed" in text or "refused" in text
    assert "ObjSecret-9a8b7c" not in text


def test_config_digest_when_only_redis_password_differs_then_equal() -> None:
    # Arrange: the digest is stored in the registry; it must not be a guessing oracle
    base = {
        "account": {"venue": "paper", "id": "d"},
        "risk": {"max_order_notional": "1", "max_gross_exposure": "1", "daily_loss_limit": "1",
                 "instruments": {"BTC-USD": {"tick": "0.01", "lot": "0.0001",
                                             "max_position": "1"}}},
        "venue": {"kind": "paper", "start_prices": {"BTC-USD": "1"}},
    }
    a = parse_config({**base, "redis": {"url": "redis://u:first-pass@h:1/0"}})
    b = parse_config({**base, "redis": {"url": "redis://u:other-pass@h:1/0"}})
    c = parse_config({**base, "redis": {"url": "redis://u:first-pass@elsewhere:1/0"}})

    # Assert
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()


async def test_connect_when_password_in_env_or_file_then_authenticates(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    # Arrange
    _acl_user(redis_server)
    url = f"redis://{USER}@127.0.0.1:{redis_server.port}/0"
    secret_file = tmp_path / "redis.pass"
    secret_file.write_text(PASSWORD + "\n")
    secret_file.chmod(0o600)

    # Act / Assert: no password anywhere -> refused; env -> works; file -> works
    client = await connect.connect(url)
    with pytest.raises(redis.exceptions.AuthenticationError):
        await client.ping()
    await client.aclose()
    monkeypatch.setenv(connect.PASSWORD_ENV, PASSWORD)
    client = await connect.connect(url)
    assert await client.acl_whoami() == USER
    await client.aclose()
    monkeypatch.delenv(connect.PASSWORD_ENV)
    monkeypatch.setenv(connect.PASSWORD_FILE_ENV, str(secret_file))
    client = await connect.connect(url)
    assert await client.acl_whoami() == USER
    await client.aclose()
    assert PASSWORD in redacted.registered()


# -- end to end: a run with a password in its URL ---------------------------------------


def _every_value(r: redis.Redis) -> Iterator[str]:
    """Every key name and every stored string, field, member and stream entry."""
    for key in r.scan_iter(count=1000):
        yield key
        kind = r.type(key)
        if kind == "string":
            yield str(r.get(key))
        elif kind == "hash":
            for k, v in r.hgetall(key).items():
                yield k
                yield v
        elif kind == "set":
            yield from r.smembers(key)
        elif kind == "zset":
            yield from (m for m, _ in r.zrange(key, 0, -1, withscores=True))
        elif kind == "list":
            yield from r.lrange(key, 0, -1)
        elif kind == "stream":
            for _, fields in r.xrange(key):
                for k, v in fields.items():
                    yield k
                    yield v
        else:
            raise AssertionError(f"unexpected key type {kind} at {key}")


@pytest.fixture
def run_with_password(redis_server: RedisServer, tmp_path: Path) -> Iterator[RunProc]:
    _acl_user(redis_server)
    config = write_config(tmp_path / "run.toml", redis_url="embedded", account="sec")
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    proc = RunProc("sec-a", config, tmp_path, extra_args=["--redis-url", url]).start()
    try:
        proc.wait_for("lease.acquired", timeout=60)
        proc.wait_for("order.admitted", timeout=60)
        time.sleep(1.5)  # a few heartbeats and positions reports
        yield proc
    finally:
        proc.cleanup()


def test_run_when_password_in_argv_url_then_password_nowhere_in_redis_status_doctor_dashboard_logs(
    run_with_password: RunProc, redis_server: RedisServer, tmp_path: Path,
) -> None:
    # Arrange
    port = redis_server.port
    argv_url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0"
    query_url = f"redis://{USER}@127.0.0.1:{port}/0?password={PASSWORD}"
    dead_url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/0"

    # Act: the operator surfaces, each reached with a credential-bearing URL
    status = run_cli("status", "--redis-url", argv_url, "--account", "paper:sec", "--json")
    doctor = run_cli("doctor", "--redis-url", query_url, "--manifest", "", "--json")
    failed = run_cli("status", "--redis-url", dead_url, "--account", "paper:sec")
    dash_port = free_port()
    dash = subprocess.Popen(
        [sys.executable, "-m", "guardrails", "dashboard", "--port", str(dash_port)],
        env=subprocess_env(GUARDRAILS_REDIS_URL=query_url), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        assert dash.stdout is not None
        dash.stdout.readline()  # the banner: it listens
        with urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/api/status", timeout=30) as r:
            api = r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{dash_port}/metrics", timeout=30) as r:
            metrics = r.read().decode()
    finally:
        dash.send_signal(signal.SIGTERM)
        _, dash_err = dash.communicate(timeout=30)
    direct = redis_server.client()
    try:
        stored = list(_every_value(direct))
    finally:
        direct.close()

    # Assert: it really ran and the surfaces answered
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    instances = doc["accounts"][0]["instances"]
    assert [i["role"] for i in instances] == ["active"]
    # the run moved the URL out of its argv (execve, same pid): not in ps, nor the registry
    assert "--redis-url" not in instances[0]["cmdline"]
    assert int(instances[0]["pid"]) == run_with_password.pid  # the same process
    cmdline = Path(f"/proc/{run_with_password.pid}/cmdline").read_bytes().decode()
    assert "run" in cmdline and PASSWORD not in cmdline and "--redis-url" not in cmdline
    assert json.loads(doctor.stdout)["redis"] == f"redis://{USER}@127.0.0.1:{port}/0?password=***"
    assert failed.returncode != 0 and "redis://gr:***@127.0.0.1" in failed.stderr
    assert '"paper:sec"' in api and "guardrails_up 1" in metrics
    assert len(stored) > 20
    # ...and the password is in none of it
    surfaces = {
        "redis": "\n".join(stored), "status --json": status.stdout + status.stderr,
        "doctor --json": doctor.stdout + doctor.stderr, "status error": failed.stderr,
        "dashboard api": api, "metrics": metrics, "dashboard stderr": dash_err,
        "run log": run_with_password.text(),
    }
    for where, text in surfaces.items():
        assert PASSWORD not in text, f"password leaked into {where}"
    # ...and the argv form was warned about, once, in the run's log and by the CLI
    warned = run_with_password.events("secrets.password_in_argv")
    assert len(warned) == 1 and warned[0]["url"].startswith("redis://gr:***@")
    assert "ps" in warned[0]["advice"]
    assert len(run_with_password.events("secrets.argv_reexec")) == 1
    assert "secrets.password_in_argv" in status.stderr


# -- the simulator daemon's environment ---------------------------------------------------


SECRETS_IN_ENV = {
    "GUARDRAILS_OPERATOR_TOKEN": "operator-token-0123456789abcdef",
    "GUARDRAILS_HTTP_KEY": "http-signing-key-abcdef0123456789",
    "GUARDRAILS_EVM_KEY": "0x" + "ab" * 32,
    "GUARDRAILS_KEYSTORE_PASSWORD": "keystore-pass-9876",
    "GUARDRAILS_REDIS_PASSWORD": PASSWORD,
    "GUARDRAILS_REDIS_URL": f"redis://u:{PASSWORD}@h:1/0",
    "SOME_VENDOR_API_SECRET": "vendor-secret-5555",
}


@pytest.mark.usefixtures("secrets_in_env")
def test_simulator_daemon_when_started_by_a_process_holding_secrets_then_environ_has_none(
) -> None:
    # Arrange
    spec = daemon.MarketSpec(
        PaperVenueConfig.model_validate({"name": "envcheck", "seed": 1, "step": "1h",
                                         "start_prices": {"BTC-USD": "60000.00",
                                                          "ETH-USD": "3000.00"}}),
        DEFAULT_RISK, 1)
    root = Path(os.environ["GUARDRAILS_STATE_DIR"]) / "simulator"
    try:
        # Act
        url = daemon.ensure_running(spec, root=root)
        pid = int(daemon.status(root)["pid"])
        environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    finally:
        daemon.stop(root=root)

    # Assert: the daemon ran (it answered) and holds none of the starter's secrets
    assert url.startswith("http://127.0.0.1:")
    _assert_no_secrets(environ)


def test_cli_when_uncaught_exception_quotes_a_url_then_traceback_masked() -> None:
    # Act: a crash whose message quotes a credential-bearing URL, in a CLI process
    code = ("from guardrails import cli; cli.install_masked_excepthook(); "
            f"raise RuntimeError('cannot use redis://u:{PASSWORD}@h:1/0')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=subprocess_env(), timeout=60)

    # Assert
    assert done.returncode == 1
    assert "RuntimeError: cannot use redis://u:***@h:1/0" in done.stderr
    assert PASSWORD not in done.stderr


def test_doctor_when_redis_unreachable_then_error_names_target_masked() -> None:
    # Act
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/0"
    done = run_cli("doctor", "--manifest", "", "--json", env={"GUARDRAILS_REDIS_URL": url})

    # Assert
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"].startswith(f"Redis at redis://{USER}:***@127.0.0.1")
    assert PASSWORD not in done.stdout + done.stderr


# -- every child we spawn gets the allow-listed environment -------------------------------


@pytest.fixture
def secrets_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS_IN_ENV.items():
        monkeypatch.setenv(name, value)


def _assert_no_secrets(environ: str) -> None:
    names = [entry.split("=", 1)[0] for entry in environ.split("\0") if entry]
    assert "PATH" in names  # it really read a child's environment
    for name, value in SECRETS_IN_ENV.items():
        assert name not in names and value not in environ, f"{name} reached the child"
    assert not [n for n in names if n.startswith("GUARDRAILS_")]


@pytest.fixture
def recording_redis_server(tmp_path: Path) -> tuple[Path, Path]:
    """A ``redis-server`` that writes the environment it was started with to a file, then
    execs the real one (redis-server overwrites its own ``/proc/<pid>/environ`` with its
    process title, so the environment is read before it starts): (binary, record)."""
    record = tmp_path / "server.environ"
    script = tmp_path / "redis-server"
    script.write_text(f"#!/bin/sh\n/usr/bin/env -0 > '{record}'\n"
                      f"exec '{server.find_redis_server()}' \"$@\"\n")
    script.chmod(0o700)
    return script, record


@pytest.mark.usefixtures("secrets_in_env")
def test_redis_process_when_parent_holds_secrets_then_server_environ_has_none(
    recording_redis_server: tuple[Path, Path],
) -> None:
    # Arrange
    binary, record = recording_redis_server
    proc = server.RedisProcess(aof=False, binary=str(binary))

    # Act
    proc.start()
    proc.stop()

    # Assert
    _assert_no_secrets(record.read_text())


@pytest.mark.usefixtures("secrets_in_env")
def test_embedded_redis_when_started_by_a_process_holding_secrets_then_environ_has_none(
    recording_redis_server: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Arrange
    binary, record = recording_redis_server
    monkeypatch.setenv(server.REDIS_SERVER_ENV, str(binary))

    # Act: the daemonized per-user server outlives its starter, environment and all
    embedded.ensure_running()
    embedded.stop()

    # Assert
    _assert_no_secrets(record.read_text())


@pytest.mark.usefixtures("secrets_in_env")
def test_simulator_process_when_parent_holds_secrets_then_environ_has_none() -> None:
    # Arrange
    sim = daemon.SimulatorProcess(seed=1)

    # Act
    url = sim.start()
    try:
        assert sim.proc is not None
        environ = Path(f"/proc/{sim.proc.pid}/environ").read_text(errors="replace")
    finally:
        sim.stop()

    # Assert: it answered, and holds none of the starter's secrets
    assert url.startswith("http://127.0.0.1:")
    _assert_no_secrets(environ)


def test_child_environment_when_secrets_and_locale_then_only_allow_listed_names() -> None:
    env = {**SECRETS_IN_ENV, "PATH": "/bin", "LC_ALL": "C.UTF-8", "HOME": "/home/x"}
    assert redacted.child_environment(env) == {"PATH": "/bin", "LC_ALL": "C.UTF-8"}


# -- a malformed Redis URL is refused without quoting its password ------------------------

# Each fragment of the password would be what a parser that cut it short quotes back.
FRAGMENTED = "Frag1/Frag2?Frag3#Frag4[Frag5"


@pytest.mark.parametrize(("url", "why"), [
    (f"redis://:{FRAGMENTED}@h:1/0", "percent-encoded"),
    ("redis://:Frag1#Frag2@h:1/0", "percent-encoded"),
    ("redis://user:Frag1/Frag2@h:1/0", "percent-encoded"),
    ("redis://Frag1/Frag2@h:1/0", "percent-encoded"),  # a lone userinfo is a password
    ("redis://user:Frag1", "the port is not a number"),  # the host forgotten
    ("redis://:Frag1@h:notaport/0", "the port is not a number"),
    ("redis://:Frag1@h:99999/0", "the port is out of range"),
    ("redis://:Frag1@[::1/0", "unbalanced"),
])
async def test_redis_url_when_malformed_then_refusal_names_the_fault_without_the_password(
    tmp_path: Path, url: str, why: str,
) -> None:
    # Arrange
    config = write_config(tmp_path / "run.toml", redis_url="embedded", account="sec")

    # Act: every door a URL comes in by
    connect_problem = load_problem = None
    problem = redis_url_problem(url)
    try:
        await connect.connect(url)
    except ConfigError as e:
        connect_problem = str(e)
    try:
        load_config(config, url)
    except ConfigError as e:
        load_problem = str(e)

    # Assert
    for text in (problem, connect_problem, load_problem):
        assert text is not None and why in text
        assert "Frag" not in text, text


def test_ha_target_repr_when_parsed_then_no_password() -> None:
    target = connect.parse_ha_url(
        f"redis+sentinel://u:{PASSWORD}@h:1/m?sentinel_password=Sentinel-pw-81")
    assert PASSWORD not in repr(target) and "Sentinel-pw-81" not in repr(target)
    assert target.password == PASSWORD


@pytest.mark.parametrize("url", [
    "redis+sentinel://:Frag1?Frag2@h:1/master",
    "redis+sentinel://:Frag1?Frag2@h:1/m/0",
    "redis+sentinel://:Frag1/Frag2@h:1/m/notadb",
    "redis+cluster://:Frag1?Frag2@h:1",
])
def test_ha_url_when_malformed_then_refusal_names_the_fault_without_the_password(
    url: str,
) -> None:
    # Act
    with pytest.raises(connect.RedisUrlError) as err:
        connect.parse_ha_url(url)

    # Assert
    assert "not host:port" in str(err.value) or "not a number" in str(err.value)
    assert "Frag" not in str(err.value), str(err.value)


# -- config objects: reprs and validation errors ------------------------------------------

_EVM_CONFIG: dict[str, object] = {
    "account": {"venue": "evm-1", "id": "0x" + "1" * 40},
    "redis": {"url": f"redis://u:{PASSWORD}@h:1/0"},
    "risk": {"max_order_notional": "1", "max_gross_exposure": "1", "daily_loss_limit": "1",
             "instruments": {"ETH-USD": {"tick": "0.01", "lot": "0.0001", "max_position": "1"}}},
    "venue": {"kind": "evm", "rpc_url": "https://eth.example/v2/RpcKey0123456789abcdef",
              "chain_id": 1, "max_fee_per_gas": 10, "max_priority_fee_per_gas": 1},
    "notify": [{"kind": "webhook", "url": "https://hooks.example/services/T0/HookTok0123456"}],
}
_CONFIG_SECRETS = (PASSWORD, "RpcKey0123456789abcdef", "HookTok0123456")


def test_config_repr_when_urls_carry_credentials_then_masked_and_endpoints_named() -> None:
    # Arrange
    cfg = parse_config(_EVM_CONFIG)

    # Act
    shown = [repr(cfg), str(cfg), repr(cfg.venue), str(cfg.notify[0])]

    # Assert
    for text in shown:
        for secret in _CONFIG_SECRETS:
            assert secret not in text, text
    assert "rpc_url='https://eth.example/…'" in shown[0]
    assert "url='https://hooks.example/…'" in shown[0]
    assert "url='redis://u:***@h:1/0'" in shown[0]


@pytest.mark.parametrize("change", [
    # a section's own rule: pydantic quotes the section (its rpc_url last, in the repr's tail)
    {"venue": {"kind": "evm", "chain_id": 1, "max_fee_per_gas": 10, "max_priority_fee_per_gas": 100,
               "rpc_url": "https://eth.example/v2/RpcKey0123456789abcdef"}},
    {"venue": {**_EVM_CONFIG["venue"], "chain_id": "one"}},  # type: ignore[dict-item]
    {"notify": [{"kind": "webhook", "url": "ftp://hooks.example/services/T0/HookTok0123456"}]},
    {"redis": {"url": f"redis://u:{PASSWORD}@h:1/x"}},
    {"account": {"venue": "evm-2", "id": "0x" + "1" * 40}},
])
def test_config_validation_error_when_a_field_is_bad_then_no_input_value_is_quoted(
    change: dict[str, object],
) -> None:
    # Arrange
    data = {**_EVM_CONFIG, **change}

    # Act: pydantic's own message (what a caller that lets it escape prints) and ours
    with pytest.raises(ValidationError) as raw:
        Config.model_validate(data)
    with pytest.raises(ConfigError) as ours:
        parse_config(data, "bot.toml")

    # Assert
    for text in (str(raw.value), repr(raw.value), str(ours.value)):
        for secret in _CONFIG_SECRETS:
            assert secret not in text, text
    assert str(ours.value).startswith("bot.toml: ")


# -- venue secrets are registered with the scrubber; ledger reasons are masked -------------


def test_mask_text_when_a_venue_answer_echoes_the_signed_request_then_credentials_masked() -> None:
    # Arrange: what exchanges answer to a refused request, and our own log fields
    answers = {
        '{"code":-1022,"msg":"bad","params":"symbol=BTCUSDT&signature=5f2b9c0a77"}':
            '{"code":-1022,"msg":"bad","params":"symbol=BTCUSDT&signature=***"}',
        "X-MBX-APIKEY: Ak9x7Hq2": "X-MBX-APIKEY: ***",
        "Authorization: Bearer eyJhbGc.eyJzdWI": "Authorization: Bearer ***",
        '{"apiKey": "Ak9x7Hq2", "secret": "Sx81"}': '{"apiKey": "***", "secret": "***"}',
        "POLY_PASSPHRASE=pp1 POLY_SIGNATURE=s1": "POLY_PASSPHRASE=*** POLY_SIGNATURE=***",
        # not credentials: the fencing token, a Redis key, the names of env vars
        "event=lease.acquired token=5 key=gr:{a}:lease secret_env=GUARDRAILS_CCXT_SECRET":
            "event=lease.acquired token=5 key=gr:{a}:lease secret_env=GUARDRAILS_CCXT_SECRET",
    }
    # Act / Assert
    for text, shown in answers.items():
        assert redacted.mask_text(text) == shown


def test_venue_secrets_when_loaded_then_scrubbed_from_any_text(tmp_path: Path) -> None:
    # Arrange
    evm_key = "0x" + "5e" * 32
    keystore_password = "keystore-pw-3f9a0c"
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt("0x" + "7a" * 32, keystore_password)))
    ccxt = CcxtVenueConfig.model_validate({"exchange": "binance", "api_key_env": "K",
                                           "secret_env": "S", "password_env": "P"})
    api_key, api_secret, api_password = "ApiKey-6d1e0b", "ApiSecret-90c2ff", "ApiPass-1a2b3c"

    # Act
    signing.load_signer(key_env="EVM", environ={"EVM": evm_key})
    signing.load_signer(key_env="EVM", keystore=keystore, keystore_password_env="KP",
                        environ={"KP": keystore_password})
    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("K", api_key), ("S", api_secret), ("P", api_password)):
            mp.setenv(name, value)
        assert load_credentials(ccxt) is not None
    text = redacted.mask_text(
        f"ValueError: bad key {evm_key} / {evm_key[2:].upper()} / {'7a' * 32}; keystore "
        f"{keystore_password}; ccxt {api_key}:{api_secret}:{api_password}")

    # Assert
    for secret in (evm_key[2:], evm_key[2:].upper(), "7a" * 32, keystore_password, api_key,
                   api_secret, api_password):
        assert secret not in text, text


async def test_ledger_transition_when_reason_echoes_credentials_then_stored_masked(
    redis_client: aioredis.Redis,
) -> None:
    # Arrange: an order in flight, and a venue's refusal that echoes what it was sent
    keys = account_keys()
    await seed(redis_client, keys, risk())
    gate = OrderGate(redis_client, keys, risk())
    admitted = await gate.admit(buy("0.0100"), intent_id="s1", token=TOKEN, holder_id=HOLDER)
    assert isinstance(admitted, Admitted)
    coid = admitted.client_order_id
    redacted.register("VenueSecret-4c0ffee")
    reason = ("HTTP 400: {\"msg\":\"Signature invalid\",\"params\":\"qty=1&signature=9f8e7d6c\","
              "\"echo\":\"VenueSecret-4c0ffee\"} at https://u:UrlPass-77@api.example/v1")

    # Act
    await Ledger(redis_client, keys, risk()).mark_rejected(coid, reason)

    # Assert
    stored = await redis_client.hgetall(keys.order(coid))
    journal = json.dumps(await redis_client.xrange(keys.journal))
    assert stored["state"] == "REJECTED"
    assert "Signature invalid" in stored["reason"] and "signature=***" in stored["reason"]
    for text in (stored["reason"], journal):
        for secret in ("9f8e7d6c", "VenueSecret-4c0ffee", "UrlPass-77"):
            assert secret not in text


def test_webhook_channel_when_shown_then_url_token_hidden_and_registered() -> None:
    # Arrange
    token = "HookTok-5a6b7c8d9e0f1a2b"
    cfg = parse_config({**_EVM_CONFIG, "notify": [
        {"kind": "webhook", "url": f"https://hooks.example/services/T0/{token}"}]})

    # Act
    channels = notify.channels_from_config(cfg.notify)

    # Assert
    assert token not in repr(channels)
    assert token not in redacted.mask_text(f"POST https://hooks.example/services/T0/{token}: 500")


def test_cli_when_password_in_argv_url_in_equals_form_then_warned(
    redis_server: RedisServer,
) -> None:
    # Arrange
    _acl_user(redis_server)
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{redis_server.port}/0"
    # Act: the same URL as one argument with its flag (--redis-url=URL), and as two.
    joined = run_cli("status", f"--redis-url={url}", "--account", "paper:sec")
    split = run_cli("status", "--redis-url", url, "--account", "paper:sec")
    # Assert: both used it and both warned (before: the joined form was checked as a
    # whole, "--redis-url=redis://..." is no Redis URL, so it was never warned about)
    for done in (joined, split):
        assert done.returncode == 1, done.stderr
        assert "secrets.password_in_argv" in done.stderr and PASSWORD not in done.stderr


# -- --redis-url-file: a URL with a password, kept out of argv ----------------------------


def test_redis_url_file_when_0600_then_used_and_no_argv_warning_else_refused(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    # Arrange
    _acl_user(redis_server)
    url_file = tmp_path / "redis.url"
    url_file.write_text(f"redis://{USER}:{PASSWORD}@127.0.0.1:{redis_server.port}/0\n")
    url_file.chmod(0o600)

    # Act
    ok = run_cli("status", "--redis-url-file", str(url_file), "--account", "paper:sec", "--json")
    url_file.chmod(0o640)
    loose = run_cli("status", "--redis-url-file", str(url_file), "--account", "paper:sec")
    both = run_cli("status", "--redis-url", "embedded", "--redis-url-file", str(url_file))

    # Assert: it reached the Redis with the file's credentials (an account with no
    # instance: exit 1 and its document), and warned of nothing
    assert ok.returncode == 1, ok.stderr
    assert json.loads(ok.stdout)["accounts"][0]["account"] == "paper:sec"
    assert "secrets.password_in_argv" not in ok.stderr
    assert loose.returncode == 2 and "chmod 600" in loose.stderr
    assert both.returncode == 2 and "give one of them" in both.stderr
    for done in (ok, loose, both):
        assert PASSWORD not in done.stdout + done.stderr


def test_config_digest_when_only_rpc_key_or_webhook_token_differs_then_equal() -> None:
    # Arrange
    def variant(rpc: str, hook: str) -> str:
        return parse_config({**_EVM_CONFIG, "venue": {**_EVM_CONFIG["venue"], "rpc_url": rpc},  # type: ignore[dict-item]
                             "notify": [{"kind": "webhook", "url": hook}]}).digest()

    # Act
    a = variant("https://eth.example/v2/KeyOne0123456789", "https://hooks.example/s/TokOne")
    b = variant("https://eth.example/v2/KeyTwo0123456789", "https://hooks.example/s/TokTwo")
    c = variant("https://other.example/v2/KeyOne0123456789", "https://hooks.example/s/TokOne")

    # Assert: no guessing oracle for the key or the token; another node is another config
    assert a == b
    assert a != c


def test_doctor_finding_when_message_quotes_a_credential_then_masked() -> None:
    # Arrange: a finding is printed, put in --json and sent to the alert channels
    census = Census()

    # Act
    census.add("unidentified_process", None,
               f"pid 7 runs `guardrails run` but cannot reach redis://u:{PASSWORD}@h:1/0",
               f"retry with redis://u:{PASSWORD}@h:1/0")

    # Assert
    finding = census.findings[0].to_json()
    assert PASSWORD not in json.dumps(finding)
    assert "redis://u:***@h:1/0" in finding["message"]


def test_alert_when_a_crash_quotes_a_secret_then_text_and_fields_masked() -> None:
    # Arrange: alerts leave the host (a webhook, Telegram)
    redacted.register("StratSecret-0d1e2f")
    got: list[notify.Alert] = []
    router = notify.AlertRouter("paper:demo", got.append)

    # Act
    router.on_event("strategy.crashed", {"strategy": "mm",
                                     "error": f"ValueError: StratSecret-0d1e2f at redis://:{PASSWORD}@h"})

    # Assert
    assert len(got) == 1 and got[0].event == "strategy_crashed"
    sent = json.dumps(got[0].as_json())
    assert "StratSecret-0d1e2f" not in sent and PASSWORD not in sent
    assert "ValueError" in got[0].text


@pytest.mark.usefixtures("secrets_in_env")
def test_chaos_bots_when_the_caller_holds_secrets_then_only_the_sandbox_settings(
    tmp_path: Path,
) -> None:
    # Arrange: the chaos run starts real bots; the shell that started it may hold real keys
    run = harness.Harness(harness.RunOptions(duration_s=1, seed=1, instances=1,
                                             report_path=tmp_path / "r.json", workdir=tmp_path))

    # Act
    env = run.env()

    # Assert
    for name in SECRETS_IN_ENV:
        assert name not in env
    assert env["GUARDRAILS_STATE_DIR"] == str(tmp_path / "state") and "PATH" in env


def test_venue_error_excerpt_when_the_cut_falls_inside_a_secret_then_no_half_of_it() -> None:
    # Arrange: a ccxt error whose 160-character excerpt would end inside a registered secret
    secret = "CutSecret-0123456789abcdef"
    redacted.register(secret)
    error = ccxt_errors.InvalidOrder("x" * 150 + secret + " rest of the answer")

    # Act
    reason = classify_submit_error(error)

    # Assert
    assert isinstance(reason, Rejected) and reason.reason.startswith("InvalidOrder: xxx")
    assert "CutSecret" not in reason.reason and "***" in reason.reason
