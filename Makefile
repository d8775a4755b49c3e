# Set-up and entry points. Every target creates (or reuses) the virtual environment first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

# The main job on bundled sample data.
demo: $(STAMP)
	$(PY) demo.py

# The whole test suite (CPU only).
test: $(STAMP)
	$(PY) -m pytest -q tests

# The fast unit layer (no subprocess runs of the scripts, no training, no notebook).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Benchmarks: installs the peer (torch/torchvision) into a separate environment on first use.
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/.installed: requirements.txt requirements-bench.txt
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-bench.txt
	touch $@

bench: $(BENCH_VENV)/.installed
	for b in bench/bench_*.py; do $(BENCH_VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf $(VENV) $(BENCH_VENV) demo_output sample_data
