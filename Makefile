# Two commands on a fresh machine:  make book   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= full
STAMP := $(VENV)/.sepdtd-installed

.PHONY: all setup data experiments notebooks book chromium test bench clean

all: book

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: setup
	$(PY) -m sepdtd data prepare

# The book (see book/reproducing.md). By default it shows the full profile: the committed networks and
# results, measured again only where the code changed, never trained. `make book PROFILE=quick` trains the
# quick profile's networks on a laptop instead.
# 1. the full profile: every kept network's measurements brought up to date (python -m sepdtd measure);
#    another profile: its experiments (results/<PROFILE>/, trained where missing);
# 2. every notebook run by papermill at PROFILE into notebooks/<name>.ipynb (converted by jupytext on the
#    fly; the executed copy is what the book shows, see sepdtd/book.py);
# 3. jupyter-book, which executes nothing (the executed copies are current), warnings as errors.
NOTEBOOKS := $(sort $(wildcard notebooks/*.py))
DEVICE ?= auto

experiments: data
ifeq ($(PROFILE),full)
	$(PY) -m sepdtd measure --profile full --device $(DEVICE)
else
	$(PY) -m sepdtd reproduce --profile $(PROFILE) --device $(DEVICE)
endif

notebooks: experiments
	@set -eo pipefail; for nb in $(NOTEBOOKS); do \
	  echo "papermill $$nb -> $${nb%.py}.ipynb (profile $(PROFILE))"; \
	  $(VENV)/bin/jupytext --to ipynb --output - "$$nb" \
	    | $(VENV)/bin/papermill - "$${nb%.py}.ipynb" -p profile $(PROFILE) -p device $(DEVICE) \
	      --cwd notebooks --no-progress-bar; \
	done

book: notebooks
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# Headless Chromium for the book's screenshot test (tests/test_book.py): any of chromium, chromium-browser
# or google-chrome; installed with apt when missing (as root, or with sudo that needs no password). Outside
# CI a machine without it only gets a note (the test then skips); under CI (CI=1, true or yes) it fails.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
IN_CI := $(filter 1 true yes,$(shell echo '$(CI)' | tr A-Z a-z))
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	  || command -v google-chrome >/dev/null 2>&1 \
	  || ($(SUDO) apt-get update -qq && { $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	       || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium-browser; }) \
	  || { [ -z "$(IN_CI)" ] && echo "note: chromium could not be installed; the book screenshot test will be skipped"; }

test: setup chromium
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# bench_train.py runs even when bench_dtd.py fails (it exits 1 when a CPU ratio target is missed);
# make bench then fails with bench_dtd.py's status.
bench: setup
	@rc=0; $(PY) benchmarks/bench_dtd.py || rc=$$?; $(PY) benchmarks/bench_train.py && exit $$rc

clean:
	rm -rf _build
