# The two commands a new user types (README): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
ENV_PY := $(VENV)/bin/python

.PHONY: install install-test demo test test-fast env clean device-pack

## install: create .venv with torch, torchvision, detectron2 and this project (idempotent)
install:
	$(PYTHON) tools/install/setup_env.py --venv $(VENV)

## install-test: install, plus the test dependencies (pytest, lightly)
install-test:
	$(PYTHON) tools/install/setup_env.py --venv $(VENV) --with-tests

## demo: set up, then the main job on the embedded default: pretrain -> convert -> fine-tune
##       -> evaluate -> report (output/demo/report.html), about 15 minutes on 2 CPU cores
demo: install
	$(ENV_PY) tools/pipeline.py configs/pipeline/demo.yaml

## test: set up (with test dependencies) and run the whole test suite
test: install-test
	$(ENV_PY) -m pytest tests

## test-fast: the unit tests only (no training run, no cluster): the inner loop, about 2 minutes
test-fast: install-test
	$(ENV_PY) -m pytest tests -m "not slow and not slurm"

## device-pack: fill .device/ (ignored) for a lent GPU machine: wheels, detectron2's sdist, data
##              (tools/device/pack.py; the call: docs/performance.md#gpu-runs)
device-pack: install-test
	$(ENV_PY) tools/device/pack.py

## env: print the environment report
env:
	$(ENV_PY) tools/collect_env.py

## clean: remove the environment (outputs are left alone)
clean:
	rm -rf $(VENV)
