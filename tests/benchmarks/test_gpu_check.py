"""The GPU check without a GPU: its dry run takes every step's path on the CPU, and its steps
are time-boxed so that one that hangs or fails does not cost the others."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from benchmarks.gpu_check import STEPS, Context, Step, run_steps
from benchmarks.gpu_steps import DRY_SIZES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    base = tmp_path_factory.mktemp("gpu-check")
    command = [
        sys.executable, "-m", "benchmarks.gpu_check", "--dry-run", "--out", str(base / "out"),
        "--work", str(base / "work"),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    log = (base / "out" / "steps.log").read_text() if (base / "out" / "steps.log").is_file() else ""
    assert result.returncode == 0, result.stdout + result.stderr + log[-4000:]
    report = json.loads((base / "out" / "gpu_check.json").read_text())
    return report, (base / "out" / "gpu_check.txt").read_text()


def test_the_dry_run_runs_every_step_to_its_end(dry_run: tuple[dict[str, Any], str]) -> None:
    report, summary = dry_run
    assert report["mode"] == "dry-run"
    assert list(report["steps"]) == [step.name for step in STEPS]
    assert {name: step["status"] for name, step in report["steps"].items()} == {
        step.name: "ok" for step in STEPS
    }
    assert summary.startswith("GPU check, mode dry-run")
    assert len(summary.splitlines()) >= len(STEPS) + 2


def test_the_dry_run_says_what_only_a_gpu_measures(dry_run: tuple[dict[str, Any], str]) -> None:
    steps = dry_run[0]["steps"]
    assert steps["environment"]["cuda_available"] is False
    assert "stand-in" in steps["setup"]["model"]["kind"]
    tests = steps["tests"]["results"]
    assert tests["skipped"] >= 5 and tests["failed"] == tests["errors"] == 0
    assert all(steps["parity"][dtype]["device"] == "cpu" for dtype in ("bfloat16", "float16"))
    load = steps["load"]
    assert "skipped" in load["pinned_h2d"] and load["bit_identical"] is True
    assert steps["attention"]["padded"]["backends"]
    assert "skipped" in steps["attention"]["padded"]["attention_kernels"]
    assert steps["forward_grid"]["grid"] and steps["forward_grid"]["cost_model"]["fitted"]
    graphs = steps["graphs"]
    assert (
        graphs["captured"] and graphs["parity"]["passed"] and graphs["outside_shape"]["ran_eagerly"]
    )
    assert all(shape["replayed"] and "skipped" in shape["ratio"] for shape in graphs["shapes"])
    assert "skipped" in graphs["capture_memory_mib"]
    serve = steps["serve"]
    assert all(serve[f"clients_{c}"]["ok"] >= c for c in DRY_SIZES.serve_clients)
    assert "skipped" in serve[f"clients_{max(DRY_SIZES.serve_clients)}"]["gpu_utilization"]
    oom = steps["oom"]
    assert "skipped" in oom["memory_limit"] and oom["out_of_memory_errors"] >= 1
    assert oom["split"] and oom["all_items_succeeded"]
    assert oom["releases_on_threads"] and all(
        name.startswith("device") for name in oom["releases_on_threads"]
    )
    assert "skipped" in steps["nvml"]["gauges"]


def sleep_long(ctx: Context) -> None:
    ctx.put("started", True)
    time.sleep(600)


def fail(ctx: Context) -> None:
    raise RuntimeError("the step broke")


def finish(ctx: Context) -> None:
    ctx.put("answer", 42)


def test_a_step_past_its_limit_is_killed_and_the_next_steps_still_run(tmp_path: Path) -> None:
    ctx = Context(root=ROOT, work=tmp_path, out=tmp_path, dry_run=False, sizes=DRY_SIZES)
    results: dict[str, dict[str, Any]] = {}
    steps = [Step("slow", sleep_long, 3), Step("broken", fail, 60), Step("last", finish, 60)]
    started = time.monotonic()
    with warnings.catch_warnings():
        # Python 3.12 warns of fork() in a process with threads; the steps are forked on purpose
        # (see run_step) and start no threads of their own before they run.
        warnings.simplefilter("ignore", DeprecationWarning)
        run_steps(steps, ctx, time.monotonic() + 120, results.__setitem__, min_step_s=1)
    assert time.monotonic() - started < 30
    assert results["slow"]["status"] == "timeout" and results["slow"]["started"] is True
    assert results["broken"]["status"] == "failed"
    assert "the step broke" in results["broken"]["error"]
    assert results["last"]["status"] == "ok" and results["last"]["answer"] == 42


def test_a_step_is_skipped_when_the_budget_leaves_it_no_time(tmp_path: Path) -> None:
    ctx = Context(root=ROOT, work=tmp_path, out=tmp_path, dry_run=False, sizes=DRY_SIZES)
    results: dict[str, dict[str, Any]] = {}
    run_steps([Step("late", finish, 60)], ctx, time.monotonic() + 5, results.__setitem__)
    assert results == {"late": {"status": "skipped", "reason": "no time left in the budget"}}
