# Two commands set everything up on a fresh machine:
#   make demo   the pipeline end to end on a small embedded corpus, on CPU
#   make test   every test (installs the project venv with the Python peers first)

PYTHON ?= python3
VENV := .venv
VENV_PY := $(VENV)/bin/python
# torch-sys links the venv's PyTorch (2.11.0): LIBTORCH_USE_PYTORCH and the venv's python first on PATH.
export LIBTORCH_USE_PYTORCH := 1
CARGO ?= env PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cargo
export OPENSEEK_PYTHON := $(CURDIR)/$(VENV_PY)
export OPENSEEK_BIN_DIR := $(CURDIR)/target/release

.PHONY: all build venv test demo clean

all: build

build: venv
	$(CARGO) build --release --workspace --bins

# The venv is rebuilt when the pinned requirements change.
# requirements-nodeps.txt holds packages whose declared pins clash with ours (installed without deps).
$(VENV)/.installed: tests/requirements.txt tests/requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r tests/requirements.txt
	$(VENV)/bin/pip install --quiet --no-deps -r tests/requirements-nodeps.txt
	touch $@

venv: $(VENV)/.installed

test: venv build
	$(CARGO) test --release --workspace --no-fail-fast

# The demo: generate a bilingual corpus and its tokenizer; tokenize it (three formats, all
# cores) into Megatron shards; validate them; pack a piped token stream with best-fit-decreasing;
# blend two shards Megatron-style (dry run, then the index) and look at a sample.
# The demo tokenizer's special ids: pad <|endoftext|> = 0, bos = 1, eos = 2.
BIN := target/release
DEMO := demo-out

demo: build
	rm -rf $(DEMO)
	$(BIN)/os-demo-data --output $(DEMO)
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --output $(DEMO)/shards/all '$(DEMO)/corpus/*'
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --quiet --output $(DEMO)/shards/part-0 $(DEMO)/corpus/part-0.jsonl
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --quiet --output $(DEMO)/shards/part-1 $(DEMO)/corpus/part-1.jsonl.zst
	$(BIN)/os-shards check $(DEMO)/shards/all $(DEMO)/shards/part-0 $(DEMO)/shards/part-1
	$(BIN)/os-shards info $(DEMO)/shards/all $(DEMO)/shards/part-0 $(DEMO)/shards/part-1
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --quiet --output - $(DEMO)/corpus/part-2.json \
	  | $(BIN)/os-pack --input - --strategy bfd --seq-len 256 --pad-token 0 --eod-token 2 --output $(DEMO)/packed
	$(BIN)/os-mix --weights "0.7 $(DEMO)/shards/part-0 0.3 $(DEMO)/shards/part-1" --seq-len 256 --samples 2000 --dry-run
	$(BIN)/os-mix --weights "0.7 $(DEMO)/shards/part-0 0.3 $(DEMO)/shards/part-1" --seq-len 256 --samples 2000 --output $(DEMO)/mix
	$(BIN)/os-mix inspect $(DEMO)/mix --range 0:1 --decode $(DEMO)/tokenizer
	@echo "demo: outputs in $(DEMO)/ (shards + manifests in $(DEMO)/shards, packed samples in $(DEMO)/packed, the blend in $(DEMO)/mix)"

clean:
	$(CARGO) clean
	rm -rf demo-out
