"""The layers stay visible: who may import whom (docs/architecture.md), no SQL in HTTP routers,
arithmetic without a database driver, tools never loaded by a server role, modules kept small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layer → the layers it may import (itself always). "csms" is the root package (``__version__``).
# The order is the order of the layers, bottom up: a layer never imports one above it.
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "ingest": {"schemas"},
    "csms.common": {"csms"},
    "csms.ocpp": {"csms", "csms.common", "schemas"},
    "csms.security": {"csms", "csms.common"},
    "csms.reporting": {"csms", "csms.common", "schemas"},
    "csms.store": {"csms", "csms.common", "csms.ocpp", "csms.security", "csms.reporting", "schemas"},
    "csms.bus": {"csms", "csms.common", "schemas"},
    "csms.gateway": {"csms", "csms.common", "csms.ocpp", "csms.security", "csms.store", "schemas"},
    "csms.api": {"csms", "csms.common", "csms.ocpp", "csms.security", "csms.store", "csms.reporting",
                 "csms.gateway", "schemas"},
    "csms.run": {"csms", "csms.common", "csms.ocpp", "csms.security", "csms.store", "csms.reporting",
                 "csms.gateway", "csms.bus", "csms.api", "schemas"},
    "csms.cli": {"csms", "csms.common", "csms.run", "schemas"},
    "csms.__main__": {"csms", "csms.cli"},
    "csms": set(),
    # Tools may import anything; nothing above imports them (the CLI loads them inside functions).
    "csms.simulate": {"*"},
    "csms.bench": {"*"},
}
TOOLS = ("csms.simulate", "csms.bench")
# The pure layers: no database driver, no sockets.
PURE = ("csms.ocpp", "csms.reporting", "csms.common", "csms.security")
PURE_FORBIDDEN = ("asyncpg", "websockets", "aiomqtt", "paho", "fastapi", "uvicorn", "socket")
MAX_MODULE_LINES = 400


def _modules() -> list[tuple[str, Path]]:
    found = []
    for package in ("csms", "ingest", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found.append((name, path))
    return found


def _layer(module: str) -> str:
    """The most specific layer a module belongs to."""
    candidates = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(candidates, key=len)


def _imports(path: Path, module: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import, relative ones resolved."""
    tree = ast.parse(path.read_text("utf-8"))
    top = {id(node) for node in tree.body}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
            out.append((base, node.lineno, id(node) in top))
            # ``from csms import countries`` names a module, not a symbol
            out += [(f"{base}.{a.name}", node.lineno, id(node) in top) for a in node.names
                    if (ROOT / base.replace(".", "/") / f"{a.name}.py").exists()]
    return out


def test_every_module_belongs_to_a_layer() -> None:
    for module, _ in _modules():
        assert _layer(module), module


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_imports_follow_the_layers(module: str, path: Path) -> None:
    layer = _layer(module)
    allowed = ALLOWED[layer]
    if "*" in allowed:
        return
    for imported, line, at_top in _imports(path, module):
        if not imported.startswith(("csms", "ingest", "schemas")):
            continue
        target = _layer(imported)
        if target in TOOLS:
            assert module == "csms.cli", f"{module}:{line} imports the tool {imported}"
            assert not at_top, f"{module}:{line} imports the tool {imported} at start-up (import it lazily)"
            continue
        assert target == layer or target in allowed, (
            f"{module}:{line} ({layer}) imports {imported} ({target}); allowed: {sorted(allowed)}")


@pytest.mark.parametrize(("module", "path"), [(m, p) for m, p in _modules() if m.startswith(PURE)],
                         ids=[m for m, _ in _modules() if m.startswith(PURE)])
def test_pure_layers_use_no_driver_or_socket(module: str, path: Path) -> None:
    for imported, line, _ in _imports(path, module):
        assert not imported.startswith(PURE_FORBIDDEN), f"{module}:{line} imports {imported}"


_SQL = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", " FROM ", "COPY ")


@pytest.mark.parametrize("path", sorted((ROOT / "csms" / "api").rglob("*.py")), ids=lambda p: p.name)
def test_http_routers_hold_no_sql(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value.upper()
            if any(keyword in text for keyword in _SQL) and ("$1" in text or " WHERE " in text or "JOIN" in text):
                pytest.fail(f"{path.name}:{node.lineno} holds SQL: {node.value[:60]!r}")


@pytest.mark.parametrize(("module", "path"), _modules(), ids=[m for m, _ in _modules()])
def test_modules_stay_small(module: str, path: Path) -> None:
    lines = len(path.read_text("utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines (split it: docs/architecture.md)"


def test_csms_root_holds_only_the_entry_points() -> None:
    files = {p.name for p in (ROOT / "csms").glob("*.py")}
    assert files == {"__init__.py", "__main__.py", "cli.py"}


def test_server_roles_do_not_load_the_tools() -> None:
    code = ("import sys, csms.cli, csms.run.central, csms.run.ingest, csms.api.app; "
            "print(sorted(m for m in sys.modules if m.startswith(('csms.simulate', 'csms.bench'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
