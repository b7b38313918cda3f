"""The GPU check's summary: the mode, then one line per step with its headline figures.

Reads the report benchmarks.gpu_check writes; a step cut short still gets a line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.gpu_serving import UTILIZATION_TARGET
from benchmarks.gpu_steps import LOAD_TARGET_SHARE, PARITY_MIN_COSINE


def summary(report: dict[str, Any]) -> str:
    """A few lines: the mode, then one line per step with its headline figures."""
    env = report["steps"].get("environment", {})
    device = env.get("device") or {}
    head = (
        f"GPU check, mode {report['mode']}"
        + (f" ({report['mode_reason']})" if report.get("mode_reason") else "")
        + (f" on {device['name']} (cc {device['capability']})" if device else "")
        + f", torch {env.get('torch')}, {report.get('elapsed_s', 0)} of {report['budget_s']} s"
    )
    lines = [head]
    if report["mode"] == "dry-run":
        lines.append("dry run: CPU substitutes at tiny sizes; figures only a GPU gives: skipped")
    lines += [step_line(name, result) for name, result in report["steps"].items()]
    return "\n".join(lines) + "\n"


def step_line(name: str, result: dict[str, Any]) -> str:
    head = f"{name} [{result['status']}, {result.get('seconds', 0)} s]"
    if result["status"] in ("failed", "timeout") or result["status"].startswith("crashed"):
        last = (result.get("error") or "").strip().splitlines()[-1:] or ["see the JSON"]
        head += f" {last[0][:160]}"
    describe = _DESCRIBE.get(name)
    if describe is None or result["status"] == "skipped":
        return head + (f": {result['reason']}" if "reason" in result else "")
    try:
        return f"{head}: {describe(result)}"
    except (KeyError, TypeError, ValueError, IndexError):
        return f"{head}: incomplete, see the JSON"


def _figure(value: Any, unit: str = "") -> str:
    if isinstance(value, dict) and "skipped" in value:
        return f"skipped ({value['skipped']})"
    return f"{value}{unit}"


def _describe_tests(r: dict[str, Any]) -> str:
    t = r["results"]
    text = ", ".join(f"{t[key]} {key}" for key in ("passed", "failed", "errors", "skipped"))
    return text + "".join(f"\n    {note}" for note in t["not_passed"][:8] if "skipped" not in note)


def _describe_parity(r: dict[str, Any]) -> str:
    return "min cosine to CPU fp32: " + ", ".join(
        f"{dtype} {r[dtype]['min_cosine']} ({'met' if r[dtype]['passed'] else 'MISSED'}"
        f" >= {r[dtype]['threshold']})"
        for dtype in PARITY_MIN_COSINE
        if dtype in r
    )


def _describe_load(r: dict[str, Any]) -> str:
    h2d = r["pinned_h2d"]
    if "skipped" in h2d:
        host = r["host_copy"]["median_gbps"]
        ceiling = f"pinned H2D skipped ({h2d['skipped']}); host copy {host}"
    else:
        ceiling = f"pinned H2D {h2d['median_gbps']}"
    ours, theirs = r["ours"], r["safetensors"]
    if "skipped" in h2d:
        verdict = "the target is of pinned H2D"
    else:
        met = "met" if ours["share_of_ceiling"] >= LOAD_TARGET_SHARE else "MISSED"
        verdict = f"target {LOAD_TARGET_SHARE}: {met}"
    return (
        f"{ceiling} GB/s; ours {ours['median_gbps']} GB/s = {ours['share_of_ceiling']} of it "
        f"({verdict}); load_file {theirs['median_gbps']} GB/s = {theirs['share_of_ceiling']}; "
        f"bit-identical: {r['bit_identical']}"
    )


def _describe_attention(r: dict[str, Any]) -> str:
    def case(c: dict[str, Any]) -> str:
        kernels = c["attention_kernels"]
        named = "; ".join(kernels[:2]) if isinstance(kernels, list) else "kernels skipped"
        return f"{'/'.join(c['backends']) or 'no SDPA op seen'} ({named})"

    return f"{r['dtype']}: padded -> {case(r['padded'])}; unpadded -> {case(r['unpadded'])}"


def _describe_grid(r: dict[str, Any]) -> str:
    def fit(c: dict[str, Any]) -> str:
        if not c.get("fitted"):
            return "not fitted"
        return (
            f"knee {c['knee_tokens']} tokens, overhead {c['overhead_tokens']} tokens, floor "
            f"{c['floor_ms']} ms, median error {c.get('median_relative_error')}"
        )

    return (
        f"{len(r['grid'])} shapes in {r['dtype']}; grid fit: {fit(r['cost_model'])}; "
        f"warm-up fit: {fit(r['cost_model_from_warmup'])}"
    )


def _describe_serve(r: dict[str, Any]) -> str:
    runs = [r[key] for key in r if key.startswith("clients_")]
    parts = [
        f"{run['clients']} clients {run['throughput_per_s']}/s p50 {run['p50_ms']} ms"
        f" (CPU client {run['client_cpu_share']}, server {run['server_cpu_share']})"
        + (f" {sum(run['errors'].values())} ERRORS" if run["errors"] else "")
        for run in runs
    ]
    top = runs[-1]["gpu_utilization"]
    if "skipped" in top:
        use = f"GPU utilisation {_figure(top)}"
    else:
        met = "met" if top["median"] >= UTILIZATION_TARGET else "MISSED"
        use = (
            f"GPU utilisation at {runs[-1]['clients']} clients: median {top['median']} "
            f"(target {UTILIZATION_TARGET}: {met})"
        )
    return "; ".join(parts) + f"; {use}"


def _describe_oom(r: dict[str, Any]) -> str:
    limit = r["memory_limit"]
    where = f"fraction {limit['fraction']}" if "fraction" in limit else _figure(limit)
    return (
        f"{where}: {r['out_of_memory_errors']} out-of-memory errors, batches {r['batches_run']}, "
        f"all {r['items']} items ok: {r['all_items_succeeded']}, cache released on "
        f"{sorted(set(r['releases_on_threads']))}, min cosine to unsplit "
        f"{r['min_cosine_to_unsplit']}"
    )


def _describe_nvml(r: dict[str, Any]) -> str:
    gauges = r["gauges"]
    if "skipped" in gauges:
        return f"CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}: {_figure(gauges)}"
    shown = ", ".join(f"{key} {value:g}" for key, value in gauges.items())
    return f"CUDA_VISIBLE_DEVICES={r['cuda_visible_devices']}: {shown}; missing {r['missing']}"


def _describe_setup(r: dict[str, Any]) -> str:
    model, wheels = r["model"], r["wheels"]
    shape = model.get("shape")
    where = "on the path" if wheels.get("on_path") else "checked only"
    carried = _figure(wheels) if "skipped" in wheels else f"{len(wheels['wheels'])} wheels {where}"
    sized = f" (hidden {shape['hidden_size']}, {shape['num_layers']} layers)" if shape else ""
    return f"{model['kind']}{sized}; {carried}"


def _describe_graphs(r: dict[str, Any]) -> str:
    shapes = ", ".join(
        f"({s['rows']}, {s['tokens']}) {s['eager_ms']}/{s['graph_ms']} ms"
        + (f" x{s['ratio']}" if not isinstance(s["ratio"], dict) else "")
        for s in r["shapes"]
    )
    parity, memory = r["parity"], _figure(r["capture_memory_mib"], " MiB")
    return (
        f"{len(r['captured'])} captured ({r['capture']}), memory {memory}; "
        f"eager/replay {shapes}; parity min cosine {parity['min_cosine']} "
        f"({'met' if parity['passed'] else 'MISSED'} >= {parity['threshold']}); other shape eager: "
        f"{r['outside_shape']['ran_eagerly']}"
    )


_DESCRIBE: dict[str, Callable[[dict[str, Any]], str]] = {
    "environment": lambda r: f"CUDA {r['cuda_available']}, python {r['python']}",
    "setup": _describe_setup,
    "tests": _describe_tests,
    "parity": _describe_parity,
    "load": _describe_load,
    "attention": _describe_attention,
    "forward_grid": _describe_grid,
    "graphs": _describe_graphs,
    "serve": _describe_serve,
    "oom": _describe_oom,
    "nvml": _describe_nvml,
}
