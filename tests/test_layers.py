"""The house rules of `addon/`, checked against the code (see README → Development):

- the pure packages (`addon.routing`, `addon.wire`, `addon.config.schema`) load no I/O
  library in a fresh interpreter and read no clock (they take `now`);
- imports only go down the layers, and the import graph has no cycle (every import counts:
  module level, inside functions, and under `TYPE_CHECKING`);
- only `addon.proxy` imports mitmproxy;
- no module passes 400 lines, and the mitmproxy adapter stays under 250.

The checker is plain functions over a folder, so the last tests run it on small trees made
in a temp dir and show that each rule fails when it is broken.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "addon"

PURE = (
    "addon.routing",
    "addon.wire",
    "addon.config.schema",
    "addon.config.rules",
    "addon.config.loaded",
    "addon.config.redact",
)
IO_LIBRARIES = ("mitmproxy", "aiohttp", "httpx", "sqlite3", "_sqlite3", "psycopg", "redis", "yaml")
# threading is banned from the pure code itself; pydantic and logging load it for their own
# locks, so a fresh interpreter's count of it is judged after those two are loaded.
DIRECT_BANS = (*IO_LIBRARIES, "threading", "asyncio", "socket", "subprocess")
LOADED_BY_ALLOWED = ("pydantic", "logging")
CLOCK_MODULES = ("time",)
CLOCK_CALLS = ("now", "utcnow", "today", "monotonic", "perf_counter", "time_ns", "monotonic_ns")
MITMPROXY_ROOMS = ("addon.proxy",)
MAX_LINES = 400
ADAPTER = "addon.proxy.adapter"
MAX_ADAPTER_LINES = 250

# A package may import only from its own layer or a lower one.
LAYERS = {
    "addon.errors": 0,
    "addon.config": 1,
    "addon.wire": 2,
    "addon.routing": 3,
    "addon.state": 4,
    "addon.store": 4,
    "addon.refresh": 5,
    "addon.evaluate": 5,
    "addon.proxy": 6,
    "addon.host": 6,
    "addon.cli": 7,
    "addon.entry": 7,
    "addon": 7,
}
# what a layer-1 module other than the schema may use: the loader is config's I/O side
LAYER_EXCEPTIONS: dict[str, int] = {}


# --------------------------------------------------------------------------- the checker


def modules(root: Path) -> dict[str, Path]:
    """Every module of the package at `root`, by dotted name (`pkg/__init__.py` is `pkg`)."""
    out: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path, name: str) -> set[str]:
    """Every dotted module name a file imports, anywhere in it (relative ones resolved)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the package's own modules it imports (a `from pkg import mod` names `mod`)."""
    mods = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imp in imported_names(path, name):
            if imp in mods and imp != name:
                targets.add(imp)
        # `from addon.routing import breaker` records both addon.routing and
        # addon.routing.breaker; the package's own __init__ is only a docstring's room.
        graph[name] = {t for t in targets if not _is_parent_only(t, targets, mods)}
    return graph


def _is_parent_only(t: str, targets: set[str], mods: dict[str, Path]) -> bool:
    return mods[t].name == "__init__.py" and any(o.startswith(t + ".") for o in targets)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def layer_of(name: str) -> int:
    best = max((k for k in LAYERS if name == k or name.startswith(k + ".")), key=len)
    return LAYERS[best]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
        for a, targets in graph.items()
        for b in targets
        if layer_of(b) > layer_of(a)
    )


def banned_imports(path: Path, name: str, banned: Iterable[str]) -> list[str]:
    bans = tuple(banned)
    return sorted(imp for imp in imported_names(path, name) if imp.split(".")[0] in bans)


def clock_reads(path: Path) -> list[str]:
    """Lines where a file imports the clock or calls something that reads it."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name in CLOCK_MODULES for a in node.names):
            out.append(f"{path.name}:{node.lineno} import time")
        elif isinstance(node, ast.ImportFrom) and node.module in CLOCK_MODULES:
            out.append(f"{path.name}:{node.lineno} from time import …")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CLOCK_CALLS
        ):
            out.append(f"{path.name}:{node.lineno} .{node.func.attr}()")
    return out


def long_modules(root: Path, limit: int) -> list[str]:
    return [
        f"{name} ({n} lines)"
        for name, path in modules(root).items()
        if (n := len(path.read_text().splitlines())) > limit
    ]


def loaded_in_fresh_interpreter(module: str, cwd: Path) -> list[str]:
    """The I/O libraries importing `module` loads, in a fresh interpreter; threading only
    where neither pydantic nor logging (both allowed) loaded it first."""
    script = (
        "import importlib, json, sys\n"
        f"allowed = {LOADED_BY_ALLOWED!r}\n"
        "before = set(sys.modules)\n"
        f"importlib.import_module({module!r})\n"
        "after = set(sys.modules) - before\n"
        "base = set()\n"
        "if any(a in {m.split('.')[0] for m in after} for a in allowed):\n"
        "    import subprocess\n"
        "    probe = 'import sys, json; before = set(sys.modules); '"
        " + ''.join(f'import {a}; ' for a in allowed)"
        " + 'print(json.dumps(sorted(set(sys.modules) - before)))'\n"
        "    base = set(json.loads(subprocess.run([sys.executable, '-c', probe],"
        " capture_output=True, text=True, check=True).stdout))\n"
        "print(json.dumps(sorted(after - base)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    bans = (*IO_LIBRARIES, "threading")
    return sorted({m.split(".")[0].lstrip("_") for m in loaded if m.split(".")[0] in bans})


def pure_modules(root: Path, pure: Iterable[str]) -> list[str]:
    prefixes = tuple(pure)
    return [n for n in modules(root) if any(n == p or n.startswith(p + ".") for p in prefixes)]


# --------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("module", pure_modules(PACKAGE, PURE))
def test_a_pure_module_loads_no_io_library(module: str) -> None:
    assert loaded_in_fresh_interpreter(module, REPO) == []


@pytest.mark.parametrize("module", pure_modules(PACKAGE, PURE))
def test_a_pure_module_imports_no_io_and_reads_no_clock(module: str) -> None:
    path = modules(PACKAGE)[module]
    assert banned_imports(path, module, DIRECT_BANS) == []
    assert clock_reads(path) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_imports_only_go_down_the_layers() -> None:
    assert upward_imports(import_graph(PACKAGE)) == []


def test_only_the_proxy_package_imports_mitmproxy() -> None:
    found = [
        name
        for name, path in modules(PACKAGE).items()
        if banned_imports(path, name, ["mitmproxy"])
        and not any(name.startswith(room) for room in MITMPROXY_ROOMS)
    ]
    assert found == []


def test_no_module_passes_the_size_limit() -> None:
    assert long_modules(PACKAGE, MAX_LINES) == []


def test_the_adapter_is_thin() -> None:
    lines = len(modules(PACKAGE)[ADAPTER].read_text().splitlines())
    assert lines < MAX_ADAPTER_LINES, f"{ADAPTER} has {lines} lines"


def test_every_subpackage_says_what_lives_there_and_what_it_may_import() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc and len(doc.splitlines()) >= 3, init


# --------------------------------------------------------------------------- the checker fails


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.parent / "__init__.py").touch()
        p.write_text(text)
    return root


def test_the_checker_sees_a_pure_module_that_imports_an_io_library(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"core/scoring.py": "import sqlite3\n", "core/ok.py": "import math\n"})
    assert loaded_in_fresh_interpreter("pkg.core.scoring", tmp_path) == ["sqlite3"]
    assert loaded_in_fresh_interpreter("pkg.core.ok", tmp_path) == []
    assert banned_imports(root / "core/scoring.py", "pkg.core.scoring", DIRECT_BANS) == ["sqlite3"]


def test_the_checker_sees_an_io_library_loaded_through_another_module(tmp_path: Path) -> None:
    _tree(tmp_path, {"core/a.py": "from pkg.io import b\n", "io/b.py": "import yaml\n"})
    assert loaded_in_fresh_interpreter("pkg.core.a", tmp_path) == ["yaml"]


def test_the_checker_sees_a_clock_read(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "a.py": "import time\n",
        "b.py": "from datetime import datetime\nx = datetime.now()\n",
        "c.py": "def f(now: float) -> float:\n    return now + 1\n",
    })  # fmt: skip
    assert clock_reads(root / "a.py") == ["a.py:1 import time"]
    assert clock_reads(root / "b.py") == ["b.py:2 .now()"]
    assert clock_reads(root / "c.py") == []


def test_the_checker_sees_a_cycle_even_under_type_checking(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "a.py": "from pkg import b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.c import C\n",
        "c.py": "def f():\n    from pkg.a import x\n",
        "d.py": "from pkg import a\n",
    })  # fmt: skip
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_checker_sees_an_upward_import() -> None:
    graph = {"addon.routing.scoring": {"addon.store.ledgers"}, "addon.proxy.x": {"addon.wire.sse"}}
    assert upward_imports(graph) == [
        "addon.routing.scoring (layer 3) imports addon.store.ledgers (layer 4)"
    ]


def test_the_checker_sees_a_long_module(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"big.py": "x = 1\n" * 401, "fine.py": "x = 1\n" * 400})
    assert long_modules(root, 400) == ["pkg.big (401 lines)"]
