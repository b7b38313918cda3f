"""The device check: one command, under 8 minutes on one GPU, one JSON and a short summary.

    python -m benchmarks.gpu_check [--out DIR] [--dry-run] [--require-cuda] [--budget-s 450]
                                   [--only STEP,...] [--work DIR]
    python -m benchmarks.gpu_check --prepare   # here, before the device call: fills .gpu/

Steps, in this order, each in a process of its own with its own time limit, so that a step that
hangs or crashes costs its own time only and keeps what it recorded before:
  environment   the machine, torch, the GPU, nvidia-smi, each dependency's version and origin
  setup         the model the steps use: the demo package, or a stand-in of its shape (the demo's
                tokenizer, random weights) where it is missing (benchmarks.gpu_carry)
  tests         pytest -m gpu over the test files that hold gpu-marked tests
  parity        bf16, fp16 and fp32 on the device against fp32 on the CPU, through run_inline
  load          pinned H2D bandwidth; a generated 2.1 GB checkpoint loaded to the device by ours
                and by safetensors' load_file(device=...): bit-identity, GB/s, share of H2D
  attention     the SDPA backend and kernels for a padded and an unpadded batch (profiler)
  forward_grid  forward time over items x tokens, and what batching.BatchCost fits to it
  graphs        CUDA graphs per bucket shape: eager time / replay time, parity, capture memory
  serve         `python -m sidecar serve` at 1, 16 and 128 clients, GPU use from its /metrics
  oom           a batch too big for a small memory fraction: halved until it fits
  nvml          the GPU gauges with CUDA_VISIBLE_DEVICES set
A step gets its own budget or less: the time left, less 10 s for each step after it.

Outputs, rewritten after every step, in --out (default $OUT, else /tmp/gpu-check/out):
gpu_check.json, gpu_check.txt (the summary, benchmarks.gpu_summary), pytest.log, and steps.log
(what the steps print: the server's log, tracebacks); this prints one line per step. Carried
wheels (.gpu/wheels) are installed first into --site (default /tmp/site) when this Python is the
GPU machine's; otherwise they are only test-installed for it.

Without CUDA, or with --dry-run, every step runs on the CPU at tiny sizes and what only a GPU
measures is marked skipped with the reason (the dry run); --require-cuda fails instead. Exit code
0 when every step ran to its end: targets missed are findings, not failures.

Only the standard library is imported at module level (torch comes after the wheels).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import logging
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import gpu_carry, gpu_graphs, gpu_machine, gpu_serving, gpu_steps
from benchmarks.gpu_steps import DRY_SIZES, GPU_SIZES, LOAD_TARGET_SHARE, PARITY_MIN_COSINE, Sizes
from benchmarks.gpu_summary import step_line, summary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 450.0
MIN_STEP_S = 10.0
# Imported once here, before the steps fork, so that each step does not pay for it.
_PRELOADED = ("torch", "numpy", "safetensors.torch", "loaders", "sidecar.models.families")


class Context:
    """What a step sees (the tree, its folders, the mode and sizes, facts of earlier steps) and
    where it records what it finds (`put`, written to its result file at once)."""

    def __init__(self, *, root: Path, work: Path, out: Path, dry_run: bool, sizes: Sizes) -> None:
        self.root, self.work, self.out = root, work, out
        self.dry_run = dry_run
        self.sizes = sizes
        self.shared: dict[str, Any] = {}
        self.results: dict[str, Any] = {}
        self.deadline = math.inf
        self.path: Path | None = None

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def put(self, key: str, value: Any) -> None:
        self.results[key] = value
        self.flush()

    def share(self, **facts: Any) -> None:
        """Facts for the steps after this one (the model directory, whether CUDA is there)."""
        self.results.setdefault("shared", {}).update(facts)
        self.flush()

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def flush(self) -> None:
        if self.path is not None:
            _write_json(self.path, self.results)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], None]
    budget_s: float
    needs_model: bool = False  # the model (or stand-in) the setup step provides


STEPS = (
    Step("environment", gpu_machine.environment, 40),
    Step("setup", gpu_machine.setup, 60),
    Step("tests", gpu_machine.tests, 150, needs_model=True),
    Step("parity", gpu_steps.parity, 60, needs_model=True),
    Step("load", gpu_steps.load, 120),
    Step("attention", gpu_steps.attention, 45, needs_model=True),
    Step("forward_grid", gpu_steps.forward_grid, 60, needs_model=True),
    Step("graphs", gpu_graphs.graphs, 45, needs_model=True),
    Step("serve", gpu_serving.serve, 180, needs_model=True),
    Step("oom", gpu_serving.oom, 60, needs_model=True),
    Step("nvml", gpu_serving.nvml, 30),
)


def run_steps(
    steps: Sequence[Step],
    ctx: Context,
    deadline: float,
    record: Callable[[str, dict[str, Any]], None],
    *,
    min_step_s: float = MIN_STEP_S,
) -> None:
    """Run each step in a forked process within its budget, the time left less `min_step_s`
    for each later step (a step given less is skipped); `record` gets each result as it ends."""
    for index, step in enumerate(steps):
        reserve = min_step_s * (len(steps) - index - 1)
        limit = min(step.budget_s, deadline - time.monotonic() - reserve)
        if limit < min_step_s:
            record(step.name, {"status": "skipped", "reason": "no time left in the budget"})
            continue
        if step.needs_model and "model_dir" not in ctx.shared:
            record(step.name, {"status": "skipped", "reason": "no model: the setup step failed"})
            continue
        result = run_step(step, ctx, limit)
        ctx.shared.update(result.get("shared", {}))
        record(step.name, result)


def run_step(step: Step, ctx: Context, limit_s: float) -> dict[str, Any]:
    """One step in a forked process of its own group, killed with its children past `limit_s`.

    Forked, not spawned: the parent has imported torch (and never touched CUDA), so the step
    starts at once; a CUDA context made in one step dies with it.
    """
    path = ctx.work / "steps" / f"{step.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    ctx.results, ctx.path, ctx.deadline = {}, path, time.monotonic() + limit_s
    started = time.monotonic()
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(step, ctx), name=f"gpu-check-{step.name}"
    )
    process.start()
    pid = process.pid
    assert pid is not None
    with contextlib.suppress(OSError):  # the child does it too: whichever runs first
        os.setpgid(pid, pid)
    process.join(limit_s)
    timed_out = process.is_alive()
    with contextlib.suppress(OSError):  # the step and what it left running (a server, pytest)
        os.killpg(pid, signal.SIGKILL)
    process.join()
    ctx.path = None
    found = json.loads(path.read_text()) if path.is_file() else {}
    status = "timeout" if timed_out else found.pop("status", None)
    return {
        "status": status or f"crashed (exit code {process.exitcode})",
        "seconds": round(time.monotonic() - started, 1),
        "limit_s": round(limit_s, 1),
        **{key: value for key, value in found.items() if key != "status"},
    }


def _child(step: Step, ctx: Context) -> None:
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    # The step's own output (the server's log, the profiler's notes) goes to steps.log: the
    # caller's output stays one line per step.
    log = os.open(ctx.out / "steps.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    print(f"== {step.name}", flush=True)
    importlib.invalidate_caches()  # the stand-in package may be newer than the path's caches
    if ctx.dry_run:
        # Two intra-op threads on a shared 2-core machine stall at every barrier (50x slower
        # passes of a tiny model): the dry run measures nothing, one thread keeps it quick.
        import torch

        torch.set_num_threads(1)
    try:
        step.run(ctx)
        ctx.results["status"] = "ok"
    except Exception as exc:
        text = "".join(traceback.format_exception(exc))
        print(f"gpu_check: step {step.name} failed:\n{text}", file=sys.stderr, flush=True)
        ctx.results["status"] = "failed"
        ctx.results["error"] = text[-4000:]
    ctx.flush()
    sys.stdout.flush()


# -- the whole check ----------------------------------------------------------------------------


def check(args: argparse.Namespace) -> int:
    """Run the steps as `args` say, writing the report after each; returns the exit code."""
    started = time.monotonic()
    deadline = started + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    (args.out / "steps.log").write_text("")
    installed_demo = gpu_carry.installed_demo_path()
    sys.modules.pop(gpu_carry.STANDIN_PACKAGE, None)  # a stand-in may take its place later
    install = _install_wheels(args)
    for name in _PRELOADED:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    ctx = Context(root=ROOT, work=args.work, out=args.out, dry_run=args.dry_run, sizes=GPU_SIZES)
    ctx.shared.update(install=install, installed_demo=installed_demo and str(installed_demo))
    report: dict[str, Any] = {
        "check": "benchmarks/gpu_check.py",
        "mode": "dry-run" if args.dry_run else "gpu",
        "mode_reason": "--dry-run" if args.dry_run else None,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "budget_s": args.budget_s,
        "targets": {
            "load_share_of_pinned_h2d": LOAD_TARGET_SHARE,
            "gpu_utilization_at_most_clients": gpu_serving.UTILIZATION_TARGET,
            "parity_min_cosine": PARITY_MIN_COSINE,
        },
        "steps": {},
    }

    def record(name: str, result: dict[str, Any]) -> None:
        report["steps"][name] = result
        report["elapsed_s"] = round(time.monotonic() - started, 1)
        _write_json(args.out / "gpu_check.json", report)
        (args.out / "gpu_check.txt").write_text(summary(report))
        print(f"[{report['elapsed_s']:6.1f} s] {step_line(name, result)}", flush=True)

    first, rest = STEPS[0], [s for s in STEPS[1:] if s.name in args.only or s.name == "setup"]
    run_steps([first], ctx, deadline, record)
    if not args.dry_run and ctx.shared.get("cuda") is not True:
        reason = report["steps"]["environment"].get("cuda_unavailable", "the environment step")
        if args.require_cuda:
            report["mode"] = "gpu: no CUDA device"
            for step in rest:
                record(step.name, {"status": "skipped", "reason": f"no CUDA device ({reason})"})
            return 1
        report["mode"], report["mode_reason"] = "dry-run", f"no CUDA device ({reason})"
        ctx.dry_run = True
    if ctx.dry_run:
        ctx.sizes = DRY_SIZES
        os.environ["OMP_NUM_THREADS"] = "1"  # the server and pytest: see _child
    if ctx.dry_run or installed_demo is None:
        standin = args.work / "standin"
        standin.mkdir(exist_ok=True)
        _prepend_path(standin)
        ctx.shared["standin_root"] = str(standin)
    run_steps(rest, ctx, deadline, record)
    return 0 if all(r["status"] == "ok" for r in report["steps"].values()) else 1


def _install_wheels(args: argparse.Namespace) -> dict[str, Any]:
    """Install the carried wheels for use where this Python is the GPU machine's version (there,
    or a rehearsal of it on a CPU); elsewhere test-install them for it into the work folder."""
    wheels = ROOT / ".gpu" / "wheels"
    target = tuple(int(part) for part in gpu_carry.TARGET_PYTHON.split("."))
    use = sys.version_info[:2] == target
    site = args.site if use else args.work / "site-check"
    report = gpu_carry.install(wheels, site, cross=not use)
    if use and report.get("exit_code") == 0:
        _prepend_path(site)
    report["on_path"] = use and report.get("exit_code") == 0
    _prepend_path(ROOT)  # for the subprocesses: pytest, the server
    return report


def _prepend_path(folder: Path) -> None:
    """First on this process's path and on its subprocesses' (before the installed packages)."""
    sys.path.insert(0, str(folder))
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(folder), *(p for p in paths if p)])
    importlib.invalidate_caches()


def _write_json(path: Path, value: Any) -> None:
    """Whole or not at all: a reader (or a kill) never sees half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value, indent=2, default=str) + "\n")
    os.replace(partial, path)


def main(argv: Sequence[str] | None = None) -> int:
    default_out = Path(os.environ.get("OUT") or Path(tempfile.gettempdir()) / "gpu-check" / "out")
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check")
    parser.add_argument("--site", type=Path, default=Path(tempfile.gettempdir()) / "site")
    parser.add_argument("--dry-run", action="store_true", help="CPU only, tiny sizes")
    parser.add_argument("--require-cuda", action="store_true", help="fail without CUDA")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S)
    parser.add_argument("--only", default="", help="comma list of steps (environment and setup "
                        "always run)")  # fmt: skip
    parser.add_argument("--prepare", action="store_true", help="fill .gpu/ for the GPU machine")
    args = parser.parse_args(argv)
    if args.prepare:
        print(json.dumps(gpu_carry.prepare(), indent=2))
        return 0
    names = [step.name for step in STEPS]
    args.only = [name for name in args.only.split(",") if name] or names
    unknown = sorted(set(args.only) - set(names))
    if unknown:
        parser.error(f"unknown steps {unknown}; steps: {', '.join(names)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
