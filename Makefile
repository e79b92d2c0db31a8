# nasrun developer commands. `make demo` and `make test` do all the set-up on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# Pins that work on a CPU-only machine (CI). GPU users: install your CUDA torch first, then `pip install -e .`.
# The trackers (logger group) are optional extras for users; the tests read back what each one writes.
PINS    := torch==2.13.0 torchvision==0.28.0 hydra-core==1.3.8 "omegaconf>=2.3,<2.4" rich scikit-learn scipy nas-bench-201==2.1 \
           hydra-submitit-launcher==1.2.0 hydra-joblib-launcher==1.2.0 matplotlib \
           tensorboard==2.21.0 mlflow-skinny==3.18.0 sqlalchemy==2.1.9 alembic==1.20.1 wandb==0.31.0
STAMP   := $(VENV)/.installed

.PHONY: help install test test-slow test-slurm test-all test-gpu demo lint bench clean

help:
	@echo "make install | test | test-slow | test-slurm | test-all | test-gpu | demo | lint | bench | clean"

$(STAMP): setup.cfg pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(PINS) pytest ruff
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when nothing was collected; say so instead of failing silently or passing silently.
test: $(STAMP)
	@$(BIN)/python -m pytest -q -m "not slow and not gpu and not slurm" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# A real single-node Slurm (installed with apt-get when missing, started and stopped by the test).
test-slurm: $(STAMP)
	NASRUN_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -m slurm $(PYTEST_ARGS)

# The exhaustive matrices (every preset, every method × space, every sweep launcher): CI runs them after `make test`.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow and not gpu and not slurm" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-gpu: $(STAMP)
	$(BIN)/python -m pytest -q -m gpu $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/nasrun search +experiment=demo

lint: $(STAMP)
	$(BIN)/ruff check src tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/bench_search.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
