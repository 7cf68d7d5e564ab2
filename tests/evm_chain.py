"""A local EVM chain for tests: eth-tester on the py-evm backend, plus a tiny ERC-20.

The chain is real (py-evm executes every transaction, checks signatures, nonces,
balances and gas); only the transport is in-process: each venue under test gets its own
``AsyncEthereumTesterProvider`` bound to the one shared ``EthereumTester``, so several
"instances" (holder A, holder B) see one chain, as they would see one node.

The token is hand-assembled EVM bytecode (no compiler is available offline): storage
slot ``address`` holds that address's balance; ``transfer`` reverts when the sender's
balance is short, which is how tests produce a real on-chain revert (status 0 receipt).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import redis.asyncio as aioredis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from eth_utils import to_checksum_address
from web3.providers.eth_tester import AsyncEthereumTesterProvider

from guardrails.config import EvmVenueConfig, LeaseConfig, RiskConfig
from guardrails.keys import AccountId, AccountKeys
from guardrails.lease import Acquired, Lease
from guardrails.model import Order, Side, client_order_id_for
from guardrails.venues.evm import EvmVenue

_OPS = {
    "STOP": 0x00, "ADD": 0x01, "SUB": 0x03, "LT": 0x10, "EQ": 0x14, "SHR": 0x1C,
    "SHA3": 0x20, "CALLER": 0x33, "CALLDATALOAD": 0x35, "CODECOPY": 0x39, "POP": 0x50,
    "MSTORE": 0x52, "SLOAD": 0x54, "SSTORE": 0x55, "JUMPI": 0x57, "JUMPDEST": 0x5B,
    "DUP1": 0x80, "DUP2": 0x81, "DUP3": 0x82, "SWAP1": 0x90, "RETURN": 0xF3, "REVERT": 0xFD,
}


def _assemble(program: list[str]) -> bytes:
    """Two-pass assembler: ``@label`` defines, ``PUSH2 @label`` references, ``PUSHn hex``."""
    def size(tok: str) -> int:
        return 1 + int(tok.split()[0][4:]) if tok.startswith("PUSH") else 1

    labels: dict[str, int] = {}
    pc = 0
    for tok in program:
        if tok.startswith("@"):
            labels[tok] = pc
        pc += size(tok)
    out = bytearray()
    for tok in program:
        if tok.startswith("@"):
            out.append(_OPS["JUMPDEST"])
            continue
        if tok.startswith("PUSH"):
            op, arg = tok.split()
            n = int(op[4:])
            val = labels[arg] if arg.startswith("@") else int(arg, 16)
            out.append(0x5F + n)
            out += val.to_bytes(n, "big")
        else:
            out.append(_OPS[tok])
    return bytes(out)


def _token_runtime(decimals: int) -> bytes:
    ret_word = ["PUSH1 00", "MSTORE", "PUSH1 20", "PUSH1 00", "RETURN"]
    return _assemble([
        "PUSH1 00", "CALLDATALOAD", "PUSH1 e0", "SHR",
        "DUP1", "PUSH4 70a08231", "EQ", "PUSH2 @balanceOf", "JUMPI",
        "DUP1", "PUSH4 a9059cbb", "EQ", "PUSH2 @transfer", "JUMPI",
        "DUP1", "PUSH4 095ea7b3", "EQ", "PUSH2 @approve", "JUMPI",
        "DUP1", "PUSH4 dd62ed3e", "EQ", "PUSH2 @allowance", "JUMPI",
        "DUP1", "PUSH4 313ce567", "EQ", "PUSH2 @decimals", "JUMPI",
        "DUP1", "PUSH4 92b0cd99", "EQ", "PUSH2 @trade", "JUMPI",
        "@fail", "PUSH1 00", "DUP1", "REVERT",
        "@balanceOf", "PUSH1 04", "CALLDATALOAD", "SLOAD", *ret_word,
        "@transfer", "PUSH1 24", "CALLDATALOAD", "CALLER", "SLOAD",
        "DUP2", "DUP2", "LT", "PUSH2 @fail", "JUMPI",
        "DUP2", "SWAP1", "SUB", "CALLER", "SSTORE",
        "PUSH1 04", "CALLDATALOAD", "DUP1", "SLOAD", "DUP3", "ADD", "SWAP1", "SSTORE", "POP",
        "PUSH1 01", *ret_word,
        "@approve", "CALLER", "PUSH1 00", "MSTORE", "PUSH1 04", "CALLDATALOAD", "PUSH1 20",
        "MSTORE", "PUSH1 24", "CALLDATALOAD", "PUSH1 40", "PUSH1 00", "SHA3", "SSTORE",
        "PUSH1 01", *ret_word,
        "@allowance", "PUSH1 04", "CALLDATALOAD", "PUSH1 00", "MSTORE", "PUSH1 24",
        "CALLDATALOAD", "PUSH1 20", "MSTORE", "PUSH1 40", "PUSH1 00", "SHA3", "SLOAD", *ret_word,
        "@decimals", f"PUSH1 {decimals:02x}", *ret_word,
        # trade(bool isBuy, uint256 amount): buy mints to the caller, sell burns (reverts
        # when short) — a stand-in for a market the wallet trades on.
        "@trade", "PUSH1 24", "CALLDATALOAD", "CALLER", "SLOAD", "PUSH1 04", "CALLDATALOAD",
        "PUSH2 @mint", "JUMPI",
        "DUP2", "DUP2", "LT", "PUSH2 @fail", "JUMPI", "SUB", "CALLER", "SSTORE",
        "PUSH1 01", *ret_word,
        "@mint", "ADD", "CALLER", "SSTORE", "PUSH1 01", *ret_word,
    ])


def token_init_code(holder: str, supply: int, decimals: int) -> bytes:
    """Deployment code: credit ``supply`` to ``holder`` and install the runtime."""
    runtime = _token_runtime(decimals)
    prefix_len = 33 + 21 + 1 + 3 + 3 + 2 + 1 + 3 + 2 + 1
    init = _assemble([
        f"PUSH32 {supply:064x}", f"PUSH20 {holder.lower().removeprefix('0x')}", "SSTORE",
        f"PUSH2 {len(runtime):04x}", f"PUSH2 {prefix_len:04x}", "PUSH1 00", "CODECOPY",
        f"PUSH2 {len(runtime):04x}", "PUSH1 00", "RETURN",
    ])
    assert len(init) == prefix_len
    return init + runtime


ERC20_TRANSFER_ABI: list[dict[str, Any]] = [
    {
        "type": "function", "name": "transfer", "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
]


TRADE_ABI: list[dict[str, Any]] = [
    {
        "type": "function", "name": "trade", "stateMutability": "nonpayable",
        "inputs": [{"name": "isBuy", "type": "bool"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    }
]


class LocalChain:
    """One in-process chain shared by every provider it hands out."""

    def __init__(self) -> None:
        self.tester = EthereumTester(PyEVMBackend())
        self.funder = self.tester.get_accounts()[0]

    @property
    def chain_id(self) -> int:
        return int(self.tester.backend.chain.chain_id)

    def provider(self) -> AsyncEthereumTesterProvider:
        """A new provider on this chain (what a separate process's RPC connection is)."""
        p = AsyncEthereumTesterProvider()
        p.ethereum_tester = self.tester
        return p

    def fund(self, address: str, wei: int) -> None:
        self.tester.send_transaction(
            {"from": self.funder, "to": to_checksum_address(address), "value": wei,
             "gas": 21_000, "max_fee_per_gas": 10**10, "max_priority_fee_per_gas": 10**9}
        )

    def deploy_token(self, holder: str, supply: int, decimals: int) -> str:
        """Deploy the test ERC-20 (from the funder), crediting ``supply`` to ``holder``."""
        tx = self.tester.send_transaction(
            {"from": self.funder, "data": "0x" + token_init_code(holder, supply, decimals).hex(),
             "gas": 500_000, "max_fee_per_gas": 10**10, "max_priority_fee_per_gas": 10**9}
        )
        receipt = self.tester.get_transaction_receipt(tx)
        assert receipt["status"] == 1, receipt
        return to_checksum_address(receipt["contract_address"])

    def balance(self, address: str) -> int:
        return int(self.tester.get_balance(to_checksum_address(address)))

    def token_balance(self, token: str, address: str) -> int:
        data = "0x70a08231" + address.lower().removeprefix("0x").rjust(64, "0")
        out = self.tester.call({"from": self.funder, "to": token, "data": data})
        return int(out.hex() if isinstance(out, bytes) else out, 16)

    def nonce(self, address: str) -> int:
        return int(self.tester.get_nonce(to_checksum_address(address)))


# -- the EVM test world: a chain, a funded wallet with a token, Redis -------------------

TKN = "TKN"
ETH = "ETH"
TKN_CALL = "TKNC"
MKT = "MKT"
"""A call template to ``trade(isBuy, amount)``: BUY mints, SELL burns (either side works)."""
DECIMALS = 6
START_TKN = 1000 * 10**DECIMALS


class ChainProvider(AsyncEthereumTesterProvider):
    """The chain's provider with a faulty transport we control (a node, a network)."""

    def __init__(self, chain: LocalChain) -> None:
        super().__init__()
        self.ethereum_tester = chain.tester
        self.hold_send: asyncio.Event | None = None
        self.sending = asyncio.Event()
        self.down = False
        self.lose_send_response = False

    async def make_request(self, method: Any, params: Any) -> Any:
        if self.down:
            raise ConnectionError("node unreachable")
        if method == "eth_sendRawTransaction":
            self.sending.set()
            if self.hold_send is not None:
                await self.hold_send.wait()
            response = await super().make_request(method, params)
            if self.lose_send_response:
                self.down = True
                raise TimeoutError("response lost")
            return response
        return await super().make_request(method, params)


def risk_cfg() -> RiskConfig:
    return RiskConfig.model_validate({
        "quote_decimals": 6,
        "max_order_notional": "100000",
        "max_gross_exposure": "1000000",
        "daily_loss_limit": "100000",
        "orders_per_second": "1000",
        "burst": 1000,
        "instruments": {
            TKN: {"tick": "0.01", "lot": "0.01", "max_position": "500"},
            ETH: {"tick": "0.01", "lot": "0.001", "max_position": "5"},
            TKN_CALL: {"tick": "0.01", "lot": "0.01", "max_position": "500"},
            MKT: {"tick": "0.01", "lot": "0.01", "max_position": "500"},
        },
    })


@dataclass
class World:
    chain: LocalChain
    wallet: LocalAccount
    token: str
    recipient: str
    redis: aioredis.Redis
    account: AccountId
    keys: AccountKeys
    risk: RiskConfig

    def venue_cfg(self, **over: Any) -> EvmVenueConfig:
        data: dict[str, Any] = {
            "kind": "evm",
            "rpc_url": "http://127.0.0.1:1/unused-provider-is-injected",
            "chain_id": self.chain.chain_id,
            "gas_limit": 120_000,
            "max_fee_per_gas": 10**10,
            "max_priority_fee_per_gas": 10**9,
            "orders": {
                TKN: {"kind": "erc20_transfer", "token": self.token, "to": self.recipient,
                      "mark": "2"},
                ETH: {"kind": "native", "to": self.recipient, "mark": "3000"},
                TKN_CALL: {"kind": "call", "to": self.token, "abi": ERC20_TRANSFER_ABI,
                           "function": "transfer",
                           "args": [self.recipient, "{qty:6}"], "mark": "2"},
                MKT: {"kind": "call", "to": self.token, "token": self.token, "abi": TRADE_ABI,
                      "function": "trade", "args": ["{is_buy}", "{qty:6}"], "mark": "2"},
            },
        }
        data.update(over)
        return EvmVenueConfig.model_validate(data)

    def venue(self, provider: ChainProvider | None = None, **over: Any) -> EvmVenue:
        return EvmVenue(
            self.venue_cfg(**over), self.account, self.wallet, redis=self.redis,
            risk=self.risk, provider=provider or ChainProvider(self.chain),
        )


@pytest.fixture
async def world(redis_client: aioredis.Redis) -> AsyncIterator[World]:
    chain = LocalChain()
    wallet = Account.create()
    chain.fund(wallet.address, 10 * 10**18)
    token = chain.deploy_token(wallet.address, START_TKN, DECIMALS)
    account = AccountId(f"evm-{chain.chain_id}", wallet.address)  # the label config requires
    yield World(chain, wallet, token, chain.tester.get_accounts()[1], redis_client, account,
                AccountKeys(account), risk_cfg())


async def take_lease(w: World, holder: str) -> int:
    lease = Lease(w.redis, w.keys, holder, LeaseConfig(ttl="60s", renew_deadline="50s",
                                                       renew_interval="10s"))
    got = await lease.try_acquire()
    assert isinstance(got, Acquired), got
    return got.token


async def allocate_nonce(r: aioredis.Redis, keys: AccountKeys) -> int:
    """What the gate's script does with allocate_nonce: hand out keys.nonce, INCR it."""
    value = await r.get(keys.nonce)
    assert value is not None, "nonce not synced"
    await r.incr(keys.nonce)
    return int(value)


def order(tag: str, *, token: int, nonce: int | None, symbol: str = TKN, side: Side = Side.SELL,
          qty: str = "1.5", price: str = "2", deadline_ms: int = 10**13) -> Order:
    return Order(client_order_id_for(tag), symbol, side, Decimal(qty), Decimal(price), token,
                 deadline_ms, nonce)


async def holder(w: World, name: str) -> tuple[EvmVenue, ChainProvider, int]:
    provider = ChainProvider(w.chain)
    venue = w.venue(provider)
    await venue.start()
    token = await take_lease(w, name)
    await venue.sync_nonce(token, name)
    return venue, provider, token


