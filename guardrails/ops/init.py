"""``guardrails init``: write a commented starter config for a chosen venue.

The file it writes is validated by the same loader ``run`` uses before it is written, so
a starter config always loads; it never overwrites an existing file (``--force`` does),
and it never contains a secret — keys and tokens are named by the environment variables
they are read from.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import tomllib
from decimal import Decimal
from pathlib import Path

from guardrails.config import ConfigError, parse_config

_HEADER = """\
# guardrails config — written by `guardrails init --venue {venue}`.
# Every field is documented in docs/config.md; `guardrails run --config {path}` runs it.

[account]
venue = "{account_venue}"     # with id, the account identity: every Redis key derives from it
id = "{account_id}"

[redis]
# "embedded": one redis-server per OS user, started on demand (fine on one machine).
# Several hosts must share one Redis: url = "redis://host:6379/0" (put a password in
# $GUARDRAILS_REDIS_URL, never in argv: every local user can read a command line).
url = "embedded"

[lease]
ttl = "3s"              # a crashed holder is replaced within this
renew_deadline = "2s"   # the holder stops admitting if it has not renewed by then
renew_interval = "500ms"

[risk]
quote_decimals = 6
timezone = "UTC"                # the trading day for the daily loss budget
max_order_notional = "1000"     # per order, in the quote currency
max_gross_exposure = "5000"     # sum of |position| x mark + open reservations
daily_loss_limit = "100"        # realized + unrealized loss per trading day
price_band = "0.05"             # refuse orders priced more than 5 % from the mark
orders_per_second = "2"         # account-wide throttle (set from the venue's published limits)
burst = 5

{instruments}"""

_BTC = """
[risk.instruments.BTC-USD]
tick = "0.01"
lot = "0.0001"
max_position = "0.05"
"""

_VENUES: dict[str, tuple[str, str, str, str]] = {
    # venue: (account venue label, account id, [venue] block, instruments)
    "paper": ("paper", "demo", """
# The paper venue: an exchange simulated inside Redis. No keys, no network.
[venue]
kind = "paper"
start_prices = { BTC-USD = "60000.00" }
""", _BTC),
    "http": ("sim", "mybot", """
# The bundled exchange simulator over HTTP with EIP-712 signed orders. "embedded" starts
# one simulator daemon per user; with no key in $GUARDRAILS_HTTP_KEY it signs with the
# account's well-known demo key. Against a real signing venue the account id must be the
# key's 0x address, and the key comes from the environment or a keystore file, never here.
[venue]
kind = "http"
url = "embedded"

[venue.simulator]
start_prices = { BTC-USD = "60000.00" }
""", _BTC),
    "ccxt": ("binance", "main", """
# An exchange through ccxt (docs/venues.md, "ccxt"). Credentials come from the environment
# (GUARDRAILS_CCXT_API_KEY / GUARDRAILS_CCXT_SECRET, or credentials_file), never this file.
# url = "embedded" trades against the bundled Binance-protocol simulator instead; remove it
# (and set sandbox = true first, for the exchange's testnet) to trade the real exchange.
# tick and lot below must equal the exchange's PRICE_FILTER / LOT_SIZE: run refuses otherwise.
[venue]
kind = "ccxt"
exchange = "binance"
url = "embedded"

[venue.simulator]
start_prices = { "BTC/USDT" = "60000.00" }
""", """
[risk.instruments."BTC/USDT"]
tick = "0.01"
lot = "0.0001"
max_position = "0.05"
"""),
}

_STRATEGY = """
# Strategies run inside the account's lease; each gets a Context (docs/strategies.md).
[[strategies]]
name = "meanrev-btc"
module = "strategies.mean_reversion:MeanReversion"
params = { symbol = "BTC-USD", window = 20, threshold = "0.0015", size = "0.001", interval = "1s" }

# Alerts to a phone or a webhook (docs/operations.md, "Alerts"). Uncomment one:
# [[notify]]
# kind = "telegram"
# chat_id = "123456789"
# token_env = "GUARDRAILS_TELEGRAM_TOKEN"   # the bot token is read from this variable
# events = ["kill", "resume", "takeover", "self_fence", "budget_80", "budget_100"]
#
# [[notify]]
# kind = "webhook"
# url = "https://hooks.example.com/guardrails"
"""

VENUES = tuple(_VENUES)


def render(venue: str, path: str) -> str:
    label, account_id, block, instruments = _VENUES[venue]
    strategy = _STRATEGY.replace('symbol = "BTC-USD"', 'symbol = "BTC/USDT"') if venue == "ccxt" \
        else _STRATEGY
    return (_HEADER.format(venue=venue, path=path, account_venue=label, account_id=account_id,
                           instruments=instruments) + block + strategy)


def cmd_init(args: argparse.Namespace) -> int:
    out = Path(args.output)
    text = render(args.venue, str(out))
    try:
        parse_config(tomllib.loads(text, parse_float=Decimal), str(out))
    except ConfigError as e:  # a template bug: refuse rather than write a file run rejects
        print(f"guardrails init: internal error, the {args.venue} template does not load: {e}",
              file=sys.stderr)
        return 1
    if out.exists() and not args.force:
        print(f"guardrails init: {out} exists; not overwriting it (pass --force to replace it)",
              file=sys.stderr)
        return 2
    if not out.parent.is_dir():
        print(f"guardrails init: {out.parent} is not a directory", file=sys.stderr)
        return 2
    # Write beside it and rename: a crash never leaves half a config behind.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, out)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        print(f"guardrails init: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.venue} venue). Next: review [risk], then "
          f"`guardrails run --config {out}`")
    return 0
