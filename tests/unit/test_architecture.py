"""The picture in DESIGN.md stays true: a pure core, and imports that flow one way.

``(proxy, adapters) → runtime → (checks, identity, state, events, store, config) → core``; core
imports nothing of the project but itself and no library that does I/O.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bastion

SRC = Path(bastion.__file__).parent

IO_MODULES = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "threading",
    "multiprocessing",
    "os",
    "io",
    "shutil",
    "tempfile",
    "pathlib",
    "sqlite3",
    "urllib.request",
    "http.client",
    "http.server",
    "redis",
    "sqlalchemy",
    "alembic",
    "httpx",
    "aiohttp",
    "starlette",
    "fastapi",
    "uvicorn",
    "granian",
    "httptools",
    "uvloop",
    "requests",
    "asyncpg",
    "psycopg",
    "psycopg2",
    "click",
    "rich",
}

# package -> the bastion packages it may import (besides itself)
ALLOWED = {
    "core": set(),
    "checks": {"core"},
    "config": {"core"},
    "store": {"core"},
    "state": {"core"},
    "identity": {"core", "store", "smtp"},
    "events": {"core", "store", "config"},
    "inventory": {"core", "store"},
    "alerts": {"core", "config", "events", "state", "smtp"},
    # outbound mail (SMTP, TLS required off loopback): a transport both alert emails and admin sign-in
    # mail use, at the level of the packages that send
    "smtp": {"core"},
    "egress": {"core"},
    "runtime": {
        "core",
        "checks",
        "config",
        "events",
        "store",
        "identity",
        "state",
        "inventory",
        "alerts",
        "egress",
    },
    "proxy": {"core", "runtime"},
    "adapters": {
        "core",
        "checks",
        "config",
        "events",
        "store",
        "identity",
        "state",
        "runtime",
        "proxy",
        "adapters",
        "inventory",
        "alerts",
        "egress",
    },
    "demo": set(),
    # The application-facing surface, at the adapters' level: the ASGI middleware, its FastAPI
    # dependencies and the testing helpers wrap the engine for applications; nothing imports them back.
    "asgi": {
        "core",
        "checks",
        "config",
        "events",
        "store",
        "identity",
        "state",
        "runtime",
        "inventory",
        "adapters",
    },
    "fastapi": {"core", "asgi"},
    "testing": {"core", "checks", "config", "events", "store", "identity", "runtime", "asgi"},
}


def _imports(path: Path) -> list[tuple[str, int]]:
    """Absolute module names imported by a file (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(("bastion", *path.relative_to(SRC).parent.parts))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found.extend((f"{module}.{alias.name}", node.lineno) for alias in node.names)
    return found


def _files(package: str) -> list[Path]:
    module = SRC / f"{package}.py"  # a top-level module (bastion/fastapi.py, bastion/testing.py)
    return [module] if module.is_file() else sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("path", _files("core"), ids=lambda p: p.name)
def test_core_imports_no_io_library(path: Path) -> None:
    for module, line in _imports(path):
        top = module.split(".")[0]
        two = ".".join(module.split(".")[:2])
        assert top not in IO_MODULES and two not in IO_MODULES, f"{path.name}:{line} imports {module}"


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    for path in _files(package):
        if "migrations" in path.parts:
            continue
        for module, line in _imports(path):
            parts = module.split(".")
            if parts[0] != "bastion" or len(parts) < 2:
                continue
            target = parts[1]
            if target not in ALLOWED or target == package:
                continue
            assert target in ALLOWED[package], (
                f"{path.relative_to(SRC)}:{line} imports bastion.{target}; {package} may import only "
                f"{sorted(ALLOWED[package]) or 'itself'}"
            )


def test_every_package_and_top_level_module_is_in_the_table() -> None:
    found = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    found |= {p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert found <= set(ALLOWED), f"add {sorted(found - set(ALLOWED))} to ALLOWED"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """Guard against a vacuous test: the import scanner does find imports."""
    names = [m for m, _ in _imports(SRC / "runtime" / "gateway.py")]
    assert "bastion.checks.cors" in names and "bastion.core.router" in names
