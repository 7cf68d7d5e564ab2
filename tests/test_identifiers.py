"""Names that become Redis keys, journal entries and venue parameters are checked whole.

What must hold: every identifier pattern refuses a value with a trailing newline (a
``^...$`` pattern used with ``re.match`` accepts ``"acct\\n"``: ``$`` also matches before a
final newline) — an account or venue name (a kill switch must never address keys of a
misspelled account), a configured or ordered symbol, an intent id, and a decimal the
Binance simulator is sent.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from guardrails.keys import AccountId, InvalidAccountId
from guardrails.model import Intent, Side, intent_problem
from guardrails.sim.binance import BinanceError, _decimal
from tests.gatekit import RISK_DICT, risk


@pytest.mark.parametrize(("venue", "account"), [
    ("paper", "acct\n"), ("paper\n", "acct"), ("paper", "acct\n\n"), ("paper", "\nacct"),
    ("paper", ""), ("Paper", "acct"), ("paper", "a b"),
])
def test_account_id_when_not_whole_then_refused(venue: str, account: str) -> None:
    with pytest.raises(InvalidAccountId):
        AccountId(venue, account)


def test_account_id_when_well_formed_then_accepted() -> None:
    assert str(AccountId("paper", "acct-1.x@y_z")) == "paper:acct-1.x@y_z"


@pytest.mark.parametrize("field", ["symbol", "intent_id"])
def test_intent_when_identifier_has_a_trailing_newline_then_refused(field: str) -> None:
    fields = {"symbol": "BTC-USD", "intent_id": "i-1"}
    fields[field] += "\n"
    it = Intent(fields["symbol"], Side.BUY, Decimal("1"), Decimal("1"), intent_id=fields["intent_id"])
    problem = intent_problem(it)
    assert problem is not None and field in problem


def test_config_when_instrument_symbol_has_a_trailing_newline_then_refused() -> None:
    inst = next(iter(RISK_DICT["instruments"].values()))
    with pytest.raises(ValidationError, match="symbol must be"):
        risk(instruments={"BTC-USD\n": inst})


@pytest.mark.parametrize("raw", ["1.5\n", " 1.5", "1.5 ", "1e3", "+1.5"])
def test_binance_sim_when_decimal_is_not_plain_then_refused_as_binance_does(raw: str) -> None:
    with pytest.raises(BinanceError) as e:
        _decimal({"quantity": raw}, "quantity")
    assert e.value.code == -1100
