# Entry points of the workflow. `make help` lists them.
#
#   make demo    bootstrap .venv, then run the embedded synthetic survey (CORES=2)
#   make test    bootstrap .venv, then run the test suite (PYTEST_ARGS="-k config -x")
#
# The first target that needs Python creates $(VENV) with python3 (>= 3.11, required by
# jwst 3.0), installs envs/requirements.txt constrained by envs/requirements.lock, and
# writes $(VENV)/.installed; it reruns only when one of the two requirement files changes.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
CORES ?= 2
# pytest-xdist workers of `make test`; each test file runs on one worker (its module fixtures once)
TEST_WORKERS ?= 2
PYTEST_ARGS ?=
SNAKEMAKE_ARGS ?=
# Interpreter that creates the venv. Resolved now, before PATH below puts $(VENV)/bin first,
# so that a rebuild never runs `python3 -m venv` with the venv's own interpreter.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell command -v python3)
endif

# Snakemake's shell rules call `python`: make it the venv's, also when the venv is not activated.
export PATH := $(abspath $(VENV))/bin:$(PATH)
# jwst steps must not ask CRDS for parameter reference files (no network on compute nodes).
export STPIPE_DISABLE_CRDS_STEPPARS := true

REQUIREMENTS := envs/requirements.txt envs/requirements.lock
STAMP := $(VENV)/.installed
SLURM_PROFILE_LINK := $(HOME)/.config/snakemake/slurm

.PHONY: help venv demo test dryrun lint install-profile clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z-]+):.*## /  make \1\t/' | expand -t 24

venv: $(STAMP)  ## create or update the venv (VENV=.venv) from the pinned requirements

$(STAMP): $(REQUIREMENTS)
	@test -n "$(PYTHON)" || { echo "error: python3 not found; install Python >= 3.11 or pass PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: $(PYTHON) is $$($(PYTHON) -V 2>&1); jwst 3.0 needs Python >= 3.11." >&2; \
	  echo "       Install one and run e.g. 'make PYTHON=python3.11 $(MAKECMDGOALS)'." >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -r envs/requirements.txt -c envs/requirements.lock
	touch $@

demo: $(STAMP)  ## run the embedded synthetic survey end to end on CORES cores
	$(VENV)/bin/snakemake --cores $(CORES) $(SNAKEMAKE_ARGS)

test: $(STAMP)  ## run the test suite (extra pytest options in PYTEST_ARGS)
	$(VENV)/bin/python -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

dryrun: $(STAMP)  ## show the jobs a run would execute
	$(VENV)/bin/snakemake -n $(SNAKEMAKE_ARGS)

lint: $(STAMP)  ## snakemake --lint and ruff
	$(VENV)/bin/snakemake --lint
	$(VENV)/bin/ruff check scripts tests

# `snakemake --profile slurm` looks in ./slurm and ~/.config/snakemake/slurm, not in profiles/.
install-profile:  ## link profiles/slurm to ~/.config/snakemake/slurm
	@if [ -e "$(SLURM_PROFILE_LINK)" ] && [ ! -L "$(SLURM_PROFILE_LINK)" ]; then \
	  echo "error: $(SLURM_PROFILE_LINK) exists and is not a link; move it away first" >&2; exit 1; fi
	mkdir -p $(dir $(SLURM_PROFILE_LINK))
	ln -sfn $(abspath profiles/slurm) $(SLURM_PROFILE_LINK)
	@echo "Linked $(SLURM_PROFILE_LINK) -> $(abspath profiles/slurm)."
	@echo "Set the site variables (see profiles/slurm/site.env.example), then run:"
	@echo "  snakemake --profile slurm"

clean:  ## remove products, logs, benchmarks and Snakemake metadata (never inputs or config)
	rm -rf results logs benchmarks .snakemake
