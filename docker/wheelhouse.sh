#!/usr/bin/env bash
# Download every wheel an image installs into DIR, with this machine's pip configuration (index,
# mirror, CA bundle, find-links), so that the image build itself needs no network:
#
#   docker/wheelhouse.sh PYTHON DIR TORCH_SPEC [EXTRA...]
#
# ACCELERATOR=cuda downloads the CUDA image's builds (onnxruntime-gpu for onnxruntime).
#
# Wheels are chosen for the image (CPython 3.11 on glibc 2.28 or newer: Debian bookworm, x86_64),
# not for this machine. Extras are fetched without their dependencies, as the image installs them.
set -euo pipefail

usage="usage: wheelhouse.sh PYTHON DIR TORCH_SPEC [EXTRA...]"
python=${1:?$usage}
dir=${2:?$usage}
torch_spec=${3:?$usage}
shift 3
requirements="$(dirname "$0")/requirements.py"
pyproject="$(dirname "$0")/../pyproject.toml"

# pip does not widen --platform to older glibc versions: list them, newest first.
target=(--only-binary=:all: --implementation cp --python-version 3.11
    --abi cp311 --abi abi3 --abi none)
for minor in $(seq 28 -1 5); do target+=(--platform "manylinux_2_${minor}_x86_64"); done
target+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

mkdir -p "$dir"
cuda=()
[[ ${ACCELERATOR:-cpu} != cuda ]] || cuda=(--cuda)  # the CUDA image's builds (requirements.py)
"$python" "$requirements" --pyproject "$pyproject" runtime "$torch_spec" --build "${cuda[@]}" \
    > "$dir/requirements.txt"
"$python" -m pip download --quiet --dest "$dir" --requirement "$dir/requirements.txt" "${target[@]}"
for extra in "$@"; do
    "$python" "$requirements" --pyproject "$pyproject" extra "$extra" > "$dir/extra-$extra.txt"
    "$python" -m pip download --quiet --no-deps --dest "$dir" \
        --requirement "$dir/extra-$extra.txt" "${target[@]}"
done
echo "wheelhouse: $(find "$dir" -name '*.whl' | wc -l) wheels, $(du -sh "$dir" | cut -f1) in $dir" >&2
