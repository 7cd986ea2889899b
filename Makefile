# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

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
