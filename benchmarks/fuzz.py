"""schemathesis against a served `/openapi.json`: every operation fuzzed, every answer checked.

    python -m benchmarks.fuzz [--examples 1000] [--models embed,classify,rerank] [--seed 1]

For each model, `sidecar serve` in a subprocess (CPU, warm-up off, a bearer token): embed is the
demo model, classify and rerank tiny random-weight snapshots (their routes' success bodies get
fuzzed too; on the embed model /v1/rerank can only refuse). The document is fetched with the token
and checked against the OpenAPI 3.1 specification, then `schemathesis run` drives it: the coverage
phase (boundaries and each way to be invalid), the fuzzing phase (`--examples` cases per
operation, valid and invalid) and the stateful phase, every response checked by `CHECKS`:
no 5xx, a documented status, content type, headers and body schema, the token enforced, 405 with
`Allow` for methods a path lacks, and no stack trace or server path (`benchmarks.fuzz_checks`).

`X-Request-Timeout-Ms` is sent as 30000 (the server's own deadline): a client that asks a 1 ms
deadline gets the 504 it asked for, which `not_a_server_error` would count; its parsing and its
400/504 are tests in tests/sidecar/test_status_codes.py.

Writes benchmarks/results/fuzz.json (or --out): per model, the command, seconds, test cases,
failures, errors, each operation's valid cases accepted and rejected, and the requests the
server counted by route and status during the run (`sidecar_requests_total`; the health
port's own readiness polls are counted before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness import ROOT, serve

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
    "unsupported_method",
    "no_internals",
)
PHASES = ("coverage", "fuzzing", "stateful")
TOKEN = "fuzz-token"
CONFIG = '[parameters]\n"X-Request-Timeout-Ms" = "30000"\n'


def model_dirs(names: list[str], workdir: Path) -> dict[str, Path | None]:
    """The model each run serves: None is the demo model."""
    from tests.snapshots import make_bert_snapshot, make_cross_encoder_snapshot

    made: dict[str, Path | None] = {}
    for name in names:
        if name == "embed":
            made[name] = None
        elif name == "classify":
            made[name] = make_bert_snapshot(workdir / "classify", task="classify")
        elif name == "rerank":
            made[name] = make_cross_encoder_snapshot(workdir / "rerank")
        else:
            raise ValueError(f"unknown model {name!r}: embed, classify or rerank")
    return made


async def fetch_document(port: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/openapi.json"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as r:
        r.raise_for_status()
        document: dict[str, Any] = await r.json()
    return document


def schemathesis(
    port: int,
    document: Path,
    workdir: Path,
    *,
    examples: int,
    seed: int,
    phases: tuple[str, ...],
    configured: list[str],
) -> dict[str, Any]:
    """One `schemathesis run` against the server on `port`; its JSON report, summarised."""
    config = workdir / "schemathesis.toml"
    config.write_text(CONFIG)
    report = workdir / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        str(document),
        "--url",
        f"http://127.0.0.1:{port}",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        ",".join(phases),
        "--max-examples",
        str(examples),
        "--seed",
        str(seed),
        "--request-timeout",
        "60",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "benchmarks.fuzz_checks",
        "FUZZ_CONFIGURED": os.pathsep.join(configured),
        "PYTHONPATH": str(ROOT),
    }
    started = time.perf_counter()
    # cwd: schemathesis keeps a cache (.schemathesis/) in its working directory
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    data = json.loads(report.read_text()) if report.exists() else {}
    return {
        "command": " ".join(["schemathesis", *command[3:]]),
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        "operations": data.get("operations"),
        "test_cases": data.get("test_cases"),
        "failures": data.get("failures", []),
        "errors": data.get("errors", []),
        "valid_rates": data.get("valid_rates"),
        "output_tail": done.stdout[-4000:] if done.returncode else "",
    }


async def fuzz_model(
    name: str, model: Path | None, workdir: Path, **options: Any
) -> dict[str, Any]:
    """Serve `model`, fetch and validate its document, run schemathesis against it."""
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    env = {
        "SIDECAR_WARMUP": "false",
        "SIDECAR_DEVICE": "cpu",
        "SIDECAR_AUTH_TOKEN_FILE": str(token_file),
        "SIDECAR_JOBS_DIR": str(workdir / "jobs"),  # the job routes are fuzzed too
        **({"SIDECAR_MODEL": str(model)} if model is not None else {}),
    }
    with tempfile.TemporaryDirectory(prefix="fz-", dir="/tmp") as socket_dir:
        async with serve(env, socket_dir, name=name) as served:
            document = await fetch_document(served.port)
            validate(document)
            path = workdir / "openapi.json"
            path.write_text(json.dumps(document))
            configured = [str(model)] if model is not None else []
            configured.append(served.socket_path)
            configured.append(env["SIDECAR_JOBS_DIR"])
            before = await served_requests(served.health_port)
            result = await asyncio.to_thread(
                schemathesis, served.port, path, workdir, configured=configured, **options
            )
            after = await served_requests(served.health_port)
    requests = {
        route: {code: n - before.get(route, {}).get(code, 0) for code, n in codes.items()}
        for route, codes in after.items()
    }
    return {"model": name, "paths": len(document["paths"]), **result, "requests": requests}


async def served_requests(health_port: int) -> dict[str, dict[str, int]]:
    """`sidecar_requests_total` by route and status, as the server counted them."""
    url = f"http://127.0.0.1:{health_port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        text = await r.text()
    counts: dict[str, dict[str, int]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sidecar_requests_total":
                route, code = sample.labels["route"], sample.labels["code"]
                counts.setdefault(route, {})[code] = int(sample.value)
    return counts


async def run(models: list[str], out: Path, **options: Any) -> dict[str, Any]:
    """Fuzz each model in turn; `out` is rewritten as each run ends."""
    started = time.perf_counter()
    result: dict[str, Any] = {
        "examples_per_operation": options["examples"],
        "checks": list(CHECKS),
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        for name, model in model_dirs(models, Path(tmp)).items():
            workdir = Path(tmp) / f"run-{name}"
            workdir.mkdir()
            result["runs"].append(await fuzz_model(name, model, workdir, **options))
            result["seconds"] = round(time.perf_counter() - started, 1)
            out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="fuzzing cases per operation")
    parser.add_argument("--models", default="embed,classify,rerank")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/fuzz.json")
    args = parser.parse_args()
    result = asyncio.run(
        run(
            args.models.split(","),
            args.out,
            examples=args.examples,
            seed=args.seed,
            phases=tuple(args.phases.split(",")),
        )
    )
    for one in result["runs"]:
        cases = one["test_cases"] or {}
        served = {route: sum(codes.values()) for route, codes in one["requests"].items()}
        print(
            f"{one['model']}: {one['paths']} paths, {cases.get('generated')} cases, "
            f"{len(one['failures'])} failures, {len(one['errors'])} errors, {one['seconds']} s; "
            f"fewest requests on a route: {min(served.values(), default=0)}"
        )
    if any(one["exit_code"] for one in result["runs"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
