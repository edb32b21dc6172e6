"""The layering of the package: the IR and the reference interpreter stay below what they must not know.

Imports are read from the source (every ``import`` statement, at module level, inside functions
and under ``TYPE_CHECKING``), so a lazy import counts as much as an eager one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import graphbuild

PACKAGE = Path(graphbuild.__file__).resolve().parent
PASSES = PACKAGE.parent / "passes"


def _module_path(module: str) -> Path | None:
    """The source file of a graphbuild module (``graphbuild.passes`` lives in ``passes/``)."""
    parts = module.split(".")
    if parts[0] != "graphbuild":
        return None
    root, rest = (PASSES, parts[2:]) if parts[1:2] == ["passes"] else (PACKAGE, parts[1:])
    base = root.joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _statements(tree: ast.AST, lazy: bool):
    """The nodes of ``tree``; without ``lazy``, leaving out function bodies and ``if TYPE_CHECKING:``
    blocks (what does not run when the module is imported)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if not lazy and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if not lazy and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def imported_modules(path: Path, package: str, lazy: bool = True) -> set[str]:
    """Every module an ``import`` statement of ``path`` names (relative imports resolved); with
    ``lazy=False`` only those that run when the module is imported."""
    found: set[str] = set()
    for node in _statements(ast.parse(path.read_text(), str(path)), lazy):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rsplit(".", 1)[0]


def reachable(start: str) -> set[str]:
    """The modules ``start`` imports (lazily or not), and what importing those runs, through
    graphbuild modules (the parents' ``__init__`` files included, except the top-level
    ``graphbuild/__init__.py``, which imports everything by design)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_path(module)
        if path is None:
            continue
        parts = module.split(".")
        parents = [".".join(parts[:i]) for i in range(2, len(parts))]
        for name in imported_modules(path, _package_of(module, path), lazy=module == start) | set(parents):
            if name != "graphbuild" and name not in seen:
                todo.append(name)
    return seen


def _ir_modules() -> list[str]:
    return sorted(f"graphbuild.ir.{p.stem}" for p in (PACKAGE / "ir").glob("*.py") if p.stem != "__init__") + ["graphbuild.ir"]


@pytest.mark.parametrize("module", _ir_modules())
def test_the_ir_imports_no_handle_builder_or_registry(module):
    path = _module_path(module)
    forbidden = ("graphbuild.tensor", "graphbuild.functional", "graphbuild.ops")
    offending = sorted(name for name in imported_modules(path, _package_of(module, path)) if name.startswith(forbidden))
    assert offending == [], f"{module} imports {offending}"


def test_the_ir_reaches_nothing_above_it():
    reached = set().union(*(reachable(m) for m in _ir_modules()))
    assert not {m for m in reached if m.startswith(("graphbuild.tensor", "graphbuild.functional", "graphbuild.ops", "graphbuild.passes"))}


def test_the_reference_interpreter_needs_neither_onnxruntime_nor_the_passes():
    reached = reachable("graphbuild.reference")
    assert "graphbuild.ops.registry" in reached  # the walk does follow imports
    assert not {m for m in reached if m.split(".")[0] == "onnxruntime" or m.startswith("graphbuild.passes")}, sorted(reached)


def test_the_walker_sees_lazy_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from graphbuild.passes import partition\n")
    assert "graphbuild.passes" in imported_modules(source, "graphbuild")
