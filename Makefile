# Two commands on a fresh machine:  make book   and   make test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= full
STAMP := $(VENV)/.sepdtd-installed

.PHONY: all setup data experiments notebooks mathjax book chromium test bench clean

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
# Between Jupytext and papermill, `python -m sepdtd.book install-cell` adds the hidden cell that installs
# the package on Colab, when _config.yml names the repository (repository.url); otherwise it adds nothing.
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
	  $(VENV)/bin/jupytext --to ipynb --output - "$$nb" | $(PY) -m sepdtd.book install-cell \
	    | $(VENV)/bin/papermill - "$${nb%.py}.ipynb" -p profile $(PROFILE) -p device $(DEVICE) \
	      --cwd notebooks --no-progress-bar; \
	done

book: notebooks mathjax
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

# MathJax, served by the book itself so that formulas render offline (mathjax_path in _config.yml).
# The npm package is fetched with `npm pack` (or curl from the same registry when npm is missing),
# checked against its SHA-512 and unpacked into .cache/mathjax/static/mathjax/ (git-ignored); Sphinx
# copies it into _build/html/_static/. Without it `make book` fails here: no silent fallback to a CDN.
MATHJAX_VERSION := 3.2.2
MATHJAX_SHA512 := 06df9249553c7811b6ef30a155ec0e89c62ced7b1db78d2a9b8f94a47c97ee4d3f3bd36588f73ec7bee4d7f144b0fb2328f64626fb5164cd6f3be81e5b43a11b
MATHJAX_TGZ := .cache/mathjax/mathjax-$(MATHJAX_VERSION).tgz
MATHJAX_JS := .cache/mathjax/static/mathjax/tex-mml-chtml.js

mathjax: $(MATHJAX_JS)

$(MATHJAX_TGZ):
	@mkdir -p $(@D)
	@{ command -v npm >/dev/null 2>&1 && npm pack --silent --pack-destination $(@D) mathjax@$(MATHJAX_VERSION) >/dev/null; } \
	  || curl -fsSL -o $@ https://registry.npmjs.org/mathjax/-/mathjax-$(MATHJAX_VERSION).tgz \
	  || { rm -f $@; echo "error: could not fetch mathjax@$(MATHJAX_VERSION) from the npm registry (npm pack, curl)." \
	       "The book serves MathJax itself; put the package at $@ by hand and run make again." >&2; exit 1; }

$(MATHJAX_JS): $(MATHJAX_TGZ)
	@echo "$(MATHJAX_SHA512)  $<" | sha512sum --check --quiet - \
	  || { echo "error: $< is not mathjax@$(MATHJAX_VERSION) (SHA-512 differs); delete it and run make again" >&2; exit 1; }
	rm -rf .cache/mathjax/static && mkdir -p $(@D)
	tar -xzf $< -C $(@D) --strip-components=2 package/es5
	touch $@

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

test: setup chromium mathjax
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

# bench_train.py runs even when bench_dtd.py fails (it exits 1 when a CPU ratio target is missed);
# make bench then fails with bench_dtd.py's status.
bench: setup
	@rc=0; $(PY) benchmarks/bench_dtd.py || rc=$$?; $(PY) benchmarks/bench_train.py && exit $$rc

clean:
	rm -rf _build
