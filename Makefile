# The two commands a newcomer runs: `make demo` and `make test`.
# Everything they need is installed by the targets below, on a fresh machine too.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CACHE  ?= $(HOME)/.cache/circuitgate
export CIRCUITGATE_CACHE := $(CACHE)

.PHONY: test demo setup system-packages control-plane lint typecheck pytest bench clean

test: setup control-plane lint typecheck pytest

demo: setup control-plane
	$(PY) -m circuitgate.lab.demo --out demo-out
	$(PY) hack/demo_cluster.py --out demo-out

setup: system-packages $(VENV)/.installed

system-packages:
	bash hack/install-system-packages.sh

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# One pip command, so the resolver reconciles celery's and kubernetes' pins together.
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

control-plane:
	bash hack/build-control-plane.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

pytest:
	$(PY) -m pytest

bench: setup
	$(PY) bench/amplification.py
	$(PY) bench/gate_overhead.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
