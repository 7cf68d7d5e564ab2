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

from typing import Any

from eth_tester import EthereumTester, PyEVMBackend
from eth_utils import to_checksum_address
from web3.providers.eth_tester import AsyncEthereumTesterProvider

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
