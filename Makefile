# Two commands set everything up on a fresh machine:
#   make demo   the pipeline end to end on a small embedded corpus, on CPU
#   make test   every test (installs the project venv with the Python peers first)

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
CARGO ?= cargo
export OPENSEEK_PYTHON := $(CURDIR)/$(VENV_PY)
export OPENSEEK_BIN_DIR := $(CURDIR)/target/release

.PHONY: all build venv test demo clean

all: build

build:
	$(CARGO) build --release --workspace --bins

# The venv is rebuilt when the pinned requirements change.
$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

test: venv build
	$(CARGO) test --release --workspace

clean:
	$(CARGO) clean
	rm -rf demo-out
