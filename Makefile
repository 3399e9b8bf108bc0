# Two commands for a new user: `make repro` (the whole pipeline) and `make test`.
# Each installs what it needs first: a virtual environment from the pinned dependency set
# (requirements.lock), the project's Jupyter kernel, and espeak-ng where it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)
export PYTHONHASHSEED := 0
STAMP := $(VENV)/.installed

.PHONY: setup espeak repro test bench repro-timed sweep lab clean plan bench-profiles gpu-check

setup: $(STAMP) espeak

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c requirements.lock -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mmser)"
	touch $(STAMP)

espeak:
	@command -v espeak-ng >/dev/null && exit 0; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "espeak-ng is missing: installing it with apt-get"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng; \
	else \
	  echo "espeak-ng is missing and cannot be installed here (needs root and apt)."; \
	  echo "Install it with:  sudo apt-get install espeak-ng"; \
	  echo "or use the conda environment:  conda env create -f environment.yml"; \
	  exit 1; \
	fi

repro: setup  ## set-up, then the whole pipeline on the embedded default
	dvc repro

test: setup  ## set-up, then the whole test suite
	pytest

bench: setup  ## speed figures of this machine (and of the last pipeline run)
	python -m mmser.bench

PROFILE ?= profiles/paper/clap.yaml
plan: setup  ## disk, RAM, GPU memory and hours of a paper profile; the machine limits it exceeds
	python -m mmser.plan $(PROFILE) $(if $(DISK),--disk $(DISK)) $(if $(RAM),--ram $(RAM)) $(if $(GPU_MEM),--gpu-mem $(GPU_MEM))

bench-profiles: setup  ## the plan beside measured tiny runs of every profile's data path (1x, 4x)
	nice -n 19 python -m mmser.plan --measure

gpu-check: setup  ## every paper profile for a few hundred bf16 steps (DRY=1: CPU, tiny models)
	python -m mmser.plan --gpu-check $(if $(DRY),--dry)

repro-timed: setup  ## dvc repro stage by stage under /usr/bin/time, then the figures
	python -m mmser.bench --run $(if $(FORCE),--force)

SEEDS ?= 1 2 3
sweep: setup  ## one queued dvc experiment per training seed, one at a time, then mean ± std over seeds
	for seed in $(SEEDS); do dvc exp run --queue -S "training.seeds=[$$seed]" -S "training.claim_seeds=[$$seed]"; done
	dvc queue start -j 1
	while dvc queue status | grep -qE 'Queued|Running'; do sleep 30; done
	dvc queue status
	dvc exp show
	python -m mmser.sweep

lab: setup  ## JupyterLab on notebooks/ with the project's kernel (python3, from .venv)
	jupyter lab notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf interim reports results models
