"""The bot of examples/plain_bot.py under the harness: four lines differ (the import, the
config, the ``async with guarded(...)`` and its indented body). Run twice on one account,
only the instance holding the lease trades; the other's create_order raises
``guardrails.ccxt.NotActive`` (a ccxt.NetworkError) until it takes over. Orders the gate
refuses raise ``OrderDenied`` (a ccxt.InvalidOrder).

    BOT_API_KEY=... BOT_SECRET=... python examples/guarded_bot.py
"""

import asyncio
import os

import ccxt.async_support as ccxt

from guardrails.ccxt import guarded

SYMBOL, AMOUNT = "BTC/USDT", 0.0001
INTERVAL = float(os.environ.get("BOT_INTERVAL", "2"))
ORDERS = int(os.environ.get("BOT_ORDERS", "0")) or None
NAME = f"bot{os.getpid()}"
CONFIG = os.environ.get("BOT_CONFIG", "examples/bot.toml")


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
        async with guarded(exchange, config=CONFIG) as exchange:
            await trade(exchange)
    finally:
        await exchange.close()


if __name__ == "__main__":
    asyncio.run(main())
