"""Submit overhead of the ccxt venue against a bare signed HTTP POST of the same order.

What is timed: one ``await CcxtVenue.submit(order)`` (exactness checks, recvWindow fence,
the venue building ccxt's request for a spot limit order, the unmodified ccxt ``binance``
class signing and sending ``POST /api/v3/order`` through its endpoint method
``privatePostOrder``, mapping errors and parsing the JSON answer) against one bare
``aiohttp`` POST of the same Binance request (the same parameters, HMAC-SHA256 signed,
the JSON answer parsed), to the same Binance-protocol simulator process on loopback, in
the same run. The two alternate order by order (the order inside each pair alternating
too), so drift on the shared box lands on both. Both ask for Binance's short ``ACK``
answer (as the venue does: the order id is all a submit needs). Every order rests
(priced 10 % under the mark), so neither side fills.
Target (issue 11): ccxt p50 <= 1.5 x bare POST p50.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from bench.core import Row, fmt_pair, not_measured, p50, p99, progress, summary_ms, verdict

NAME = "ccxtvenue"
TARGET = "ccxt p50 ≤ 1.5 × bare POST p50"
RATIO = 1.5
SYMBOL = "BTC/USDT"

_CONFIG = """
[account]
venue = "binance"
id = "bench"
[risk]
max_order_notional = "100000000"
max_gross_exposure = "100000000"
daily_loss_limit = "1000000"
[risk.instruments."BTC/USDT"]
tick = "0.01"
lot = "0.0001"
max_position = "1000"
[venue]
kind = "ccxt"
exchange = "binance"
url = "http://127.0.0.1:1"
[venue.simulator]
step = "1h"
start_prices = { "BTC/USDT" = "60000.00" }
"""


async def run(*, quick: bool) -> list[Row]:
    try:
        from guardrails.config import load_config
        from guardrails.model import Order, Side
        from guardrails.sim.daemon import SimulatorProcess
        from guardrails.venues.base import Accepted
        from guardrails.venues.ccxt import CcxtVenue, Credentials
    except ImportError as e:
        return [not_measured(NAME, "submit p50 / p99", TARGET, f"ccxt venue missing ({e})")]
    pairs = 100 if quick else 400
    warmup = 20
    key, secret = "bench-key", uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="gr-bench-ccxt-") as tmp:
        cfg_path = Path(tmp) / "bench.toml"
        cfg_path.write_text(_CONFIG)
        keys = Path(tmp) / "keys.json"
        keys.touch(mode=0o600)
        keys.write_text(json.dumps({key: secret}))
        sim = SimulatorProcess(config=str(cfg_path), protocol="binance", keys_file=keys)
        url = sim.start()
        cfg = load_config(cfg_path)
        venue_cfg = cfg.venue.model_copy(update={"url": url, "enable_rate_limit": False})
        venue = CcxtVenue(venue_cfg, cfg.account_id, risk=cfg.risk,  # type: ignore[arg-type]
                          credentials=Credentials(key, secret))
        session = aiohttp.ClientSession()
        try:
            await venue.start()
            mark = (await venue.marks([SYMBOL]))[SYMBOL]
            price = (mark * Decimal("0.9")).quantize(Decimal("0.01"))
            progress(NAME, f"{pairs} interleaved ccxt / bare POST submits (+{warmup} warm-up)")
            ccxt_ms: list[float] = []
            bare_ms: list[float] = []
            for i in range(-warmup, pairs):
                for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                    coid = "c" + uuid.uuid4().hex[:31]
                    deadline = time.time_ns() // 1_000_000 + 30_000
                    if which == 0:
                        order = Order(coid, SYMBOL, Side.BUY, Decimal("0.0010"), price, 1, deadline)
                        t = time.perf_counter_ns()
                        result = await venue.submit(order)
                        d = (time.perf_counter_ns() - t) / 1e6
                        if not isinstance(result, Accepted):
                            raise RuntimeError(f"ccxt submit not accepted: {result}")
                        if i >= 0:
                            ccxt_ms.append(d)
                    else:
                        t = time.perf_counter_ns()
                        body = await _bare_post(session, url, key, secret, coid, str(price),
                                                deadline)
                        d = (time.perf_counter_ns() - t) / 1e6
                        if body.get("clientOrderId") != coid:
                            raise RuntimeError(f"bare POST not accepted: {body}")
                        if i >= 0:
                            bare_ms.append(d)
        finally:
            await session.close()
            await venue.close()
            sim.stop()
    ratio = p50(ccxt_ms) / p50(bare_ms)
    return [Row(
        NAME, "ccxt venue submit p50 / p99",
        f"{fmt_pair(p50(ccxt_ms), p99(ccxt_ms))}  ({ratio:.2f}× bare POST p50)",
        target=TARGET, status=verdict(ratio <= RATIO),
        baseline=f"bare signed POST {fmt_pair(p50(bare_ms), p99(bare_ms))}",
        note=f"{pairs} interleaved pairs of resting BTC/USDT limit orders to `venue serve "
        "--protocol binance` on 127.0.0.1 (its own process); ccxt's rate limiter off (the "
        "gate's throttle is the account's limit); the bare POST is aiohttp + hmac with the "
        "same parameters",
        data={"ccxt": summary_ms(ccxt_ms), "bare": summary_ms(bare_ms),
              "ratio_p50": round(ratio, 3), "ratio_p99": round(p99(ccxt_ms) / p99(bare_ms), 3),
              "pid": os.getpid()},
    )]


async def _bare_post(session: aiohttp.ClientSession, url: str, key: str, secret: str,
                     coid: str, price: str, deadline_ms: int) -> dict[str, object]:
    """The same Binance order request ccxt sends, built and signed by hand."""
    now = time.time_ns() // 1_000_000
    query = urlencode({
        "symbol": "BTCUSDT", "side": "BUY", "newClientOrderId": coid,
        "newOrderRespType": "ACK", "type": "LIMIT", "quantity": "0.0010", "price": price,
        "timeInForce": "GTC", "timestamp": now, "recvWindow": min(deadline_ms - now, 60_000),
    })
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    async with session.post(
        url + "/api/v3/order", data=f"{query}&signature={signature}",
        headers={"X-MBX-APIKEY": key, "Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        body: dict[str, object] = await resp.json()
        return body
