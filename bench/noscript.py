"""The gate against the same decision made *without* a script: WATCH / reads / MULTI-EXEC.

``_decide`` is a faithful composition of ``guardrails/lua/gate_admit.lua`` for the
admitted path: the same keys are read (schema, limits, positions, reservations, trading
state, lease value and PTTL, the intent's prior decision, marks, server TIME, throttle,
today's realized PnL, the order record, the open set), the same integer checks are done
in Python (schema, state, fence, idempotency, sanity, notional, price band, throttle,
position limit, gross exposure, daily loss), and the same writes are sent in one
MULTI/EXEC (journal XADD, order HSET, open SADD, reservation HINCRBYs, throttle,
intent record, stats) — retried on a WATCH conflict. Every key the decision reads is
WATCHed first, as optimistic locking requires.

Two shapes are measured, each interleaved with the gate in the same run:
- **sequential reads** (the redis-py documented pattern: ``pipe.watch(...)`` then each
  read answered before the next) — the figure the target applies to (issue 3: gate ≥ 5×
  faster than "WATCH/MULTI with reads");
- **pipelined reads** (WATCH, then all reads in one round trip on the watched
  connection, then MULTI/EXEC: three round trips) — the fastest no-script shape,
  reported for information.
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from bench import gatesetup
from bench.account import HOLDER, account, available, intent
from bench.core import Row, fmt_pair, not_measured, p50, p99, progress, redis_server, summary_ms
from bench.core import verdict as verdict_of
from guardrails.keys import SCHEMA_VERSION, AccountKeys
from guardrails.model import Intent, client_order_id_for

NAME = "noscript"
TARGET = "gate ≥ 5× faster (p50)"


class Refused(Exception):
    """The composition would deny: never expected in the benchmark (setup admits all)."""


def _dec(s: str) -> tuple[int, int]:
    ip, _, fp = s.partition(".")
    fp = fp.rstrip("0")
    return int((ip + fp).lstrip("0") or "0"), len(fp)


def _units(m: int, s: int, um: int, us: int) -> int:
    num, den = (m * 10 ** (us - s), um) if us >= s else (m, um * 10 ** (s - us))
    if num % den:
        raise Refused("off tick/lot")
    return num // den


def _check(r: dict[str, Any], it: Intent, iid: str, coid: str, token: int) -> dict[str, Any]:
    """gate_admit.lua's checks 1-11 on values read from Redis; returns what to write."""
    if r["schema"] != str(SCHEMA_VERSION):
        raise Refused("schema")
    lim = r["limits"]
    if r["state"] == "HALTED" or r["state"] not in (None, "ACTIVE"):
        raise Refused("state")
    if r["lease"] != f"{token}:{HOLDER}" or r["pttl"] <= 0:
        raise Refused("fence")
    if r["prior"] is not None:
        raise Refused("duplicate")
    side = 1 if it.side.value == "buy" else -1
    tm, ts, lm, ls, k, max_lots = (int(x) for x in lim[6].split())
    lots = _units(*_dec(format(it.qty, "f")), lm, ls)
    ticks = _units(*_dec(format(it.price, "f")), tm, ts)
    max_notional, max_gross, loss_limit, band_ppm, rate_milli, burst = (int(x) for x in lim[:6])
    if lots * ticks * k > max_notional:
        raise Refused("notional")
    marks = r["marks"]
    mark = int(marks[it.symbol])
    if abs(ticks - mark) * 1_000_000 > band_ppm * mark:
        raise Refused("band")
    now_ms = int(r["time"][0]) * 1000 + int(r["time"][1]) // 1000
    cap = burst * 1000
    tokens = cap
    if r["throttle"][0] is not None:
        elapsed = min(max(0, now_ms - int(r["throttle"][1])), 1_000_000_000)
        tokens = min(cap, int(r["throttle"][0]) + elapsed * rate_milli // 1000)
    if tokens < 1000:
        raise Refused("throttle")
    pos, res = r["positions"], r["reservations"]
    sym = it.symbol
    sname = "buy" if side == 1 else "sell"
    p = int(pos.get(f"{sym}:qty", 0))
    same = int(res.get(f"{sym}:{sname}", 0))
    after = abs(p + side * (same + lots))
    if after > max_lots and after > abs(p + side * same):
        raise Refused("position")
    kinds = ("qty", "buy", "sell")
    syms = {f.rsplit(":", 1)[0] for f in [*pos, *res] if f.rsplit(":", 1)[1] in kinds}
    syms.add(sym)
    g0 = g1 = 0
    for s in syms:
        sp, sb, ss = (int(pos.get(f"{s}:qty", 0)), int(res.get(f"{s}:buy", 0)),
                      int(res.get(f"{s}:sell", 0)))
        w0 = w1 = max(abs(sp + sb), abs(sp - ss))
        if s == sym:
            sb, ss = (sb + lots, ss) if side == 1 else (sb, ss + lots)
            w1 = max(abs(sp + sb), abs(sp - ss))
        g0 += w0 * int(marks[s]) * k
        g1 += w1 * int(marks[s]) * k
    if g1 > max_gross and g1 > g0:
        raise Refused("gross")
    used = max(0, -int(r["realized_pnl"] or 0))
    for s in syms:
        c, sp = int(pos.get(f"{s}:cost", 0)), int(pos.get(f"{s}:qty", 0))
        if sp or c:
            unreal = sp * int(marks[s]) * k - c
            used += max(0, -unreal)
        used += int(res.get(f"{s}:loss", 0))
    wl = (max(0, side * (ticks - mark)) + math.ceil(ticks * band_ppm / 1_000_000)) * k
    if used + lots * wl > loss_limit:
        raise Refused("daily loss")
    if r["order_state"] is not None:
        raise Refused("order exists")
    return {"lots": lots, "ticks": ticks, "wl": wl, "loss": lots * wl, "tokens": tokens,
            "now_ms": now_ms, "deadline": now_ms + r["pttl"], "side": sname}


def _reads(keys: AccountKeys, it: Intent, iid: str, coid: str, day: str) -> list[tuple[str, ...]]:
    return [
        ("GET", keys.schema),
        ("HMGET", keys.limits, "max_order_notional", "max_gross_exposure", "daily_loss_limit",
         "band_ppm", "rate_milli", "burst", f"i:{it.symbol}"),
        ("HGETALL", keys.positions),
        ("HGETALL", keys.reservations),
        ("HGET", keys.state, "state"),
        ("GET", keys.lease),
        ("PTTL", keys.lease),
        ("HGET", keys.intents, iid),
        ("HGETALL", keys.marks),
        ("TIME",),
        ("HMGET", keys.throttle, "tokens", "ts_ms"),
        ("HGET", keys.day(day), "realized_pnl"),
        ("HGET", keys.order(coid), "state"),
        ("SISMEMBER", keys.open_orders, coid),
    ]


def _pairs(v: Any) -> dict[str, str]:
    if isinstance(v, dict):
        return v
    return dict(zip(v[::2], v[1::2], strict=True))


def _named(replies: list[Any]) -> dict[str, Any]:
    names = ["schema", "limits", "positions", "reservations", "state", "lease", "pttl", "prior",
             "marks", "time", "throttle", "realized_pnl", "order_state", "is_open"]
    r = dict(zip(names, replies, strict=True))
    for h in ("positions", "reservations", "marks"):
        r[h] = _pairs(r[h])
    r["pttl"] = int(r["pttl"])
    return r


def _queue_writes(pipe: Any, keys: AccountKeys, it: Intent, iid: str, coid: str, day: str,
                  token: int, w: dict[str, Any]) -> None:
    lots, ticks, now, dl = str(w["lots"]), str(w["ticks"]), str(w["now_ms"]), str(w["deadline"])
    qty, price = format(it.qty, "f"), format(it.price, "f")
    pipe.xadd(keys.journal, {"ev": "admit", "coid": coid, "intent_id": iid, "symbol": it.symbol,
                             "side": w["side"], "lots": lots, "ticks": ticks, "token": token,
                             "holder": HOLDER, "deadline_ms": dl, "nonce": "-", "day": day},
              maxlen=100_000, approximate=True)
    pipe.hset(keys.order(coid), mapping={
        "coid": coid, "intent_id": iid, "symbol": it.symbol, "side": w["side"], "qty": qty,
        "price": price, "lots": lots, "ticks": ticks, "filled_lots": "0", "open_lots": lots,
        "wl": str(w["wl"]), "state": "PENDING_SUBMIT", "token": token, "holder": HOLDER,
        "created_ms": now, "updated_ms": now, "deadline_ms": dl, "nonce": "-", "day": day})
    pipe.sadd(keys.open_orders, coid)
    pipe.hincrby(keys.reservations, f"{it.symbol}:{w['side']}", w["lots"])
    pipe.hincrby(keys.reservations, f"{it.symbol}:loss", w["loss"])
    pipe.hset(keys.throttle, mapping={"tokens": w["tokens"] - 1000, "ts_ms": now})
    pipe.hset(keys.intents, iid, f"{coid}|{token}|{dl}|-")
    pipe.hincrby(keys.stats, "admitted", 1)


def _watched(keys: AccountKeys, coid: str, day: str) -> list[str]:
    return [keys.schema, keys.limits, keys.positions, keys.reservations, keys.state, keys.lease,
            keys.intents, keys.marks, keys.throttle, keys.day(day), keys.order(coid),
            keys.open_orders]


async def decide(client: aioredis.Redis, gate: Any, it: Intent, *, pipelined: bool) -> int:
    """One admission without a script; returns the number of WATCH retries it took."""
    keys: AccountKeys = gate._keys
    iid = it.intent_id or ""
    coid = client_order_id_for(iid)
    day = gate._day.today()
    reads = _reads(keys, it, iid, coid, day)
    retries = 0
    while True:
        async with client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(*_watched(keys, coid, day))
                if pipelined:
                    conn = pipe.connection
                    assert conn is not None  # pinned by WATCH
                    await conn.send_packed_command(conn.pack_commands(reads))
                    replies = [await conn.read_response() for _ in reads]
                else:
                    replies = [await pipe.execute_command(*cmd) for cmd in reads]
                w = _check(_named(replies), it, iid, coid, gatesetup.TOKEN)
                pipe.multi()
                _queue_writes(pipe, keys, it, iid, coid, day, gatesetup.TOKEN, w)
                await pipe.execute()
                return retries
            except WatchError:
                retries += 1


async def run(*, quick: bool) -> list[Row]:
    why = available("guardrails.gate")
    if why:
        return [not_measured(NAME, "no-script (sequential reads) / gate", TARGET, why)]
    pairs = 500 if quick else 2_000
    samples: dict[str, list[float]] = {"gate": [], "seq": [], "pipe": []}
    with redis_server() as server:
        client = aioredis.Redis.from_url(server.url, decode_responses=True)
        try:
            gate = await gatesetup.seed(client, account())
            n = 0
            progress(NAME, f"{pairs} interleaved rounds of gate / sequential / pipelined")
            for i in range(-100, pairs):
                order = ["gate", "seq", "pipe"]
                k = i % 3
                for which in order[k:] + order[:k]:
                    it = intent(n)
                    n += 1
                    t = time.perf_counter_ns()
                    if which == "gate":
                        await gatesetup.admit(gate, it)
                    else:
                        await decide(client, gate, it, pipelined=which == "pipe")
                    if i >= 0:
                        samples[which].append((time.perf_counter_ns() - t) / 1e6)
                if i > 0 and i % 500 == 0:
                    progress(NAME, f"{i}/{pairs}")
            admitted = int(await client.hget(gate._keys.stats, "admitted") or 0)
        finally:
            await client.aclose()
    g, s, pp = samples["gate"], samples["seq"], samples["pipe"]
    if admitted != n:
        raise RuntimeError(f"stats say {admitted} admitted, {n} decisions were made")
    ratio_s, ratio_p = p50(s) / p50(g), p50(pp) / p50(g)
    note = (f"{pairs} interleaved rounds; the composition reads the same 14 values, runs the "
            "same integer checks in Python and writes the same records in MULTI/EXEC "
            "(bench/noscript.py); no WATCH conflicts (single client)")
    return [
        Row(NAME, "no-script, sequential reads p50 / p99", fmt_pair(p50(s), p99(s)),
            target=TARGET, status=verdict_of(ratio_s >= 5.0),
            baseline=f"gate {fmt_pair(p50(g), p99(g))} -> gate {ratio_s:.1f}× faster",
            note=note,
            data={"gate": summary_ms(g), "sequential": summary_ms(s), "ratio_p50": ratio_s}),
        Row(NAME, "no-script, pipelined reads p50 / p99 (3 round trips)",
            fmt_pair(p50(pp), p99(pp)),
            target="(info)", status="INFO",
            baseline=f"gate {fmt_pair(p50(g), p99(g))} -> gate {ratio_p:.1f}× faster",
            data={"pipelined": summary_ms(pp), "ratio_p50": ratio_p}),
    ]
