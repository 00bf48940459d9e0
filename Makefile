# Quickstart:  make demo   (set up, then run the demo pipeline)
#              make test   (set up, then run the tests)
VENV   ?= .venv
PYTHON ?= python3
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
export PATH := $(BIN):$(PATH)

.PHONY: setup demo test test-slow test-all bench lock

# constraints.txt pins every package for Python 3.11: another version is refused before the venv is made
CHECK_PYTHON = @$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else \
    f"stylepipe needs Python 3.11 (constraints.txt pins its packages for it), but $(PYTHON) is {sys.version.split()[0]}: " \
    "install Python 3.11 and run make with PYTHON=python3.11")'

# constraints.txt holds every package at its exact version: the environment reproduces too
$(STAMP): pyproject.toml constraints.txt
	$(CHECK_PYTHON)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

setup: $(STAMP)

# The demo pipeline: scikit-image photographs, two generated styles, a random
# loss network (no download). Drop config/offline.yaml to use ImageNet VGG16.
DEMO_CONFIG ?= config/demo.yaml config/offline.yaml
demo: setup
	snakemake --cores all --configfile $(DEMO_CONFIG)

# Default test run (README.md, "Tests and benchmarks", has its time). The slow tests (a pipeline on a
# Slurm cluster, DDP and multi-node trainings, signal and memory edge cases, the larger benchmarks)
# are left out of it: `make test-slow` runs only those, `make test-all` everything. Slurm tests run
# when a cluster is up (scripts/slurm-cluster.sh up) and skip with the reason otherwise.
test: setup
	pytest -m "not slow" --durations=15

test-slow: setup
	pytest -m slow --durations=15

test-all: setup
	pytest

bench: setup
	for b in benchmarks/*.py; do python $$b || exit 1; done

# Rewrite constraints.txt from a fresh install of pyproject.toml's pins (after changing one):
# a throwaway venv, so nothing installed by hand in .venv ends up in the file. Run it on Linux
# x86-64, where torch needs the most packages (its CUDA libraries); elsewhere pip skips those.
lock:
	$(CHECK_PYTHON)
	rm -rf $(VENV)-lock
	$(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --upgrade pip
	$(VENV)-lock/bin/python -m pip install --quiet -e '.[test]'
	{ grep '^#' constraints.txt; $(VENV)-lock/bin/python -m pip freeze --all --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(VENV)-lock
