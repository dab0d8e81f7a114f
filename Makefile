# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv from the pins
# in constraints.txt when it is missing or older than the pins.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_output
PYTEST_ARGS ?=

QUALITY_DIR ?= quality_run
QUALITY_ARGS ?=

.PHONY: demo test venv dicom-validator bench quality clean

venv: $(VENV)/.installed

$(VENV)/.installed: constraints.txt setup.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; ctdeblur needs Python 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

demo: venv
	$(BIN)/ctdeblur-make-dataset --preset demo --source phantom --source pydicom-samples \
		--output $(DEMO_DIR) --overwrite --direct_num_workers 2 --direct_running_mode multi_processing
	$(BIN)/ctdeblur-shard-stats $(DEMO_DIR) --json $(DEMO_DIR)/shard_stats.json --html $(DEMO_DIR)/shard_stats.html
	$(BIN)/ctdeblur-train --data $(DEMO_DIR) --logdir $(DEMO_DIR)/train_logs --preset tiny \
		--perceptual_weights none --export $(DEMO_DIR)/generator
	$(BIN)/ctdeblur-deblur $(DEMO_DIR)/phantom_dicom/PHANTOM-000 $(DEMO_DIR)/deblurred_dicom \
		--model $(DEMO_DIR)/generator --overwrite --no-progress
	$(BIN)/ctdeblur-evaluate --model $(DEMO_DIR)/generator --data $(DEMO_DIR)/test --preset quick \
		--json $(DEMO_DIR)/evaluation.json --report $(DEMO_DIR)/evaluation

# dciodvfy (dicom3tools, Debian) judges ctdeblur-deblur's DICOM output in the tests, which skip
# without it. Installed here only where that needs no password (root with apt-get); never an error.
dicom-validator:
	@command -v dciodvfy >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		{ DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null 2>&1 || \
		{ apt-get update -qq >/dev/null 2>&1 && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dicom3tools >/dev/null 2>&1; }; }; } || \
		echo "note: dciodvfy (apt-get install dicom3tools) is not installed; the DICOM conformance tests are skipped"

test: venv dicom-validator
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(BIN)/python bench/pipeline_throughput.py
	$(BIN)/python bench/shard_stats_throughput.py
	$(BIN)/python bench/projection_throughput.py --slices 16 --rounds 4
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/input_throughput.py
	$(BIN)/python bench/evaluate_throughput.py --no-model
	$(BIN)/python bench/inference.py

# The quality run of issue 16 (<= 60 min on 2 cores): dataset, `ours` at the small preset, evaluation.
# QUALITY_ARGS="--compare pix2pix --results RESULTS.md" also trains the baselines and rewrites RESULTS.md.
quality: venv
	$(BIN)/python bench/quality_run.py --workdir $(QUALITY_DIR) $(QUALITY_ARGS)

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
