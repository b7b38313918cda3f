"""Command line: `sidecar serve` (the default) and `sidecar pull MODEL`."""

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
    if args.command == "pull":
        return _pull(args.model, settings)
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
