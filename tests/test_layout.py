"""The layers of embedtune/ hold: dependencies run one way, no import cycle, and importing a library
module has no side effect on the environment. Read from the source, so a new import that breaks the
direction fails here, not in a user's traceback."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "embedtune"

# What each part of embedtune may import (besides itself). Commands sit on top; training, mining,
# merging and evaluation use data, models and losses; the small shared modules use nothing above them.
ALLOWED = {
    "cli": {
        "training",
        "eval",
        "mine",
        "merge",
        "synth",
        "data",
        "model",
        "model_card",
        "hub",
        "losses",
        "pooling",
        "lora",
        "fileio",
        "console",
        "errors",
    },
    "training": {"eval", "data", "model", "model_card", "hub", "losses", "pooling", "lora", "fileio", "console", "errors"},
    "mine": {"eval", "data", "model", "fileio", "console", "errors"},
    "synth": {"data", "model", "fileio", "console", "errors"},
    "merge": {"model", "model_card", "fileio", "console", "errors"},
    "eval": {"data", "model", "fileio", "console", "errors"},
    "data": {"model", "losses", "fileio", "console", "errors"},
    "model": {"lora", "pooling", "model_card", "fileio", "console", "errors"},
    "model_card": set(),  # plain data in, a card's text out
    "hub": {"errors"},
    "losses": {"errors"},
    "lora": {"errors"},
    "pooling": {"errors"},
    "fileio": {"errors"},
    "console": {"errors"},
    "errors": set(),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The embedtune modules ``path`` imports, at any depth of the file (lazy imports count)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.update(f"{base}.{alias.name}" for alias in node.names)
            found.add(base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {imported for imported in found if imported in modules and imported != name}


def part(module: str) -> str:
    """``embedtune.training.run`` -> ``training``; ``embedtune.__main__`` -> ``__main__``."""
    return module.split(".")[1] if "." in module else ""


GRAPH = {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_every_part_of_the_package_is_placed_in_a_layer():
    parts = {part(module) for module in GRAPH} - {"", "__main__"}
    assert parts == set(ALLOWED), f"place new parts in ALLOWED: {sorted(parts ^ set(ALLOWED))}"


def test_dependencies_run_one_way():
    wrong = sorted(
        f"{module} imports {imported}"
        for module, imported_modules in GRAPH.items()
        for imported in imported_modules
        if part(module) in ALLOWED and part(imported) not in ALLOWED[part(module)] | {part(module), ""}
    )
    assert not wrong, "\n".join(wrong)


def test_only_the_entry_point_imports_the_command_line():
    outside = sorted(
        module for module, imported in GRAPH.items() if part(module) not in ("cli", "__main__") and any(part(i) == "cli" for i in imported)
    )
    assert not outside


def test_no_import_cycle():
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for imported in sorted(GRAPH[module]):
            if state.get(imported) == 1:
                cycle = stack[stack.index(imported) :]
                if not all(other.startswith(cycle[0]) or cycle[0].startswith(other) for other in cycle):  # a package and its own modules
                    cycles.append(" -> ".join([*cycle, imported]))
            elif not state.get(imported):
                visit(imported, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(GRAPH):
        if not state.get(module):
            visit(module, [])
    assert not cycles, "\n".join(cycles)


def third_party_imports(path: Path) -> set[str]:
    """The other packages' modules and names ``path`` imports at its top level, as ``X`` or
    ``X:y`` (``from X import y``: transformers' names load lazily, on first use)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    names |= {
        f"{node.module}:{alias.name}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module and not node.level
        for alias in node.names
    }
    return {name for name in names if name.split(".")[0].split(":")[0] not in ("embedtune", "__future__")}


def test_importing_library_modules_leaves_the_environment_alone():
    """What other packages set when imported (torch sets TORCHINDUCTOR_CACHE_DIR) is imported
    first; then importing every library module of ours must change no environment variable."""
    library_paths = [
        path for path in PACKAGE.rglob("*.py") if part(module_name(path)) not in ("cli", "__main__") and path.name != "plots.py"
    ]
    others = sorted(set().union(*(third_party_imports(path) for path in library_paths)))
    code = (
        "import importlib, json, os, sys\n"
        f"for name in {others!r}: module, _, attribute = name.partition(':'); getattr(importlib.import_module(module), attribute or '__name__')\n"
        "before = dict(os.environ)\n"
        "for name in sys.argv[1:]: importlib.import_module(name)\n"
        "print(json.dumps(sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *sorted(module_name(path) for path in library_paths)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=PACKAGE.parent,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == []


def test_help_loads_no_heavy_package():
    """`embedtune --help` and a mistyped command answer at once: the command table imports a
    command's module (and torch, transformers, hydra) only when that command runs."""
    code = "import sys\nfrom embedtune.cli import main\nmain(['--help'])\nprint(sorted(m for m in ('torch', 'transformers', 'hydra', 'accelerate') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=PACKAGE.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
