# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Large CPU buffers (XLA's outputs) from transparent huge pages: a fresh 50 MB output
# cost 6 ms instead of 21 ms of page faults on the 2-core development machine. Override with
# `make bench GLIBC_TUNABLES=` to measure without it.
GLIBC_TUNABLES ?= glibc.malloc.hugetlb=1
export GLIBC_TUNABLES

.PHONY: install test test-large demo bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -rs --durations=15 -n 2 tests

test-large: $(STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -rs --durations=15 -n 2 -m large tests

demo: $(STAMP)
	KERAS_BACKEND=jax $(VENV)/bin/siglip2 demo --out demo_out

lint: $(STAMP)
	$(VENV)/bin/ruff check keras_siglip2 tools tests guides/_smoke.py setup.py

bench: $(STAMP)
	KERAS_BACKEND=jax $(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) demo_out build *.egg-info
