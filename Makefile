# Quickstart:  make demo   (set up, then run the demo pipeline)
#              make test   (set up, then run the tests)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test test-all test-slurm bench clean-demo

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(STAMP)

# The demo pipeline: scikit-image photographs, two generated styles, a random
# loss network (no download). Drop config/offline.yaml to use ImageNet VGG16.
DEMO_CONFIG ?= config/demo.yaml config/offline.yaml
demo: setup
	snakemake --cores all --configfile $(DEMO_CONFIG)

# Default test run (about 10 minutes on 2 cores); slow and cluster tests are opt-in.
test: setup
	pytest -m "not slow and not slurm"

test-all: setup
	pytest

bench: setup
	for b in benchmarks/*.py; do python $$b || exit 1; done
