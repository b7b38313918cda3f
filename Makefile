# Two commands on a fresh machine: `make serve` (run on the bundled demo model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build for local and CI installs; the CUDA image installs its own torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck install-serve install-test bench clean image image-cuda \
	gpu-check gpu-check-prepare

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[demo]"
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.serve-installed
	$(BIN)/python -m pip install -q -e ".[demo,test]"
	touch $@

install-serve: $(VENV)/.serve-installed
install-test: $(VENV)/.test-installed

## serve: install and run the sidecar on the embedded demo model (127.0.0.1:8080, health :9090)
# On jemalloc where it is installed, as the CPU image runs it (README "Memory").
JEMALLOC := $(shell ldconfig -p 2>/dev/null | grep -o '/[^ ]*libjemalloc\.so\.2$$' | head -n 1)
serve: install-serve
	$(if $(JEMALLOC),LD_PRELOAD=$(JEMALLOC) MALLOC_CONF=background_thread:true) $(BIN)/sidecar serve

## test: install, lint, type-check and run every test
test: install-test lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check sidecar batching loaders tests benchmarks
	$(BIN)/ruff format --check sidecar batching loaders tests benchmarks

typecheck: install-test
	$(BIN)/mypy --strict sidecar batching loaders

## gpu-check: the device check (benchmarks/gpu_check.py): one JSON and a summary in $(GPU_CHECK_OUT);
## without CUDA, a dry run on the CPU. GPU_CHECK_ARGS: e.g. --dry-run, --require-cuda, --only serve
## gpu-check-prepare: wheels the GPU machine lacks and the demo's tokenizer into .gpu/ (git-ignored)
# The GPU machine has no .venv (it does not travel): its python3 holds torch. No install step:
# nothing can be fetched there.
GPU_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_CHECK_OUT ?= $(or $(OUT),/tmp/gpu-check/out)
GPU_CHECK_ARGS ?=

gpu-check:
	PYTHONUNBUFFERED=1 $(GPU_PYTHON) -m benchmarks.gpu_check --out "$(GPU_CHECK_OUT)" $(GPU_CHECK_ARGS)

gpu-check-prepare: install-test
	$(BIN)/python -m benchmarks.gpu_check --prepare

## image: build the CPU image (IMAGE=sidecar:cpu); works with no container registry and offline pip
## image-cuda: build the CUDA image (IMAGE=sidecar:cuda); run it with the NVIDIA container runtime
# BASE_IMAGE empty: DEFAULT_BASE_IMAGE when present or pullable, else a local debootstrap base.
# WHEELHOUSE=1: wheels downloaded here (this host's pip settings), installed offline in the build;
# WHEELHOUSE=0: pip in the build uses this host's index settings and CA bundle. See docker/.
BASE_IMAGE ?=
DEFAULT_BASE_IMAGE ?= python:3.11-slim-bookworm
LOCAL_BASE_IMAGE ?= sidecar-base:bookworm
WHEELHOUSE ?= 1
WITH_DEMO ?= 1
# torch for each image: the CPU wheel, and the CUDA one (`===`: a local `+cpu` wheel never matches).
IMAGE_TORCH_SPEC ?= torch==2.13.0+cpu
IMAGE_CUDA_TORCH_SPEC ?= torch===2.13.0
DOCKER_BUILD_ARGS ?=
IMAGE_ENV = PYTHON=$(BIN)/python BASE_IMAGE="$(BASE_IMAGE)" DEFAULT_BASE_IMAGE="$(DEFAULT_BASE_IMAGE)" \
	LOCAL_BASE_IMAGE="$(LOCAL_BASE_IMAGE)" WHEELHOUSE="$(WHEELHOUSE)" \
	DOCKER_BUILD_ARGS="$(DOCKER_BUILD_ARGS)"

image: | $(BIN)/python
	$(IMAGE_ENV) TORCH_SPEC="$(IMAGE_TORCH_SPEC)" WITH_DEMO="$(WITH_DEMO)" \
		docker/build-image.sh cpu "$(or $(IMAGE),sidecar:cpu)"

image-cuda: | $(BIN)/python
	$(IMAGE_ENV) TORCH_SPEC="$(IMAGE_CUDA_TORCH_SPEC)" WITH_DEMO=0 \
		docker/build-image.sh cuda "$(or $(IMAGE),sidecar:cuda)"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
