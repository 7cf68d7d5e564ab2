"""The gate's Python shape checks (model.intent_args, decimal_text) against the script's parser.

What must hold: a qty or price passes Python's check exactly when the gate script's own
decimal parser (``parse_dec`` in gate_admit.lua, run here in a real redis-server) accepts
the string Python sends — so Python never sends what the script will refuse as
malformed, and never refuses what the script would take; the string sent is the value
exactly; ``intent_problem`` and ``intent_args`` agree on every intent.
"""

from __future__ import annotations

import re
from decimal import Decimal

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrails.model import Intent, Side, decimal_text, intent_args, intent_problem
from guardrails.scripts import source as lua_source


def parse_dec_script() -> str:
    """gate_admit.lua's own parse_dec, cut from the script, answering 1 (parsed) or 0."""
    src = lua_source("gate_admit.lua")
    body = re.search(r"^local function parse_dec\(s\)\n.*?^end\n", src, re.M | re.S)
    assert body is not None, "parse_dec is no longer in gate_admit.lua"
    return body.group(0) + "return parse_dec(ARGV[1]) and 1 or 0\n"


# coefficients up to 30 digits and exponents past the 40-character bound both ways; the
# coefficient's trailing zeros matter (the script strips the fraction's, not the integer's)
decimals = st.builds(
    lambda c, z, e: Decimal(f"{c}{'0' * z}E{e}"),
    st.integers(1, 10**30), st.integers(0, 20), st.integers(-60, 45),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v=decimals)
async def test_decimal_text_when_any_decimal_then_accepted_exactly_when_the_script_parses_it(
    redis_client: aioredis.Redis, v: Decimal,
) -> None:
    text, problem = decimal_text(v)
    sent = format(v, "f")
    if len(sent) > 400:  # far out of range: Python refuses without building it
        assert problem is not None and "out of range" in problem
        return
    parsed = await redis_client.eval(parse_dec_script(), 0, sent)
    assert (problem is None) == (parsed == 1), (v, sent, problem)
    if problem is None:
        assert text == sent and Decimal(text) == v


def test_decimal_text_when_more_digits_than_the_decimal_context_then_refused() -> None:
    # normalize() rounds to the context's 28 digits; the string is counted as it is sent
    v = Decimal("1.0000000000000000000000000001")
    assert "significant digits" in (decimal_text(v)[1] or "")
    # trailing zeros past 40 characters: the script refuses the string, so Python does
    assert "40 characters" in (decimal_text(Decimal("1." + "0" * 40))[1] or "")
    # an integer's zeros are digits to the script: 10^15 does not fit its mantissa
    assert "significant digits" in (decimal_text(Decimal(10**15))[1] or "")
    assert decimal_text(Decimal(10**14)) == ("100000000000000", None)
    assert decimal_text(Decimal("1E+2")) == ("100", None)
    assert decimal_text(Decimal("0.0100")) == ("0.0100", None)


intents = st.builds(
    Intent,
    symbol=st.sampled_from(["BTC-USD", "", "bad sym", "x" * 33, 7]),
    side=st.sampled_from([Side.BUY, Side.SELL, "buy"]),
    qty=st.one_of(decimals, st.sampled_from([Decimal("NaN"), Decimal(0), 1.5, True])),
    price=st.one_of(decimals, st.sampled_from([Decimal("-1"), Decimal("Infinity")])),
    intent_id=st.sampled_from([None, "i-1", "", "has space", "x" * 129]),
    tag=st.sampled_from(["", "t", "x" * 129]),
)


@settings(max_examples=300)
@given(it=intents)
def test_intent_args_when_any_intent_then_agrees_with_intent_problem(it: Intent) -> None:
    args = intent_args(it)
    problem = intent_problem(it)
    if problem is None:
        assert args == (format(it.qty, "f"), format(it.price, "f"))
    else:
        assert args == problem
