# `make demo` and `make test` each set up what they need, idempotently:
# a .venv with the pinned CPU torch (override: make test TORCH="torch==2.13.0 --index-url ..."),
# the package with its test extra, and Graphviz's `dot`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdviz-installed

.PHONY: demo test test-all lint flowcharts figures graphviz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $(STAMP)

graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing Graphviz (dot)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq graphviz >/dev/null; \
	} || echo "could not install Graphviz; flowchart PNG/SVG rendering will be skipped"

demo: $(STAMP) graphviz
	$(BIN)/python -m sdviz demo

test: $(STAMP) graphviz
	$(BIN)/python -m ruff check sdviz tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

# the checks too slow for `make test` (marked `slow`); CI runs both
test-all: $(STAMP) graphviz
	$(BIN)/python -m pytest -q -m slow

flowcharts: $(STAMP) graphviz
	$(BIN)/python -m sdviz flowchart --out flowcharts

lint: $(STAMP)
	$(BIN)/python -m ruff check sdviz tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
