# kdforge: `make quickstart` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
# The torch pin travels in the same pip call as everything that depends on torch, so pip never
# swaps in another build. On a GPU machine: make setup TORCH_SPEC="torch==2.13.0 --index-url ..."
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.kdforge-installed

.PHONY: test-fast setup quickstart test mutation bench clean data

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC) -e ".[tensorboard,test]"
	touch $(STAMP)

quickstart: setup
	$(VENV)/bin/kdforge quickstart

# One pytest-xdist worker per core, one torch thread each (tests/conftest.py): faster than one process with
# all cores on these small models. `make test PYTEST_ARGS=...` passes options (e.g. -k, -x, -n 0).
PYTEST_ARGS ?=
test: setup
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal $(PYTEST_ARGS)

# The inner loop: everything but the tests marked slow (the modules that train real models, tests/conftest.py).
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -n auto --dist worksteal -m "not slow" $(PYTEST_ARGS)

# Each mutation of devtools/mutations.py applied to a copy of the tree; its tests must fail (docs/testing.md).
# Not part of `make test`: about 15 minutes on 2 cores.
mutation: setup
	$(PY) -m devtools.mutation

bench: setup
	$(PY) benchmarks/speed.py

# Fashion-MNIST from the Debian package dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist,
# where `fashion_mnist` looks when data.root is not set). Needs root and apt-get; otherwise prints the command.
FMNIST_DIR := /usr/share/datasets/fashion-mnist
data:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] && [ -f $(FMNIST_DIR)/t10k-labels-idx1-ubyte.gz ]; then \
	  echo "Fashion-MNIST is installed in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y dataset-fashion-mnist || { apt-get update && apt-get install -y dataset-fashion-mnist; }; \
	else \
	  echo "make data: needs root and apt-get; run as root: apt-get install -y dataset-fashion-mnist" >&2; exit 1; \
	fi

clean:
	rm -rf runs .pytest_cache
