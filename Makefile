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

# The demo: generate a bilingual corpus and its tokenizer, tokenize it (three formats, all
# cores) into Megatron shards, then validate and summarise them.
BIN := target/release
DEMO := demo-out

demo: build
	rm -rf $(DEMO)
	$(BIN)/os-demo-data --output $(DEMO)
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --output $(DEMO)/shards/demo '$(DEMO)/corpus/*'
	$(BIN)/os-shards check $(DEMO)/shards/demo
	$(BIN)/os-shards info $(DEMO)/shards/demo
	@echo "demo: outputs in $(DEMO)/ (manifest: $(DEMO)/shards/demo.json)"

clean:
	$(CARGO) clean
	rm -rf demo-out
