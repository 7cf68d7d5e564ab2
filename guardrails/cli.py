"""The ``guardrails`` command line: argument parsing and dispatch, nothing else.

Each subcommand's behaviour lives in the module named for its concept; handlers take
the parsed arguments and return the exit status. Exit status 2 means "could not even
start": a bad config, a bad argument, a refused second copy.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib import metadata
from types import TracebackType

from guardrails import logs, redacted
from guardrails.config import REDIS_URL_ENV, ConfigError, redis_url_problem
from guardrails.infra import connect
from guardrails.infra.embedded import EmbeddedRedisError

DEFAULT_CONFIG = "config/paper.toml"
_INIT_VENUES = ("paper", "http", "ccxt")  # guardrails.ops.init.VENUES, without importing it for --help

Handler = Callable[[argparse.Namespace], int]


def _lazy(target: str) -> Handler:
    """Import the handler only when its subcommand runs (keeps ``--help`` fast)."""

    def call(args: argparse.Namespace) -> int:
        module, _, func = target.partition(":")
        handler: Handler = getattr(importlib.import_module(module), func)
        return handler(args)

    return call


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"TOML config (default {DEFAULT_CONFIG})")
    p.add_argument(
        "--redis-url",
        default=None,
        help="Redis URL or 'embedded'; overrides the config and $GUARDRAILS_REDIS_URL "
             "(never put a password here: argv is public; use --redis-url-file or the env)",
    )
    p.add_argument(
        "--redis-url-file", default=None, metavar="PATH",
        help="read the Redis URL from the first line of this 0600 file (keeps its password "
             "out of argv, which every local user can read)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guardrails",
        description="A safety harness for trading bots: one writer per account, shared risk.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the configured strategies under the account's lease")
    _common(p)
    p.add_argument(
        "--standby",
        action="store_true",
        help="deliberately run as an extra copy: wait as standby if another copy holds the host lock",
    )
    p.add_argument("--dashboard", action="store_true", help="also serve the web dashboard")
    p.add_argument("--health-port", type=int, default=None, help="serve /health on this port")
    p.add_argument("--instance-id", default=None, help="override the generated instance id")
    p.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="auto",
        help="auto (console on a terminal, else kv), kv (key=value lines), json (JSON lines), console",
    )
    p.set_defaults(func=_lazy("guardrails.runtime.process:cmd_run"))

    p = sub.add_parser("kill", help="halt an account (or make it reduce-only) from anywhere")
    _common(p)
    target = p.add_mutually_exclusive_group()
    target.add_argument("--account", help="venue:account, e.g. paper:demo (default: the config's)")
    target.add_argument("--all", action="store_true", help="every known account")
    p.add_argument("--reason", required=True, help="why; recorded with who and when")
    p.add_argument("--force", action="store_true",
                   help="write the latch of an account never seen on this Redis (refused otherwise)")
    p.add_argument("--confirm-timeout", type=float, default=5.0,
                   help="seconds to wait for running instances to confirm (default 5)")
    p.add_argument("--reduce-only", action="store_true", help="REDUCING instead of HALTED")
    p.add_argument("--revoke", action="store_true", help="also bump the fence: fence out the holder")
    p.set_defaults(func=_lazy("guardrails.ops.kill:cmd_kill"))

    p = sub.add_parser("resume", help="clear the kill switch of an account")
    _common(p)
    p.add_argument("--account", default=None, help="venue:account (default: the config's)")
    p.add_argument("--reason", default="", help="why; recorded with who and when")
    p.add_argument("--force", action="store_true",
                   help="write the latch of an account never seen on this Redis (refused otherwise)")
    p.add_argument("--confirm-timeout", type=float, default=5.0,
                   help="seconds to wait for running instances to confirm (default 5)")
    p.set_defaults(func=_lazy("guardrails.ops.kill:cmd_resume"))

    p = sub.add_parser("status", help="lease, positions, budget and instances of accounts")
    _common(p)
    p.add_argument("--account", default=None, help="venue:account (default: the config's)")
    p.add_argument("--json", action="store_true", help="stable JSON (docs/status.schema.json)")
    p.set_defaults(func=_lazy("guardrails.ops.status:cmd_status"))

    p = sub.add_parser("doctor", help="census: what runs vs what should run")
    _common(p)
    p.add_argument("--manifest", default="config/manifest.toml", help="what should run")
    p.add_argument("--json", action="store_true", help="JSON (docs/doctor.schema.json)")
    p.add_argument("--notify", action="store_true",
                   help="also send problems through the config's [[notify]] channels (for cron)")
    p.set_defaults(func=_lazy("guardrails.ops.doctor.command:cmd_doctor"))

    p = sub.add_parser("dashboard", help="serve the live web dashboard (read-only Redis)")
    _common(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME[:PORT]",
                   help="also answer requests whose Host is NAME (behind a reverse proxy); "
                        "repeatable")
    p.set_defaults(func=_lazy("guardrails.ops.dashboard:cmd_dashboard"))

    p = sub.add_parser("reconcile", help="look up non-terminal orders at the venue, apply fills")
    _common(p)
    p.add_argument("--fix", action="store_true", help="repair stranded orders (default: report)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("guardrails.ops.reconcile:cmd_reconcile"))

    p = sub.add_parser("limits", help="show or deliberately apply the account's limits")
    _common(p)
    lsub = p.add_subparsers(dest="limits_command", required=True, metavar="ACTION")
    lp = lsub.add_parser("show", help="the effective limits stored in Redis")
    lp.add_argument("--json", action="store_true")
    lp = lsub.add_parser("apply", help="store the config's limits as the account's limits")
    lp.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=_lazy("guardrails.ops.limits:cmd_limits"))

    p = sub.add_parser("venue", help="venue tools")
    vsub = p.add_subparsers(dest="venue_command", required=True, metavar="ACTION")
    vp = vsub.add_parser("serve", help="run the HTTP exchange simulator")
    vp.add_argument("--host", default="127.0.0.1")
    vp.add_argument("--port", type=int, default=8780)
    vp.add_argument("--config", default=None, help="config whose [venue] market to simulate")
    vp.add_argument("--record", default=None, help="append-only JSONL record of orders and fills")
    vp.add_argument("--seed", type=int, default=None)
    vp.add_argument("--admin", action="store_true", help="enable /admin/* test fault hooks")
    vp.add_argument("--daemon-dir", default=None, help=argparse.SUPPRESS)  # url = "embedded"
    protocols = ("eip712", "binance")
    vp.add_argument("--protocol", choices=(*protocols, "clob"), default="eip712",
                    help="eip712: the HTTP venue's API; binance: Binance spot REST (ccxt venue); "
                         "clob: Polymarket's CLOB (a kind = \"polymarket\" --config)")
    vp.add_argument("--keys-file", default=None,
                    help="binance: JSON {api key: secret} (default: accept the demo keys)")
    vp.add_argument("--heartbeat-timeout-ms", type=int, default=10_000,
                    help="clob: cancel every resting order when no heartbeat came this long")
    vp = vsub.add_parser("status", help="is the per-user simulator daemon (url = 'embedded') running")
    vp.add_argument("--json", action="store_true")
    vp.add_argument("--protocol", choices=protocols, default="eip712")
    vp = vsub.add_parser("stop", help="stop the per-user simulator daemon (its record is kept)")
    vp.add_argument("--protocol", choices=protocols, default="eip712")
    p.set_defaults(func=_lazy("guardrails.sim.daemon:cmd_venue"))

    p = sub.add_parser("init", help="write a commented starter config for a venue")
    p.add_argument("--venue", choices=_INIT_VENUES, default="paper", help="which venue (default paper)")
    p.add_argument("--output", "-o", default="guardrails.toml", help="file to write")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(func=_lazy("guardrails.ops.init:cmd_init"))

    p = sub.add_parser("redis", help="manage the embedded Redis")
    rsub = p.add_subparsers(dest="redis_command", required=True, metavar="ACTION")
    rp = rsub.add_parser("status", help="is the embedded Redis running, where")
    rp.add_argument("--json", action="store_true")
    rsub.add_parser("start", help="start it (guardrails starts it on demand anyway)")
    rsub.add_parser("stop", help="stop it gracefully (AOF flushed)")
    p.set_defaults(func=_lazy("guardrails.ops.embedded_redis:cmd_redis"))

    p = sub.add_parser("fence", help="fencing epochs: see the lost-history alarm, recover from it")
    fsub = p.add_subparsers(dest="fence_command", required=True, metavar="ACTION")
    for name, text in (("status", "the account's epoch, fence and alarm (exit 1: alarm set)"),
                       ("recover", "re-seed the fence above every token seen, clear the alarm")):
        fp = fsub.add_parser(name, help=text)
        _common(fp)
        fp.add_argument("--account", default=None, help="venue:id (default: the config's)")
        fp.add_argument("--json", action="store_true")
        if name == "recover":
            fp.add_argument("--above", type=int, default=0,
                            help="also above this token (read from the venue or the logs)")
            fp.add_argument("--venue-orders", default=None, metavar="FILE",
                            help="the account's orders as the venue lists them (JSON lines: "
                            "coid, symbol, side, qty, price): each gets a record and is "
                            "reconciled, so its intent is not admitted again and a resting "
                            "one's fills apply")
            fp.add_argument("--no-venue", action="store_true",
                            help="do not rebuild the ledger from the venue's fills first (the "
                            "venue cannot be reached: positions and the day's loss stay as "
                            "Redis has them)")
    p.set_defaults(func=_lazy("guardrails.ops.fence:cmd_fence"))

    p = sub.add_parser("migrate", help="move an account's keys to this version's schema (dry run "
                       "unless --apply)")
    _common(p)
    p.add_argument("--account", default=None, help="venue:id (default: the config's)")
    p.add_argument("--apply", action="store_true",
                   help="really migrate (refused while an instance of the account is live)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("guardrails.ops.migrate:cmd_migrate"))

    p = sub.add_parser("prune", help="archive and remove old terminal orders now (dry run "
                       "unless --apply)")
    _common(p)
    p.add_argument("--apply", action="store_true",
                   help="really prune (safe beside the running instance's sweep)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_lazy("guardrails.ops.prune:cmd_prune"))

    _add_version(parser)

    return parser


def _version() -> str:
    try:
        return f"guardrails {metadata.version('guardrails')}"
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "guardrails (not installed)"


def _add_version(parser: argparse.ArgumentParser) -> None:
    """``--version`` on the top level and on every command and sub-command."""
    parser.add_argument("--version", action="version", version=_version())
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_version(child)


def _warn_if_password_in_argv(argv: Sequence[str]) -> None:
    """One warning line when a URL in argv carries a password: every local user can read
    argv (``ps``). The value is masked, and registered so nothing prints it."""
    found = redacted.argv_urls_with_credentials(argv)
    redacted.register_argv(argv)
    # A URL that will be refused anyway gets its one-line error instead (the process stops
    # before using it); the warning is for a password that is about to be used from argv.
    usable = all(redis_url_problem(url) is None for url in redacted.argv_urls(argv))
    if found and usable:
        logs.event(
            logging.getLogger("guardrails.secrets"), "secrets.password_in_argv", logging.WARNING,
            url=found[0],
            advice=f"argv is visible to every local user (ps); put the URL in "
                   f"${REDIS_URL_ENV} or the password in ${connect.PASSWORD_ENV} / "
                   f"${connect.PASSWORD_FILE_ENV}",
        )


LONG_LIVED = ("run", "dashboard")
"""Commands that run for days: a password in their argv would be readable all that time."""


def _without_url_flag(argv: Sequence[str], url: str) -> list[str] | None:
    """``argv`` without its ``--redis-url <url>`` / ``--redis-url=<url>``; None if absent."""
    out = list(argv)
    for i, a in enumerate(out):
        if a == f"--redis-url={url}":
            return out[:i] + out[i + 1:]
        if a == "--redis-url" and i + 1 < len(out) and out[i + 1] == url:
            return out[:i] + out[i + 2:]
    return None


def _reexec_without_argv_password(args: argparse.Namespace) -> None:
    """A long-lived command given ``--redis-url`` with a credential executes itself again
    (``execve``: the same pid, so a supervisor tracks the same process) with the URL in
    ``$GUARDRAILS_REDIS_URL`` instead — the environment is readable by this user only,
    argv by everyone — so ``ps`` shows it for a moment, not for the process's life.
    A command line it does not recognise is left as it is (the warning was logged)."""
    url = getattr(args, "redis_url", None)
    if args.command not in LONG_LIVED or not url or not redacted.has_credentials(url) \
            or redis_url_problem(url) is not None:  # refused anyway, with its one line
        return
    n = len(sys.argv) - 1
    head, tail = sys.orig_argv[:len(sys.orig_argv) - n], sys.orig_argv[len(sys.orig_argv) - n:]
    rest = _without_url_flag(tail, url) if n and tail == sys.argv[1:] else None
    if rest is None or any(a.startswith("--redis-url") for a in rest):  # given twice
        return
    logs.event(logging.getLogger("guardrails.secrets"), "secrets.argv_reexec",
               url=redacted.mask_url(url), note=f"restarting in place with the URL in ${REDIS_URL_ENV}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [*head, *rest], {**os.environ, REDIS_URL_ENV: url})


def _apply_redis_url_file(args: argparse.Namespace) -> None:
    """``--redis-url-file`` becomes ``args.redis_url`` (read here, once, for every command)."""
    path = getattr(args, "redis_url_file", None)
    if path is None:
        return
    if getattr(args, "redis_url", None):
        raise ConfigError("--redis-url and --redis-url-file: give one of them")
    args.redis_url = connect.url_from_file(path)


def install_masked_excepthook() -> None:
    """An uncaught exception's traceback is printed with credentials masked (its message
    may quote a URL the process was given)."""
    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        text = "".join(traceback.format_exception(kind, value, tb))
        sys.stderr.write(redacted.mask_text(text))

    sys.excepthook = hook


def main(argv: Sequence[str] | None = None) -> int:
    install_masked_excepthook()
    args = build_parser().parse_args(argv)
    if args.command == "run":
        logs.setup()  # so the warning below is a timestamped event line like the rest
    _warn_if_password_in_argv(list(sys.argv[1:] if argv is None else argv))
    if argv is None:  # a real process (not a caller of main): its argv is in /proc
        _reexec_without_argv_password(args)
    try:
        _apply_redis_url_file(args)
        rc: int = args.func(args)
    except ConfigError as e:
        print(redacted.mask_text(str(e)), file=sys.stderr)
        return 2
    except EmbeddedRedisError as e:  # an operator command found no embedded server to talk to
        print(f"guardrails {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `guardrails status | head`: the reader left. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again, and exit quietly (Python docs,
        # "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    return rc


if __name__ == "__main__":
    sys.exit(main())
