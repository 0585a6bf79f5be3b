# kdforge: `make quickstart` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
# The torch pin travels in the same pip call as everything that depends on torch, so pip never
# swaps in another build. On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdforge-installed

.PHONY: setup quickstart test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC) -e ".[tensorboard,test]"
	touch $(STAMP)

quickstart: setup
	$(VENV)/bin/kdforge quickstart

test: setup
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) benchmarks/speed.py

clean:
	rm -rf runs .pytest_cache
