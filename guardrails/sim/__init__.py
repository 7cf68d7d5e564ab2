"""Exchange counterparties guardrails simulates (they are not adapters).

Each module here is a protocol front end over the one matching engine and record in
``guardrails.sim.exchange`` (``SimExchange``): ``binance`` speaks Binance's spot REST
API so the unmodified ccxt ``binance`` class can trade against it.
"""
