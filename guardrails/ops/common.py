"""What every operator command shares: where to look, which config, and who is asking.

- **The Redis target** (``load_target``): ``--redis-url``, then ``$GUARDRAILS_REDIS_URL``,
  then the config's ``[redis] url``, then ``embedded`` — the same order ``guardrails run``
  uses, so an operator command in the bot's directory reaches the bot's Redis.
- **The config**: optional for commands that only read or write account state (an
  operator machine may have no bot config; the default path may be absent), required by
  commands that need the venue or the limits (``require_config``). An explicitly named
  config that does not exist is an error, never silently skipped.
- **The account** a command acts on (``target_account``): ``--account``, else the
  config's.
- **The operator identity** (``operator_identity``): the one ``user@host`` format every
  operator write records (the latch's ``by``, the limits' ``set_by``, the journal's
  ``by``), so who did what reads the same in every key.
"""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from pathlib import Path

from guardrails.config import (
    EMBEDDED,
    REDIS_URL_ENV,
    Config,
    ConfigError,
    load_config,
    redis_url_problem,
)
from guardrails.keys import AccountId, InvalidAccountId

DEFAULT_CONFIG = "config/paper.toml"
"""``--config``'s default (``cli.DEFAULT_CONFIG``): absent on an operator machine."""


def operator_identity(via: str | None = None) -> str:
    """``user@host`` of whoever runs this process; with ``via``, ``user@host (via)`` —
    e.g. ``(dashboard from 10.0.0.7)`` for a kill sent through the dashboard."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no $USER/$LOGNAME (a bare container)
        user = f"uid {os.getuid()}"
    who = f"{user}@{socket.gethostname()}"
    return f"{who} ({via})" if via else who


def load_target(args: argparse.Namespace) -> tuple[str, Config | None]:
    """The Redis URL and (if there is one) the config for an operator command.

    ``--redis-url``, then ``$GUARDRAILS_REDIS_URL``, then the config's ``[redis] url``,
    then ``embedded``. The config is optional: the default path may be absent, an
    explicit one must load (``ConfigError`` otherwise). A URL from the flag or the
    environment is checked by ``redis_url_problem`` with or without a config
    (``ConfigError`` naming where it came from).
    """
    cfg: Config | None = None
    path = getattr(args, "config", None)
    if path:
        if Path(path).exists():
            cfg = load_config(path, getattr(args, "redis_url", None))
        elif path != DEFAULT_CONFIG:
            raise ConfigError(f"{path}: config file not found")
    flag = getattr(args, "redis_url", None)
    url = flag or os.environ.get(REDIS_URL_ENV)
    if url and cfg is None:
        # load_config checks an override; with no config file, check it here, the same way
        problem = redis_url_problem(url)
        if problem:
            raise ConfigError(f"{'--redis-url' if flag else f'${REDIS_URL_ENV}'}: {problem}")
    if not url:
        url = cfg.redis.url if cfg is not None else EMBEDDED
    return url, cfg


def require_config(args: argparse.Namespace) -> Config:
    """The command's config, which it cannot run without (its venue, its limits):
    ``--config`` loaded with ``--redis-url`` applied; ``ConfigError`` if it cannot be."""
    return load_config(args.config, getattr(args, "redis_url", None))


def parse_account(text: str, command: str) -> AccountId | None:
    """``--account``'s value, or None after one line on stderr saying why not."""
    try:
        return AccountId.parse(text)
    except InvalidAccountId as e:
        print(f"guardrails {command}: {e}", file=sys.stderr)
        return None


def target_account(args: argparse.Namespace, command: str) -> AccountId | None:
    """``--account``, else the account of ``--config`` (default config/paper.toml), so
    ``guardrails kill --reason …`` in the bot's directory acts on the bot's account.
    None (after one line on stderr) when neither names one."""
    if getattr(args, "account", None):
        return parse_account(args.account, command)
    _, cfg = load_target(args)
    if cfg is None:
        print(f"guardrails {command}: name the account: --account venue:id, or --config with "
              "the bot's config (no config file found)", file=sys.stderr)
        return None
    return cfg.account_id
