# refdet-edge: `make demo` and `make test` set everything up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export YOLO_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: demo test test-fast bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/refdet info

lint: $(STAMP)
	$(VENV)/bin/ruff check refdet_edge tests benchmarks
	$(VENV)/bin/ruff format --check refdet_edge tests benchmarks

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) -m pytest benchmarks -q --benchmark-only

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks
