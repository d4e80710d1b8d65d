# labkit: every target runs `setup` first when needed; `make help` lists them.
SHELL := /bin/bash
PY := $(if $(and $(CONDA_PREFIX),$(filter-out 1,$(LABKIT_USE_VENV))),$(CONDA_PREFIX)/bin/python,.venv/bin/python)
OUT ?= verification/runs
LOGS ?= verification/runs
PYTEST_ARGS ?=

.PHONY: help setup lab run lint test test-fast grade bench lock clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

setup: ## install the CPU profile (.venv, or the active conda env); idempotent
	@bash scripts/setup.sh

lab: setup ## JupyterLab on this folder, opening in notebooks/ (127.0.0.1 only; open the URL it prints)
	$(PY) -m jupyter lab --ip 127.0.0.1 --no-browser $(if $(filter 0,$(shell id -u)),--allow-root,) \
		--ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks --KernelManager.transport=ipc

run: setup ## run the whole lab headless with papermill into verification/runs/<timestamp>/
	$(PY) -m labkit run --out $(OUT)

lint: setup ## ruff (labkit, tests, scripts, benchmarks) and mypy (labkit); part of make test
	$(PY) -m ruff check labkit tests scripts benchmarks
	$(PY) -m mypy

test: setup lint ## lint, then every test: unit, the real Ray + Serve + vLLM stack, notebooks, browser
	@bash scripts/setup_browser.sh
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup ## only the fast unit tests (no cluster, no engine, no browser)
	$(PY) -m pytest -m "not slow and not browser" $(PYTEST_ARGS)

grade: setup ## grade a folder of verification logs: make grade LOGS=path/to/logs
	$(PY) -m labkit grade $(LOGS)

bench: setup ## run the benchmarks (results under benchmarks/results/)
	$(PY) benchmarks/run_all.py

lock: ## regenerate requirements/cpu.txt from requirements/cpu.in
	bash scripts/lock.sh

clean: ## stop leftover Ray processes of the kit, remove caches and the venv
	-$(PY) -c "from labkit.cluster import kill_leftovers; kill_leftovers()" 2>/dev/null
	rm -rf .venv .pytest_cache .ruff_cache build *.egg-info
