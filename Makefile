# The two commands a newcomer runs: `make demo` and `make test`.
# Everything they need is installed by the targets below, on a fresh machine too.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CACHE  ?= $(HOME)/.cache/circuitgate
export CIRCUITGATE_CACHE := $(CACHE)

.PHONY: test demo setup system-packages control-plane lint typecheck docs pytest nightly bench clean

test: setup control-plane lint typecheck docs pytest

# The worker half needs only the venv (its SQS is moto), so it runs first; the cluster half
# then builds the control plane (about 8 minutes the first time, a progress line per binary).
# Neither needs root or system packages.
demo: $(VENV)/.installed
	$(PY) -m circuitgate_devkit.lab.demo --out demo-out
	bash hack/build-control-plane.sh --control-plane
	$(PY) -m circuitgate_devkit.cluster.demo --out demo-out

setup: system-packages $(VENV)/.installed

system-packages:
	bash hack/install-system-packages.sh

# The two distributions (worker/, operator/) and the workspace's dev kit and tools, editable.
$(VENV)/.installed: pyproject.toml worker/pyproject.toml operator/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# One pip command, so the resolver reconciles celery's and kubernetes' pins together.
	$(PY) -m pip install -q -e './worker[sqs,redis]' -e ./operator -e .
	touch $@

control-plane:
	bash hack/build-control-plane.sh

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck:
	$(VENV)/bin/mypy

# docs/ as a site in site/; strict: any warning (a broken link or anchor) fails the build.
docs: $(VENV)/.installed
	$(VENV)/bin/mkdocs build --strict

# Two halves at once, the worker's and the cluster's: hack/pytest-halves.sh says why.
pytest:
	PY=$(PY) bash hack/pytest-halves.sh

# The property tests with many more examples (minutes, not seconds): for a nightly job.
nightly: setup
	HYPOTHESIS_PROFILE=nightly $(PY) -m pytest tests/worker/properties tests/operator/properties \
		tests/operator/unit/watch/test_fuzzed_replies.py

bench: setup
	$(PY) bench/amplification.py
	$(PY) bench/gate_overhead.py

clean:
	rm -rf $(VENV) demo-out site .pytest_cache .mypy_cache .ruff_cache
