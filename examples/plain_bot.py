"""A plain ccxt bot: its own loop, no guardrails. Every few seconds it rests a small bid
1 % under the best bid of BTC/USDT on Binance spot.

    BOT_API_KEY=... BOT_SECRET=... python examples/plain_bot.py

``EXCHANGE_URL`` points it at a Binance-protocol simulator instead (``make example``);
``BOT_ORDERS`` stops it after that many orders. examples/guarded_bot.py is this bot under
the harness: the same file with four lines changed.
"""

import asyncio
import os

import ccxt.async_support as ccxt

SYMBOL, AMOUNT = "BTC/USDT", 0.0001
INTERVAL = float(os.environ.get("BOT_INTERVAL", "2"))
ORDERS = int(os.environ.get("BOT_ORDERS", "0")) or None
NAME = f"bot{os.getpid()}"


async def trade(exchange):
    placed = 0
    while ORDERS is None or placed < ORDERS:
        try:
            ticker = await exchange.fetch_ticker(SYMBOL)
            price = round(ticker["bid"] * 0.99, 2)
            order = await exchange.create_order(SYMBOL, "limit", "buy", AMOUNT, price,
                                                {"clientOrderId": f"{NAME}-{placed}"})
            placed += 1
            print(f"{NAME} placed {order['id']} {AMOUNT} @ {price}", flush=True)
        except ccxt.InvalidOrder as e:
            print(f"{NAME} refused: {e}", flush=True)
        except ccxt.NetworkError as e:
            print(f"{NAME} waiting: {e}", flush=True)
        await asyncio.sleep(INTERVAL)


async def main():
    exchange = ccxt.binance({
        "apiKey": os.environ["BOT_API_KEY"], "secret": os.environ["BOT_SECRET"],
        "options": {"defaultType": "spot", "fetchMarkets": {"types": ["spot"]},
                    "fetchCurrencies": False, "fetchMargins": False},
    })
    if os.environ.get("EXCHANGE_URL"):  # a simulator instead of Binance
        api = os.environ["EXCHANGE_URL"] + "/api/v3"
        exchange.urls["api"]["public"] = exchange.urls["api"]["private"] = api
    try:
        await trade(exchange)
    finally:
        await exchange.close()


if __name__ == "__main__":
    asyncio.run(main())
