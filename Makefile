# dlt-companion: one entry point for setting up, running and testing the book.
#
#   make book    set up .venv (first run only), execute every chapter into build/, build the site
#   make test    set up .venv (first run only), run the unit tests and nbval over chapters/
#   make lab     open JupyterLab on the repository, at chapters/ (chapters open as notebooks)
#   make site    build the static site build/site/ from the stored notebooks (no execution)
#   make notebooks   re-execute chapters/*.md into chapters/*.ipynb (the nbval reference outputs)
#   make browser-test   drive JupyterLab and the site in a real Chromium (see README)
#   make binder-lock    pin binder/environment.yml to this (tested) environment
#   make bench   run the benchmark suite (benchmarks/RESULTS.md)
#
# Only Python 3 (>= 3.10) and the package registry are needed. PYTHON picks the interpreter.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NBVAL  := -m pytest --nbval --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider chapters
# JupyterLab settings shipped with the environment: a click on a chapter's .md opens it as
# a notebook (binder/postBuild applies the same default on Binder)
LAB_OVERRIDES := $(VENV)/share/jupyter/lab/settings/overrides.json
# servers and containers often run as root, where Jupyter refuses to start without this
ALLOW_ROOT := $(if $(filter 0,$(shell id -u 2>/dev/null)),--allow-root)
# extra arguments for `make lab` (the browser test passes --no-browser, a port and a token)
LAB_ARGS ?=

.PHONY: setup book test unit nbval lab site bench notebooks sync browser-test binder-lock clean

setup: $(STAMP)

# Re-install only when the dependency list changes. torch is pinned to a range that a
# CPU wheel satisfies (see README, "GPU"), so a CPU machine never downloads CUDA builds.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[notebooks,test,site]'
	rm -rf $(VENV)/share/jupyter/kernels/dlt-companion
	$(VENV)/bin/jupytext-config --settings-file $(LAB_OVERRIDES) set-default-viewer markdown myst
	touch $(STAMP)

book: setup
	$(PY) -m dlt_companion.book

site: setup
	$(PY) -m dlt_companion.book --site

unit: setup
	$(PY) -m pytest -p no:cacheprovider tests

# nbval compares every stored output; run it with 2 and with 1 torch threads.
nbval: setup
	DLT_TORCH_THREADS=2 $(PY) $(NBVAL)
	DLT_TORCH_THREADS=1 $(PY) $(NBVAL)

test: unit nbval

# Rooted at the repository, so jupytext finds [tool.jupytext] in pyproject.toml.
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir="$(CURDIR)" --LabApp.default_url=/lab/tree/chapters \
		$(ALLOW_ROOT) $(LAB_ARGS)

# The browser: DLT_CHROMIUM (a Chromium executable; tests/fetch_chromium.sh unpacks Debian's
# headless one) or Playwright's own (`.venv/bin/playwright install chromium`).
browser-test: setup
	$(PY) -m pip install --quiet -e '.[browser]'
	DLT_REQUIRE_BROWSER=1 $(PY) -m pytest -p no:cacheprovider -m browser -v tests/test_browser.py

binder-lock: setup
	$(PY) binder/lock.py

bench: setup
	$(PY) benchmarks/run.py

notebooks: setup
	$(PY) -m dlt_companion.book --inplace

sync: setup
	$(PY) -m dlt_companion.book --sync

clean:
	rm -rf build .pytest_cache
