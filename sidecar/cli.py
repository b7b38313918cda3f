"""Command line: `sidecar serve` (the default), `sidecar pull MODEL`,
`sidecar export onnx MODEL OUT` and `sidecar admin ...` (model versions, `sidecar.admin_client`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from sidecar import __version__
from sidecar.config import Settings
from sidecar.errors import ConfigError
from sidecar.timeline import Timeline


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `sidecar` console script."""
    timeline = Timeline()
    parser = argparse.ArgumentParser(prog="sidecar", description="Model-serving sidecar.")
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve the model from SIDECAR_* settings (default)")
    pull = commands.add_parser("pull", help="pre-fetch a hub model into the Hugging Face cache")
    pull.add_argument("model", help="hf://org/name[@revision], or a local path to validate")
    export = commands.add_parser("export", help="write a copy of a model for another runtime")
    formats = export.add_subparsers(dest="format", required=True)
    onnx = formats.add_parser(
        "onnx", help="an ONNX model directory the onnx backend serves (parity checked)"
    )
    onnx.add_argument("model", help="a snapshot directory, or hf://org/name in the cache")
    onnx.add_argument("out", type=Path, help="the directory to write (must not exist)")
    onnx.add_argument("--task", choices=("embed", "classify", "rerank"), help="default: detected")
    onnx.add_argument(
        "--optimize", action="store_true", help="ONNX Runtime's transformer optimizer"
    )
    onnx.add_argument("--fp16", action="store_true", help="convert to fp16 (for CUDA)")
    onnx.add_argument(
        "--samples", type=Path, help="texts for the parity check, one a line (default: 200 "
        "generated from the tokenizer's vocabulary)",
    )  # fmt: skip
    from sidecar import admin_client

    admin_client.add_parser(commands)
    args = parser.parse_args(argv)
    environ = os.environ if environ is None else environ
    from sidecar.auth import BearerToken

    try:
        settings = Settings.from_env(environ)
        auth = BearerToken.from_file(settings.auth_token_file) if settings.auth_token_file else None
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 2

    from sidecar import logs

    logs.configure(settings.log_level, settings.log_format)
    if args.command == "admin":
        return admin_client.run(args, settings.versions.admin_uds)
    if args.command == "pull":
        return _pull(args.model, settings)
    if args.command == "export":
        return _export_onnx(args)
    from sidecar.server import serve

    timeline.mark("imports")
    return asyncio.run(serve(settings, auth=auth, timeline=timeline))


def _pull(spec: str, settings: Settings) -> int:
    import loaders

    try:
        source = loaders.pull(
            spec,
            cache_dir=Path(settings.hf_home) / "hub" if settings.hf_home else None,
            token=settings.hf_token,
        )
    except loaders.LoaderError as exc:
        print(f"sidecar pull: {exc}", file=sys.stderr)
        return 1
    files = len(source.weight_files)
    print(f"{source.name}: {files} weight file(s) ready in {source.directory}")
    return 0


def _export_onnx(args: argparse.Namespace) -> int:
    from sidecar.onnx_export import ExportError, export_onnx

    samples = None
    if args.samples is not None:
        samples = [line for line in args.samples.read_text().splitlines() if line.strip()]
    try:
        report = export_onnx(
            args.model, args.out, task=args.task, optimize=args.optimize, fp16=args.fp16,
            samples=samples,
        )  # fmt: skip
    except ExportError as exc:
        print(f"sidecar export onnx: {exc}", file=sys.stderr)
        return 1
    closeness = (
        f"least cosine {report.min_cosine:.7f}"
        if report.min_cosine is not None
        else f"largest difference {report.max_difference:.2e}"
    )
    print(
        f"{report.out}: {report.task} model, {report.graph_bytes / 1e6:.1f} MB, parity on "
        f"{report.num_samples} samples: {closeness} ({report.seconds:.1f} s)"
    )
    return 0
