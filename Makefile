# `make run`: a fresh machine to a finished default study. `make test`: the whole suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The package alone for `make run`; the test extras (pytest, hypothesis, ray) only for `make test`.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test,ray]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/funclens study --preset quick --out results/quick --offline

# Python test extras, then the Debian packages and data sets the suite reads (scripts/test-setup.sh), then the suite.
test: $(VENV)/.installed-test
	scripts/test-setup.sh $(BIN)/python
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf results .pytest_cache
