# Two commands on a fresh machine: `make serve` (run on the bundled demo model) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build for local and CI installs; the CUDA image installs its own torch.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: serve test lint typecheck install-serve install-test bench clean

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
serve: install-serve
	$(BIN)/sidecar serve

## test: install, lint, type-check and run every test
test: install-test lint typecheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check sidecar batching loaders tests benchmarks
	$(BIN)/ruff format --check sidecar batching loaders tests benchmarks

typecheck: install-test
	$(BIN)/mypy --strict sidecar batching loaders

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
