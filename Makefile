# glmv developer tasks. `make install` then `make test` is all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TINY := build/tiny-glm4v

.PHONY: install test test-slow test-gpu lint format tiny demo bench fuzz clean

install:  ## create .venv and install glmv (editable) with the dev tools, CPU torch pinned
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"

test:  ## the hermetic test suite (builds the tiny checkpoint once per session); slow corpus runs excluded
	$(BIN)/python -m pytest -q -m "not slow"

test-slow:  ## the slow end-to-end runs over ../shared/corpus (e.g. SIGKILL at 5 moments, then re-run)
	$(BIN)/python -m pytest -q -m slow

test-gpu:  ## tests that need a CUDA GPU (bitsandbytes 4-bit, torchvision processor)
	$(BIN)/python -m pytest -q -m gpu

lint:
	$(BIN)/ruff check glmv_cli tests schemas samples bench tools
	$(BIN)/ruff format --check glmv_cli tests schemas samples bench tools

format:
	$(BIN)/ruff format glmv_cli tests schemas samples bench tools
	$(BIN)/ruff check --fix glmv_cli tests schemas samples bench tools

tiny: $(TINY)/config.json  ## build the tiny random-weight GLM-4.6V-architecture checkpoint

$(TINY)/config.json: glmv_cli/engine/tiny.py
	$(BIN)/python -m glmv_cli.engine.tiny $(TINY)

demo: tiny  ## extract the samples with the tiny checkpoint (values are random: it shows the plumbing)
	GLMV_MODEL=$(TINY) $(BIN)/glmv extract samples/ --schema invoice --format csv --no-cache

bench: tiny  ## throughput benchmark against a plain transformers loop and outlines
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/run.py

fuzz:  ## 10,000 mutated corpus images and PDFs through the input layer; non-zero on any unexpected outcome
	$(BIN)/python tools/fuzz_inputs.py

clean:
	rm -rf build .pytest_cache .ruff_cache
