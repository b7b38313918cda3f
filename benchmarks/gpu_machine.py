"""The GPU check's first steps: the machine and its packages, the model, the GPU tests.

Run by benchmarks.gpu_check, each in a process of its own; see benchmarks.gpu_steps for how
steps record what they find. Only the standard library is imported at module level.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.gpu_check import Context


# -- environment and setup ----------------------------------------------------------------------


def environment(ctx: Context) -> None:
    """The machine, torch, the device, and every dependency's version and where it came from."""
    import torch

    from sidecar.models.device import cuda_unavailable_reason

    cuda = torch.cuda.is_available()
    ctx.put("python", platform.python_version())
    ctx.put("torch", torch.__version__)
    ctx.put("torch_cuda", torch.version.cuda)
    ctx.put("cpu_count", os.cpu_count())
    ctx.put("cuda_visible_devices", os.environ.get("CUDA_VISIBLE_DEVICES"))
    ctx.put("cuda_available", cuda)
    if cuda:
        props = torch.cuda.get_device_properties(0)
        ctx.put("device", {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_bytes": props.total_memory,
            "multiprocessors": props.multi_processor_count,
            "uuid": str(props.uuid),
            "count": torch.cuda.device_count(),
        })  # fmt: skip
    else:
        ctx.put("cuda_unavailable", cuda_unavailable_reason())
    ctx.put("nvidia_smi", _nvidia_smi())
    ctx.put("packages", _packages(ctx.root))
    ctx.share(cuda=cuda)


def setup(ctx: Context) -> None:
    """The carried wheels (installed before any step), and the model every later step uses."""
    from benchmarks import gpu_carry

    ctx.put("wheels", ctx.shared.get("install"))
    standin = ctx.shared.get("standin_root")
    if standin is None:
        model_dir = gpu_carry.installed_demo_path()
        if model_dir is None:
            raise RuntimeError("no demo model package and no stand-in asked for")
        ctx.put("model", {"kind": "the demo model package", "path": str(model_dir)})
    else:
        carried = ctx.root / ".gpu" / "demo"
        installed = ctx.shared.get("installed_demo")
        source = carried if carried.is_dir() else Path(installed) if installed else None
        if source is None:
            raise RuntimeError("no tokenizer to build the model from: run make gpu-check-prepare")
        shape = ctx.sizes.model_shape
        model_dir = gpu_carry.build_standin(Path(standin), source, shape, ctx.work)
        ctx.put("model", {
            "kind": "stand-in: the demo's tokenizer, random weights",
            "tokenizer_from": str(source),
            "shape": asdict(shape),
            "path": str(model_dir),
            "weight_bytes": (model_dir / "model.safetensors").stat().st_size,
        })  # fmt: skip
    ctx.share(model_dir=str(model_dir))


# -- the GPU tests ------------------------------------------------------------------------------


def tests(ctx: Context) -> None:
    """`pytest -m gpu` over the test files that hold gpu-marked tests, with the carried pytest.

    Plugins are named rather than discovered: the machine's own pytest plugins are of unknown
    versions, and the carried pytest shadows its pytest.
    """
    files = sorted(
        str(path.relative_to(ctx.root))
        for path in (ctx.root / "tests").rglob("test_*.py")
        if "container" not in path.parts and "pytest.mark.gpu" in path.read_text()
    )
    plugins = [
        name
        for name in ("pytest_asyncio.plugin", "pytest_aiohttp.plugin")
        if importlib.util.find_spec(name.partition(".")[0]) is not None
    ]
    junit = ctx.work / "pytest-gpu.xml"
    junit.unlink(missing_ok=True)
    command = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
        *(arg for name in plugins for arg in ("-p", name)),
        "-m", "gpu", "-q", "-rfEs", f"--junitxml={junit}", *files,
    ]  # fmt: skip
    ctx.put("command", " ".join(command[1:]))
    ctx.put("plugins", plugins)
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONUNBUFFERED": "1"}
    log = ctx.out / "pytest.log"
    with log.open("w") as output:
        exit_code = subprocess.run(
            command,
            cwd=ctx.root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=max(1.0, ctx.remaining_s() - 5),
            check=False,
        ).returncode
    ctx.put("exit_code", exit_code)
    ctx.put("log", log.name)
    if junit.is_file():
        ctx.put("results", _junit(junit))


def _junit(path: Path) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    notes: list[str] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = next(
            (child.tag for child in case if child.tag in ("failure", "error", "skipped")),
            "passed",
        )
        outcomes[outcome] += 1
        if outcome != "passed":
            reason = next(child for child in case if child.tag == outcome).get("message", "")
            notes.append(f"{outcome}: {name}: {reason.splitlines()[0] if reason else ''}"[:300])
    return {
        "passed": outcomes["passed"],
        "failed": outcomes["failure"],
        "errors": outcomes["error"],
        "skipped": outcomes["skipped"],
        "not_passed": notes[:40],
    }


# -- helpers ------------------------------------------------------------------------------------


def _nvidia_smi() -> Any:
    if shutil.which("nvidia-smi") is None:
        return {"skipped": "nvidia-smi is not on the PATH"}
    query = "name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit,persistence_mode"
    result = subprocess.run(
        ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout.strip().splitlines() or result.stderr.strip()


def _packages(root: Path) -> dict[str, Any]:
    """Each dependency of pyproject.toml (and the test tools): version, folder, requirement met."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    # The tests' tools, and what the carried pytest needs from the machine.
    tools = ["pytest", "pytest-asyncio", "pytest-aiohttp", "pluggy", "iniconfig", "hypothesis"]
    wanted = [*project["dependencies"], *tools, "packaging", "pygments", "typing-extensions"]
    report: dict[str, Any] = {}
    for spec in wanted:
        requirement = Requirement(spec)
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            report[requirement.name] = {"version": None, "required": str(requirement.specifier)}
            continue
        report[requirement.name] = {
            "version": dist.version,
            "required": str(requirement.specifier) or None,
            "met": requirement.specifier.contains(dist.version, prereleases=True),
            "from": str(dist.locate_file("")),
        }
    return report
