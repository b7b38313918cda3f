#!/usr/bin/env bash
# The image build behind `make image` and `make image-cuda`:
#
#   docker/build-image.sh cpu|cuda TAG
#
# Settings come from the environment (the Makefile passes its variables):
#   PYTHON              a Python 3.11 with pip, for the downloads done on this machine
#   BASE_IMAGE          the base to build on; empty: DEFAULT_BASE_IMAGE when present or pullable,
#                       else LOCAL_BASE_IMAGE, built with debootstrap when missing (base-image.sh)
#   WHEELHOUSE          1: download every wheel here with this machine's pip settings, and install
#                       offline from them in the build; 0: pip inside the build uses this machine's
#                       http(s) index settings (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL or pip config)
#   TORCH_SPEC, WITH_DEMO, DOCKER_BUILD_ARGS (extra `docker build` options, word-split)
# Either way the CA bundle pip trusts here (PIP_CERT or pip config `cert`) is trusted in the build.
set -euo pipefail

flavour=${1:?usage: build-image.sh cpu|cuda TAG}
tag=${2:?usage: build-image.sh cpu|cuda TAG}
cd "$(dirname "$0")/.."
: "${PYTHON:=python3}" "${WHEELHOUSE:=1}" "${WITH_DEMO:=0}"
: "${DEFAULT_BASE_IMAGE:=python:3.11-slim-bookworm}" "${LOCAL_BASE_IMAGE:=sidecar-base:bookworm}"

log() { echo "build-image: $*" >&2; }

pip_setting() {
    local env_name=$1 key=$2
    echo "${!env_name:-$("$PYTHON" -m pip config get "global.$key" 2>/dev/null || true)}"
}

base=${BASE_IMAGE:-$(docker/base-image.sh "$DEFAULT_BASE_IMAGE" "$LOCAL_BASE_IMAGE")}
args=(--file "Dockerfile.$flavour" --tag "$tag" --build-arg "BASE_IMAGE=$base")
[[ -z ${TORCH_SPEC:-} ]] || args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
[[ $flavour != cpu ]] || args+=(--build-arg "WITH_DEMO=$WITH_DEMO")
extras=()
[[ $WITH_DEMO != 1 ]] || extras+=(demo)

if [[ $WHEELHOUSE == 1 ]]; then
    pip_dir=build/wheelhouse/$flavour
    inputs="${TORCH_SPEC:-} ${extras[*]} $(cat pyproject.toml docker/requirements.py docker/wheelhouse.sh | sha256sum)"
    if [[ ! -f $pip_dir/.complete || $(cat "$pip_dir/.complete") != "$inputs" ]]; then
        rm -rf "$pip_dir"
        ACCELERATOR=$flavour docker/wheelhouse.sh "$PYTHON" "$pip_dir" "${TORCH_SPEC:?TORCH_SPEC is needed for a wheelhouse}" "${extras[@]}"
        echo "$inputs" > "$pip_dir/.complete"
    fi
    args+=(--build-arg "PIP_DIR=$pip_dir" --build-arg PIP_OFFLINE=1)
else
    pip_dir=build/pip-index/$flavour
    mkdir -p "$pip_dir"
    for setting in "PIP_INDEX_URL index-url" "PIP_EXTRA_INDEX_URL extra-index-url"; do
        read -r env_name key <<< "$setting"
        urls=()
        for url in $(pip_setting "$env_name" "$key"); do
            [[ $url == file:* ]] || urls+=("$url")  # the build cannot see this machine's files
        done
        [[ ${#urls[@]} == 0 ]] || args+=(--build-arg "$env_name=${urls[*]}")
    done
    args+=(--build-arg "PIP_DIR=$pip_dir")
fi
cert=$(pip_setting PIP_CERT cert)
if [[ -n $cert && -f $cert ]]; then
    cp "$cert" "$pip_dir/ca.pem"
else
    rm -f "$pip_dir/ca.pem"
fi

# The Dockerfiles build with BuildKit and the classic builder; without buildx, a recent docker
# CLI refuses BuildKit, so ask for the classic builder then.
if [[ -z ${DOCKER_BUILDKIT:-} ]] && ! docker buildx version >/dev/null 2>&1; then
    export DOCKER_BUILDKIT=0
fi
# shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of options
log "docker build ${args[*]} ${DOCKER_BUILD_ARGS:-} ."
docker build "${args[@]}" ${DOCKER_BUILD_ARGS:-} .
size=$(docker image inspect --format '{{.Size}}' "$tag")
log "$tag: $((size / 1000000)) MB"
