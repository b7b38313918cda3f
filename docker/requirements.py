"""Print requirement lines for an image build, read from pyproject.toml.

    python docker/requirements.py runtime TORCH_SPEC [--build] [--cuda]
                                                                 torch pinned, then dependencies
    python docker/requirements.py extra NAME                     one optional-dependency group

The image's own torch pin (the CPU or the CUDA wheel) replaces the project's looser `torch`
requirement. The runtime lines include the extras every image ships (`IMAGE_EXTRAS`: tracing,
since nobody can pip install into a read-only image), installed with their dependencies.
`--cuda` swaps packages for their CUDA builds (`CUDA_BUILDS`: onnxruntime-gpu, whose 1.31
wheels are built for CUDA 13 like torch 2.13's; it loads the CUDA libraries torch's wheel
brings, since torch is imported first). `--build` adds the build system's requirements, so
that `pip wheel . --no-deps` also works offline from a wheelhouse. Other extras are installed
without their dependencies (the demo package declares sentence-transformers, which the sidecar
never imports), hence their own list.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*")
IMAGE_EXTRAS = ("tracing",)
CUDA_BUILDS = {"onnxruntime": "onnxruntime-gpu>=1.31"}


def runtime(
    pyproject: dict[str, Any], torch_spec: str, *, build: bool, cuda: bool = False
) -> list[str]:
    """torch pinned first, then the project's other dependencies and the image extras' (and
    build requirements); for a CUDA image, the CUDA builds of those that have one."""
    lines = [line for line in pyproject["project"]["dependencies"] if _name(line) != "torch"]
    for name in IMAGE_EXTRAS:
        lines += extra(pyproject, name)
    if cuda:
        lines = [CUDA_BUILDS.get(_name(line), line) for line in lines]
    if build:
        lines += pyproject["build-system"]["requires"]
    return [torch_spec, *lines]


def extra(pyproject: dict[str, Any], name: str) -> list[str]:
    """The requirements of one optional-dependency group."""
    return list(pyproject["project"]["optional-dependencies"][name])


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return match.group(0).lower().replace("_", "-")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path("pyproject.toml"))
    groups = parser.add_subparsers(dest="group", required=True)
    runtime_parser = groups.add_parser("runtime", help="torch pinned, then dependencies")
    runtime_parser.add_argument("torch_spec", help="e.g. torch==2.13.0+cpu")
    runtime_parser.add_argument("--build", action="store_true", help="add build requirements")
    runtime_parser.add_argument("--cuda", action="store_true", help="CUDA builds (onnxruntime-gpu)")
    extra_parser = groups.add_parser("extra", help="one optional-dependency group")
    extra_parser.add_argument("name", help="e.g. demo")
    args = parser.parse_args()
    with args.pyproject.open("rb") as file:
        pyproject = tomllib.load(file)
    if args.group == "runtime":
        lines = runtime(pyproject, args.torch_spec, build=args.build, cuda=args.cuda)
    else:
        lines = extra(pyproject, args.name)
    sys.stdout.write("".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
