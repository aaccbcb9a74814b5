# Two commands set everything up: `make demo` (train + evaluate on the embedded synthetic
# dataset) and `make test` (the test suite). Both create .venv if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.focaldet-installed

.PHONY: demo test lint install clean paper curve

# `make paper`: Table 1a and 1b in the paper's imbalance regime (configs/experiment/paper_*.yaml,
# data=synthetic_paper), then the report. SEEDS=2 runs seeds 0 and 1 (SEED_LIST=1 runs seed 1
# alone, e.g. after a one-seed run); ARGS is appended to both sweeps; PAPER_OUT is the folder.
SEEDS ?= 1
SEED_LIST ?= $(shell seq 0 $$(($(SEEDS) - 1)))
PAPER_OUT ?= multirun/paper
# `make curve`: the imbalance curve (configs/experiment/imbalance_curve.yaml: 6 dial settings × 3
# losses per seed), then the report with its plot; SEEDS, SEED_LIST and ARGS as for `make paper`.
CURVE_OUT ?= multirun/imbalance_curve

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "focaldet needs Python 3.10 or newer")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/train.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q tests $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/hadolint Dockerfile

paper: $(STAMP)
	set -e; for seed in $(SEED_LIST); do for table in table1a table1b; do \
		$(PY) tools/train.py -m +experiment=paper_$$table train.seed=$$seed train.progress=false \
			hydra.sweep.dir=$(PAPER_OUT)/$$table/seed$$seed $(ARGS); \
	done; done
	$(PY) tools/report.py runs=$(PAPER_OUT) out=$(PAPER_OUT)/report
	@echo "paper regime: tables in $(PAPER_OUT)/report/report.md, plots in $(PAPER_OUT)/report/*.png, runs in $(PAPER_OUT)/table1{a,b}/seed*/"

curve: $(STAMP)
	set -e; for seed in $(SEED_LIST); do \
		$(PY) tools/train.py -m +experiment=imbalance_curve train.seed=$$seed train.progress=false \
			hydra.sweep.dir=$(CURVE_OUT)/seed$$seed $(ARGS); \
	done
	$(PY) tools/report.py runs=$(CURVE_OUT) out=$(CURVE_OUT)/report
	@echo "imbalance curve: table in $(CURVE_OUT)/report/report.md, plot in $(CURVE_OUT)/report/imbalance_curve.png"

clean:
	rm -rf $(VENV) outputs multirun
