"""One exchange account, one account id: the ccxt venue's account is claimed in Redis.

Reproduces the founding incident through the ccxt venue: two configs with account ids
``t1`` and ``T1`` (or ``t2``) and one Binance API key each got their own lease, limits and
budget over one exchange account. Now the venue learns which exchange account its key
trades (Binance's ``uid`` from ``GET /api/v3/account``; without one, a domain-separated
SHA-256 of the API key) and ``identity.claim_account`` binds it to one account id.

Real ``guardrails run`` processes and ``guarded()`` bots, the unmodified ccxt ``binance``
class against the Binance-protocol simulator, real redis-servers on free ports.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis as redis_sync

from guardrails import GuardError
from guardrails.ccxt import guarded
from guardrails.config import load_config
from guardrails.keys import exchange_claim
from guardrails.sim import binance as sb
from guardrails.sim.server import Simulator
from tests.redis_harness import RedisServer
from tests.run_harness import RunProc
from tests.test_ccxt_guarded import plain_exchange
from tests.test_ccxt_guarded import write_config as write_guarded_config
from tests.test_venue_ccxt_processes import KEY_ENV, SECRET_ENV, Exchange, setup

OWNER = "binance:t1"


def _as(cfg: Path, account: str) -> Path:
    """A copy of the config ``cfg`` whose ``[account] id`` is ``account``."""
    text = cfg.read_text()
    for old in ('id = "t1"', 'id = "guarded"'):
        text = text.replace(old, f'id = "{account}"', 1)
    path = cfg.with_name(f"{account}.toml")
    path.write_text(text)
    return path


def _claims(redis_server: RedisServer) -> dict[str, str]:
    client: redis_sync.Redis = redis_server.client()
    return {k: client.get(k) for k in client.scan_iter("gr:exchange:*")}


def _uid_claim(account: str) -> str:
    return exchange_claim("binance", "uid", str(sb.sim_uid(account)))


def _key_claim(api_key: str) -> str:
    digest = hashlib.sha256(f"guardrails ccxt api key|binance|{api_key}".encode()).hexdigest()
    return exchange_claim("binance", "key", digest)


def _second_of_two(tmp: Path, redis_url: str, exchange: Exchange, b_account: str, *,
                   keys: tuple[dict[str, str], dict[str, str]] | None = None,
                   standby: bool = False) -> tuple[RunProc, RunProc, int | None, bool]:
    """``t1`` runs against ``exchange`` until active, then ``b_account`` starts (``keys``:
    the two processes' credentials, default the exchange's one key): (A, B, B's exit code
    or None once B stood by, whether A and a standby B were still running)."""
    a_cfg = setup(tmp, redis_url, exchange)
    b_cfg = a_cfg if b_account == "t1" else _as(a_cfg, b_account)
    a_env, b_env = ({**exchange.env(), **k} for k in keys or ({}, {}))
    started: list[RunProc] = []
    try:
        first = RunProc("a", a_cfg, tmp, env=a_env).start()
        started.append(first)
        first.wait_for("runtime.active", timeout=90)
        second = RunProc("b", b_cfg, tmp, env=b_env, standby=standby).start()
        started.append(second)
        rc = None
        if standby:
            second.wait_for("lease.standby", timeout=60)
        else:
            rc = second.wait_exit(timeout=60)
        return first, second, rc, first.running() and (rc is not None or second.running())
    finally:
        for p in started:
            p.cleanup()
        if exchange.proc is not None:
            exchange.proc.stop()


# -- guardrails run: two processes ---------------------------------------------------------


@pytest.mark.slow
def test_run_when_two_account_ids_share_one_api_key_then_second_refused_naming_owner(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    # Arrange + Act: the incident — "t1" and "T1", one Binance key, one exchange account.
    exchange = Exchange(tmp_path)
    a, b, rc, running = _second_of_two(tmp_path, redis_server.url, exchange, "T1")
    # Assert: B never stood for its lease; the message names the owner and the way out.
    assert rc == 2, b.text()[-3000:]
    text = b.text()
    assert f"already belongs to account {OWNER}" in text and "--standby" in text
    assert _uid_claim(sb.account_label(exchange.key)) in text
    assert not b.events("lease.acquired") and not b.events("runtime.active")
    assert running
    assert exchange.key not in text + a.text() and exchange.secret not in text + a.text()
    assert _claims(redis_server) == {_uid_claim(sb.account_label(exchange.key)): OWNER}


@pytest.mark.slow
def test_run_when_same_account_id_twice_then_second_is_standby_and_one_claim(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    exchange = Exchange(tmp_path)
    _, b, rc, running = _second_of_two(tmp_path, redis_server.url, exchange, "t1",
                                       standby=True)
    # Assert: the claim is t1's, B found it its own and waits as the standby.
    assert rc is None and running and not b.events("lease.acquired")
    assert b.events("identity.exchange_account_claimed", account=OWNER)
    assert _claims(redis_server) == {_uid_claim(sb.account_label(exchange.key)): OWNER}


@pytest.mark.slow
def test_run_when_two_keys_of_one_exchange_account_then_second_account_id_refused(
    redis_server: RedisServer, tmp_path: Path,
) -> None:
    # Arrange: two API keys of one exchange account ("desk": one uid), two account ids.
    k1, s1, k2, s2 = (uuid.uuid4().hex for _ in range(4))
    exchange = Exchange(tmp_path, more_keys={k1: {"secret": s1, "account": "desk"},
                                             k2: {"secret": s2, "account": "desk"}})
    # Act
    _, b, rc, _ = _second_of_two(tmp_path, redis_server.url, exchange, "t2",
                                 keys=({KEY_ENV: k1, SECRET_ENV: s1},
                                       {KEY_ENV: k2, SECRET_ENV: s2}))
    # Assert
    assert rc == 2, b.text()[-3000:]
    assert f"already belongs to account {OWNER}" in b.text()
    assert not b.events("lease.acquired")
    assert _claims(redis_server) == {_uid_claim("desk"): OWNER}


# -- guarded(): the library entry point ---------------------------------------------------


class Sim:
    def __init__(self, url: str, keys: dict[str, str]) -> None:
        self.url, self.keys = url, keys


@pytest.fixture
async def sim(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
              request: pytest.FixtureRequest) -> AsyncIterator[Sim]:
    """An in-process Binance simulator with two keys (``request.param``: the entries'
    extra fields, e.g. ``{"uid": None}``); the host-lock directory is the test's."""
    monkeypatch.setenv("GUARDRAILS_LOCK_DIR", str(tmp_path / "locks"))
    (tmp_path / "locks").mkdir(mode=0o700)
    cfg = load_config(write_guarded_config(tmp_path / "market.toml", redis_server.url))
    assert cfg.venue.kind == "ccxt" and cfg.venue.simulator is not None
    keys = {"k" + uuid.uuid4().hex: uuid.uuid4().hex for _ in range(2)}
    extra = getattr(request, "param", {})
    exchange = sb.make_exchange(cfg.venue.simulator, cfg.risk)
    front = sb.BinanceSim(exchange, {k: {"secret": s, **extra} for k, s in keys.items()})
    server = Simulator(exchange, app=lambda: sb.build_binance_app(front))
    url = await server.start()
    try:
        yield Sim(url, keys)
    finally:
        await server.stop()


async def _second_guarded_refused(tmp_path: Path, redis_url: str, sim: Sim) -> str:
    """t1 active through ``guarded()``; t2 with the same key enters: its ``GuardError``."""
    [(key, secret), *_] = sim.keys.items()
    first = plain_exchange(sim.url, key, secret)
    second = plain_exchange(sim.url, key, secret)
    t1 = _as(write_guarded_config(tmp_path / "g.toml", redis_url), "t1")
    t2 = _as(t1, "t2")
    try:
        async with guarded(first, config=t1, handle_signals=False) as ex:
            await ex.wait_active()
            with pytest.raises(GuardError) as refused:
                async with guarded(second, config=t2, handle_signals=False):
                    pytest.fail("t2 entered")
            assert ex.guard.role == "active"
    finally:
        await first.close()
        await second.close()
    return str(refused.value)


async def test_guarded_when_two_account_ids_share_one_api_key_then_second_refused(
    redis_server: RedisServer, tmp_path: Path, sim: Sim,
) -> None:
    text = await _second_guarded_refused(tmp_path, redis_server.url, sim)

    key = next(iter(sim.keys))
    assert f"already belongs to account {OWNER}" in text and "t2" in text
    assert _claims(redis_server) == {_uid_claim(sb.account_label(key)): OWNER}


@pytest.mark.parametrize("sim", [{"uid": None}], indirect=True)
async def test_guarded_when_exchange_reports_no_uid_then_key_digest_claimed_and_second_refused(
    redis_server: RedisServer, tmp_path: Path, sim: Sim,
) -> None:
    # Act: Binance's account answer without a uid: the claim falls back to the key's digest.
    text = await _second_guarded_refused(tmp_path, redis_server.url, sim)

    # Assert: refused; the claim is the domain-separated SHA-256 of the key, and the key
    # (and its secret) is nowhere in Redis or in the message.
    key, secret = next(iter(sim.keys.items()))
    assert f"already belongs to account {OWNER}" in text
    assert "no account uid from binance" in text
    assert _claims(redis_server) == {_key_claim(key): OWNER}
    client = redis_server.client(decode_responses=False)
    stored = repr([(k, client.dump(k)) for k in client.scan_iter()])
    for secret_text in (key, secret, hashlib.sha256(key.encode()).hexdigest()):
        assert secret_text not in stored and secret_text not in text


# -- the claim after Redis lost it ---------------------------------------------------------


async def _wait_claim(client: redis_sync.Redis, key: str) -> object:
    """The claim's owner once it is back in Redis (None after 10 s)."""
    deadline = asyncio.get_running_loop().time() + 10.0
    while asyncio.get_running_loop().time() < deadline:
        owner = client.get(key)
        if owner is not None:
            return owner
        await asyncio.sleep(0.1)
    return None


async def test_guarded_when_redis_loses_the_claim_while_t1_runs_then_t1_restores_it_and_t2_refused(
    redis_server: RedisServer, tmp_path: Path, sim: Sim,
) -> None:
    # Arrange: t1 active through guarded(); then Redis loses the claim (the write a restart
    # without persistence or a failover to a stale replica drops; t1's other keys stay).
    [(key, secret), *_] = sim.keys.items()
    first = plain_exchange(sim.url, key, secret)
    second = plain_exchange(sim.url, key, secret)
    t1 = _as(write_guarded_config(tmp_path / "g.toml", redis_server.url), "t1")
    t2 = _as(t1, "t2")
    claim = _uid_claim(sb.account_label(key))
    client: redis_sync.Redis = redis_server.client()
    try:
        async with guarded(first, config=t1, handle_signals=False) as ex:
            await ex.wait_active()
            assert client.delete(claim) == 1
            # Act: t1 keeps running; t2, over the same exchange account, starts later.
            restored = await _wait_claim(client, claim)
            with pytest.raises(GuardError) as refused:
                async with guarded(second, config=t2, handle_signals=False):
                    pytest.fail("t2 entered while t1 trades the same exchange account")
            # Assert: the running instance put its claim back; the second was refused.
            assert restored == OWNER
            assert f"already belongs to account {OWNER}" in str(refused.value)
            assert ex.guard.role == "active"
    finally:
        await first.close()
        await second.close()


async def test_guarded_when_another_account_id_took_the_lost_claim_then_running_instance_stops(
    redis_server: RedisServer, tmp_path: Path, sim: Sim,
) -> None:
    # Arrange: t1 active; Redis lost the claim and t2 claimed the exchange account before t1
    # noticed (t2 started in that window): two account ids over one exchange account.
    [(key, secret), *_] = sim.keys.items()
    first = plain_exchange(sim.url, key, secret)
    t1 = _as(write_guarded_config(tmp_path / "g.toml", redis_server.url), "t1")
    claim = _uid_claim(sb.account_label(key))
    client: redis_sync.Redis = redis_server.client()
    try:
        with pytest.raises(GuardError) as refused:
            async with guarded(first, config=t1, handle_signals=False) as ex:
                await ex.wait_active()
                client.set(claim, "binance:t2")
                # Act: t1 keeps going as if nothing happened.
                for _ in range(100):
                    if ex.guard.stopping:
                        break
                    await asyncio.sleep(0.1)
                # Assert (inside): t1 stops on its own: it is not the claim's owner any more.
                assert ex.guard.stopping, "t1 kept running over t2's exchange account"
        assert "already belongs to account binance:t2" in str(refused.value)
        assert "every instance of it stopped" in str(refused.value)  # how to move it
        assert client.get(claim) == "binance:t2"
    finally:
        await first.close()


async def test_guarded_when_claim_taken_while_standby_then_takeover_opens_no_term(
    redis_server: RedisServer, tmp_path: Path, sim: Sim, caplog: pytest.LogCaptureFixture,
) -> None:
    # Arrange: t1 waits as standby behind another holder's lease; meanwhile Redis lost
    # t1's claim and a t2 over the same exchange account took it.
    from guardrails.keys import AccountId, AccountKeys

    [(key, secret), *_] = sim.keys.items()
    first = plain_exchange(sim.url, key, secret)
    t1 = _as(write_guarded_config(tmp_path / "g.toml", redis_server.url), "t1")
    claim = _uid_claim(sb.account_label(key))
    lease = AccountKeys(AccountId("binance", "t1")).lease
    client: redis_sync.Redis = redis_server.client()
    assert client.set(lease, "999999:someone-else", px=60_000)
    caplog.set_level("INFO")
    try:
        with pytest.raises(GuardError) as refused:
            async with guarded(first, config=t1, handle_signals=False) as ex:
                assert ex.guard.role == "standby"
                client.set(claim, "binance:t2")
                # Act: the other holder's lease ends; t1 takes it over
                client.delete(lease)
                for _ in range(150):
                    if ex.guard.stopping:
                        break
                    await asyncio.sleep(0.1)
                assert ex.guard.stopping, "t1 led over t2's exchange account"
    finally:
        await first.close()
    # Assert: refused before the term's first step (reconcile) ran, lease released
    assert "already belongs to account binance:t2" in str(refused.value)
    events = [getattr(r, "event", "") or r.getMessage() for r in caplog.records]
    conflict = next(i for i, e in enumerate(events) if "exchange_account_conflict" in e)
    assert not any("reconcile.done" in e for e in events[:conflict + 1]), events
    assert not any("reconcile.done" in e for e in events), events
    assert client.get(lease) is None
