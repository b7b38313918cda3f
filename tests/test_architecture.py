"""Layering and safety rules that hold for the whole code base."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("sidecar", "batching", "loaders")


def sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("batching", ["torch", "numpy", "aiohttp", "sidecar", "loaders", "prometheus_client"]),
        ("loaders", ["aiohttp", "sidecar", "batching", "prometheus_client"]),
        # The interface alone: what the protocols and the serving layer name.
        ("sidecar.models", ["torch", "tokenizers", "aiohttp", "batching", "sidecar.api"]),
        # The families: torch and tokenizers, never the web or the rest of the sidecar.
        (
            "sidecar.models.families",
            [
                "aiohttp",
                "batching",
                "prometheus_client",
                "transformers",
                "sentence_transformers",
                "sidecar.api",
                "sidecar.serving",
                "sidecar.config",
                "sidecar.errors",
            ],
        ),
        # Protocols translate wire formats: no model machinery, no serving internals.
        ("sidecar.api", ["torch", "tokenizers", "loaders", "batching", "sidecar.serving"]),
        ("sidecar.serving", ["aiohttp", "sidecar.api", "sidecar.app", "prometheus_client"]),
        # Settings and errors are read by every layer: they pull in nothing heavy.
        ("sidecar.config", ["torch", "aiohttp", "batching"]),
        ("sidecar.errors", ["torch", "aiohttp", "batching"]),
    ],
)
def test_import_boundaries(module: str, forbidden: list[str]) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {forbidden!r} if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"{module} imports {result.stdout.strip()}"


def test_no_pickle_and_no_torch_load() -> None:
    offenders = []
    for path in sources(*PACKAGES):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and node.attr == "load":
                base = node.value
                names = ["torch.load"] if isinstance(base, ast.Name) and base.id == "torch" else []
            elif isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                names = ["allow_pickle"]
            else:
                continue
            for name in names:
                if name.split(".")[0] in ("pickle", "cloudpickle", "dill") or name in (
                    "torch.load",
                    "allow_pickle",
                ):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []


def test_only_the_entry_point_reads_the_environment() -> None:
    allowed = {ROOT / "sidecar" / "cli.py"}
    readers = []
    for path in sources(*PACKAGES):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("environ", "getenv")
                and isinstance(node.value, ast.Name)
                and node.value.id == "os"
                and path not in allowed
            ):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert readers == []


def test_modules_stay_small() -> None:
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in sources(*PACKAGES)
        if (n := len(p.read_text().splitlines())) > 450
    ]
    assert long == []
