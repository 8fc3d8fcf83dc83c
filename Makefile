# vae-runner: `make help` lists the targets. Each one creates .venv and installs the project when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=

.PHONY: help install run test test-fresh test-slow bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## create .venv and pip install -e .[dev]
	@true

run: $(STAMP) ## train the default VAE on MNIST (extra Hydra overrides: make run ARGS="model=cvae")
	$(VENV)/bin/vae-run $(ARGS)

test: $(STAMP) ## run the test suite (about 14 minutes on 2 CPU cores)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fresh: $(STAMP) ## the suite as on a fresh clone: ../shared/data hidden, small data built by the fixtures
	VAE_RUNNER_HIDE_SHARED=1 $(PY) -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP) ## run only the long end-to-end tests
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP) ## whole-process CPU time of vae-run against the conventional PyTorch-example recipe, 1 and 10 epochs
	$(PY) benchmarks/throughput.py

clean: ## remove the virtual environment and build leftovers (keeps outputs/)
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
