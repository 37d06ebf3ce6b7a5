# Two entry points (see README.md): `make run` trains on the default data (Bach chorales);
# `make test` runs the suite. `make run-text` trains the character model on Python's stdlib.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run run-text test lint bench clean

setup: $(STAMP)

# torch first and pinned: its CPU wheel is on disk here, while an open range with no torch
# installed would pull a multi-GB CUDA build. Then the project, editable, with its extras.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# The main job: a GPT on the Bach chorales (music21's corpus, parsed once and cached), bounded
# to a few minutes of training, then samples as MIDI/MusicXML, plots and a results table.
# Each is a new run: an earlier one in the same folder is moved aside, never written over (the
# examples refuse a new run into a folder that holds checkpoints; --resume continues one).
run: $(STAMP)
	@$(call keep_earlier,runs/bach)
	$(BIN)/python examples/bach.py --out-dir runs/bach --budget-minutes 4

run-text: $(STAMP)
	@$(call keep_earlier,runs/text)
	$(BIN)/python examples/train_text.py --out-dir runs/text

keep_earlier = if [ -e $(1) ]; then base=$(1)-$$(date +%Y%m%d-%H%M%S); kept=$$base; n=1; \
	while [ -e "$$kept" ]; do kept=$$base-$$n; n=$$((n + 1)); done; \
	mv -- $(1) "$$kept" && echo "moved the earlier run $(1) to $$kept"; fi

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_generate.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache .mypy_cache
