"""Loading the strategies a config names: ``package.module:Class`` or ``path/to/file.py:Class``.

Contract: every ``[[strategies]]`` entry becomes one constructed object with an
``async def run(self, ctx)`` method, or the whole load fails with a ``ConfigError``
naming the config file, the entry (index and name) and what was wrong — a module that
cannot be imported, a missing class, a class without an async ``run``, params the
constructor refuses, or a constructor (or module body) that raises anything at all,
``sys.exit()`` included. The CLI turns that into exit status 2, before any lease is
taken. Only ``KeyboardInterrupt`` passes through (a real Ctrl-C while loading: exit 130).

File paths are resolved against the current directory first and then the config
file's directory. ``params`` are passed to the constructor as keyword arguments;
strategies convert them with ``param_decimal`` / ``param_duration_s`` (which raise
``ValueError`` with a clear message, reported as a bad param of that entry). Durations
need a unit, like every duration in the config: ``"250ms"``, ``"2s"``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydantic import TypeAdapter, ValidationError

from guardrails.config import Config, ConfigError, DurationMs, StrategyConfig

if TYPE_CHECKING:
    from guardrails.runtime.context import Strategy

_Fail = Callable[[str], ConfigError]


@dataclass(frozen=True, slots=True)
class LoadedStrategy:
    """A constructed strategy and the config entry it came from."""

    name: str
    strategy: Strategy
    spec: StrategyConfig


def load_strategies(cfg: Config, *, source: str = "<config>") -> list[LoadedStrategy]:
    """Construct every strategy of ``cfg``; ``source`` is the config file (for errors)."""
    base = Path(source).resolve().parent if source != "<config>" else None
    return [
        load_strategy(spec, index=i, source=source, base_dir=base)
        for i, spec in enumerate(cfg.strategies)
    ]


def load_strategy(
    spec: StrategyConfig, *, index: int = 0, source: str = "<config>", base_dir: Path | None = None
) -> LoadedStrategy:
    """Import ``spec.module``, check the class, construct it with ``spec.params``."""
    where = f"{source}: strategies[{index}] (name={spec.name!r})"

    def fail(reason: str) -> ConfigError:
        return ConfigError(f"{where}: {reason}")

    target, sep, class_name = spec.module.rpartition(":")
    if not sep or not target or not class_name:
        raise fail(
            f"module {spec.module!r} must be 'package.module:Class' or 'path/to/file.py:Class'"
        )
    if target.endswith(".py") or "/" in target:
        module = _import_file(target, base_dir, fail)
    else:
        module = _import_module(target, fail)

    cls = getattr(module, class_name, None)
    if cls is None:
        raise fail(f"module {target!r} has no class {class_name!r}")
    if not inspect.isclass(cls):
        raise fail(f"{target}:{class_name} is not a class")
    run = getattr(cls, "run", None)
    if run is None or not inspect.iscoroutinefunction(run):
        raise fail(f"class {class_name} has no 'async def run(self, ctx)' method")

    try:
        instance = cls(**spec.params)
    except TypeError as e:
        raise fail(f"params {sorted(spec.params)} refused by {class_name}(): {e}") from None
    except (ValueError, ArithmeticError) as e:
        raise fail(f"bad params for {class_name}: {e}") from None
    except SystemExit as e:
        raise fail(f"{class_name}() called sys.exit({e.code!r}) while being constructed") from None
    except Exception as e:  # the strategy's own constructor failed: not a traceback, exit 2
        raise fail(f"{class_name}() raised {type(e).__name__}: {_one_line(e)}") from None
    return LoadedStrategy(name=spec.name, strategy=cast("Strategy", instance), spec=spec)


def _import_module(name: str, fail: _Fail) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise fail(f"module {name!r} not found ({e})") from None
    except SystemExit as e:
        raise fail(f"importing module {name!r} called sys.exit({e.code!r})") from None
    except Exception as e:  # an import-time error inside the strategy's own module
        raise fail(f"importing module {name!r} failed: {type(e).__name__}: {_one_line(e)}") from None


def _import_file(target: str, base_dir: Path | None, fail: _Fail) -> object:
    candidates = [Path(target)]
    if base_dir is not None and not Path(target).is_absolute():
        candidates.append(base_dir / target)
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        tried = ", ".join(str(p) for p in candidates)
        raise fail(f"strategy file {target!r} not found (tried {tried})")
    mod_name = "guardrails_strategy_" + "".join(c if c.isalnum() else "_" for c in str(path))
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise fail(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(mod_name, None)
        raise fail(f"importing {path} called sys.exit({e.code!r})") from None
    except Exception as e:
        sys.modules.pop(mod_name, None)
        raise fail(f"importing {path} failed: {type(e).__name__}: {_one_line(e)}") from None
    return module


def _one_line(e: BaseException) -> str:
    """An exception's message on one line, at most 300 characters (it ends up in stderr)."""
    text = " ".join(str(e).split())
    return text if len(text) <= 300 else text[:297] + "..."


# -- helpers strategies use to read their params -----------------------------------

_DURATION = TypeAdapter(DurationMs)


def param_decimal(name: str, value: object, *, positive: bool = True) -> Decimal:
    """A param as an exact ``Decimal`` (TOML strings, ints or TOML decimals; never floats)."""
    if isinstance(value, bool | float):
        raise ValueError(f"param {name!r}: write decimals as strings, e.g. '0.01' (got {value!r})")
    try:
        d = Decimal(value) if isinstance(value, int | Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"param {name!r}: {value!r} is not a decimal number") from None
    if not d.is_finite():
        raise ValueError(f"param {name!r}: {value!r} is not finite")
    if positive and d <= 0:
        raise ValueError(f"param {name!r}: must be greater than 0 (got {d})")
    return d


def param_duration_s(name: str, value: object) -> float:
    """A duration param (``"2s"``, ``"250ms"``) in seconds; a bare number is refused."""
    try:
        ms = _DURATION.validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise ValueError(f"param {name!r}: {msg}") from None
    return ms / 1000


def param_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"param {name!r}: {value!r} is not one of {', '.join(choices)}")
    return value
