"""Tests of the loaders package boundary: its public names and what it may touch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import loaders

_ALLOWED_IMPORTS = {"loaders", "torch", "numpy", "safetensors", "huggingface_hub"}
_FORBIDDEN_NAMES = {"os.environ", "os.environb", "os.getenv", "torch.load", "pickle"}


def _modules() -> list[ast.Module]:
    package = Path(loaders.__file__).parent
    return [ast.parse(path.read_text(), str(path)) for path in sorted(package.glob("*.py"))]


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module)
    return names


def test_public_names_are_exported() -> None:
    assert len(loaders.__all__) == len(set(loaders.__all__))
    assert all(hasattr(loaders, name) for name in loaders.__all__)


def test_imports_only_the_standard_library_and_allowed_packages() -> None:
    allowed = _ALLOWED_IMPORTS | set(sys.stdlib_module_names)
    imported = {name.split(".")[0] for tree in _modules() for name in _imported(tree)}
    assert imported - allowed == set()


def test_reads_no_environment_and_unpickles_nothing() -> None:
    used = {
        ast.unparse(node)
        for tree in _modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
    }
    used |= {name for tree in _modules() for name in _imported(tree)}
    assert used & _FORBIDDEN_NAMES == set()


def test_import_in_a_fresh_interpreter_loads_no_other_project_package() -> None:
    code = "import sys, loaders; print(sorted({m.split('.')[0] for m in sys.modules}))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(loaders.__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    loaded = set(result.stdout.strip().strip("[]").replace("'", "").split(", "))
    assert loaded & {"sidecar", "batching", "aiohttp"} == set()
