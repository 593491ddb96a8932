# Two commands on a fresh machine:  `make demo` (main job on bundled defaults) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test test-lower-bounds clean

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

# The tests again with every dependency at its declared lower bound (a fresh .venv-lowest).
test-lower-bounds:
	bash scripts/check_lower_bounds.sh

clean:
	rm -rf $(VENV) .venv-lowest *.egg-info
