# `make demo` and `make test` each set up what they need, idempotently:
# a .venv with the pinned CPU torch (override: make test TORCH="torch==2.13.0 --index-url ..."),
# the package with its test and lab extras, Graphviz's `dot` and (for the browser test) Debian's chromium.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.sdviz-installed
DOCS_STAMP := $(VENV)/.sdviz-docs-installed

.PHONY: demo test test-all docs lint flowcharts figures notebooks graphviz chromium lab screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test,lab]"
	touch $(STAMP)

graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  echo "installing Graphviz (dot)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq graphviz >/dev/null; \
	} || echo "could not install Graphviz; flowchart PNG/SVG rendering will be skipped"

# Debian's chromium for tests/test_browser.py (driven by Playwright; never `playwright install`). If it cannot be
# installed, the browser test fails with one line saying so.
chromium:
	@test -x /usr/bin/chromium || { \
	  echo "installing Debian's chromium (for the browser test)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	} || echo "could not install chromium; tests/test_browser.py will fail and say why"

demo: $(STAMP) graphviz
	$(BIN)/python -m sdviz demo

test: $(STAMP) graphviz chromium
	$(BIN)/python -m ruff check sdviz tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow"

# the checks too slow for `make test` (marked `slow`); CI runs both. The site is built first (strictly), and the
# browser test (tests/test_site_browser.py) opens that build
test-all: $(STAMP) graphviz chromium docs
	SDVIZ_SITE=site $(BIN)/python -m pytest -q -m slow

$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -q -e ".[test,lab,docs]"
	touch $(DOCS_STAMP)

# the documentation site, into site/: docs/, the notebooks with their committed outputs (not executed here) and the
# API reference from the docstrings; strict: a broken link, a missing picture or a docstring warning fails it
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --site-dir site

flowcharts: $(STAMP) graphviz
	$(BIN)/python -m sdviz flowchart --out flowcharts

# redraw the README's figures (readme-images/) with sdviz's own code
figures: $(STAMP)
	$(BIN)/python -m sdviz figures --out readme-images

# run every notebook of the course in a real Jupyter kernel and save it with its outputs (GitHub and nbviewer show
# them); a notebook with an error, or a figure that shows as text, is reported and not saved
notebooks: $(STAMP)
	$(BIN)/python notebooks/execute.py

# JupyterLab on notebooks/, with sdviz, the widgets and a kernel from .venv
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# redraw readme-images/explorer.png with the browser test's script (JupyterLab + headless chromium)
screenshots: $(STAMP) chromium
	$(BIN)/python tests/browser/lab.py --out readme-images

lint: $(STAMP)
	$(BIN)/python -m ruff check sdviz tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache site .cache
