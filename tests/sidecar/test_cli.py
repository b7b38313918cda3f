"""`sidecar pull` and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`sidecar ARGS...` in a fresh interpreter, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pull_validates_a_local_model(tiny_embed_dir: Path) -> None:
    result = run("pull", str(tiny_embed_dir))
    assert result.returncode == 0, result.stderr
    assert "1 weight file(s) ready" in result.stdout


def test_pull_of_a_missing_model_fails_cleanly(tmp_path: Path) -> None:
    result = run("pull", str(tmp_path / "nothing-here"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "nothing-here" in result.stderr


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("sidecar ")
