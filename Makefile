# dlt-companion: one entry point for setting up, running and testing the book.
#
#   make book    set up .venv (first run only) and execute every chapter into build/
#   make test    set up .venv (first run only), run the unit tests and nbval over chapters/
#   make lab     open JupyterLab on the chapters
#   make bench   run the benchmark suite (benchmarks/RESULTS.md)
#   make notebooks  re-execute chapters/*.md into chapters/*.ipynb (the nbval reference outputs)
#
# Only Python 3 (>= 3.10) and the package registry are needed. PYTHON picks the interpreter.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
NBVAL  := -m pytest --nbval --nbval-current-env --nbval-cell-timeout=900 -p no:cacheprovider chapters

.PHONY: setup book test unit nbval lab bench notebooks sync clean

setup: $(STAMP)

# Re-install only when the dependency list changes. torch is pinned to a range that a
# CPU wheel satisfies (see README, "GPU"), so a CPU machine never downloads CUDA builds.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[notebooks,test]'
	$(PY) -m ipykernel install --sys-prefix --name dlt-companion --display-name "Python (dlt-companion)" > /dev/null
	touch $(STAMP)

book: setup
	$(PY) -m dlt_companion.book

unit: setup
	$(PY) -m pytest -p no:cacheprovider tests

# nbval compares every stored output; run it with 2 and with 1 torch threads.
nbval: setup
	DLT_TORCH_THREADS=2 $(PY) $(NBVAL)
	DLT_TORCH_THREADS=1 $(PY) $(NBVAL)

test: unit nbval

lab: setup
	$(VENV)/bin/jupyter lab chapters

bench: setup
	$(PY) benchmarks/run.py

notebooks: setup
	$(PY) -m dlt_companion.book --inplace

sync: setup
	$(VENV)/bin/jupytext --sync chapters/*.md

clean:
	rm -rf build .pytest_cache
