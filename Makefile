# Two commands on a fresh machine:  make book   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
STAMP := $(VENV)/.sepdtd-installed

.PHONY: all setup data book test bench clean

all: book

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: setup
	$(PY) -m sepdtd data prepare

# The book target is completed with the notebooks (issue 5).
book: data
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/bench_dtd.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf _build
