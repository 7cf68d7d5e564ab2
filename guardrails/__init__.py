"""guardrails — a safety harness for trading bots.

One writer per account (a fenced Redis lease), risk shared in Redis and checked in one
atomic step, idempotent side effects, terminal order states, and fail-closed defaults.
See DESIGN.md's five invariants in README.md and docs/.
"""

__version__ = "0.1.0"
