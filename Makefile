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

# The tests drive os-train's test faults (OPENSEEK_TRAIN_FAULT), compiled in only for them.
TEST_FEATURES := --features os-train/fault-injection

test: venv
	$(CARGO) build --release --workspace --bins $(TEST_FEATURES)
	$(CARGO) test --release --workspace --no-fail-fast $(TEST_FEATURES)

# The demo: generate a bilingual corpus and its tokenizer; remove its near-duplicates (MinHash) and
# filter it with a recipe (into demo-out/clean, for show: the later steps use the corpus as generated);
# tokenize it (three formats, all cores) into Megatron shards; validate them; pack a piped token stream with best-fit-decreasing;
# blend two shards Megatron-style (dry run, then the index) and look at a sample; train a tiny
# OpenSeek-architecture MoE on the blend and chart its loss; average its last two checkpoints; evaluate the soup on
# benchmark files made from the corpus' facts.
# The demo tokenizer's special ids: pad <|endoftext|> = 0, bos = 1, eos = 2.
BIN := target/release
DEMO := demo-out

demo: build
	rm -rf $(DEMO)
	$(BIN)/os-demo-data --output $(DEMO)
	$(BIN)/os-dedup minhash --output $(DEMO)/clean/dedup '$(DEMO)/corpus/*'
	$(BIN)/os-filter --recipe recipes/filter-demo.toml --output $(DEMO)/clean/filter $(DEMO)/clean/dedup
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --output $(DEMO)/shards/all '$(DEMO)/corpus/*'
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --quiet --output $(DEMO)/shards/part-0 $(DEMO)/corpus/part-0.jsonl
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --quiet --output $(DEMO)/shards/part-1 $(DEMO)/corpus/part-1.jsonl.zst
	$(BIN)/os-shards check $(DEMO)/shards/all $(DEMO)/shards/part-0 $(DEMO)/shards/part-1
	$(BIN)/os-shards info $(DEMO)/shards/all $(DEMO)/shards/part-0 $(DEMO)/shards/part-1
	$(BIN)/os-tokenize --tokenizer $(DEMO)/tokenizer --wrap-docs --quiet --output - $(DEMO)/corpus/part-2.json \
	  | $(BIN)/os-pack --input - --strategy bfd --seq-len 256 --pad-token 0 --eod-token 2 --output $(DEMO)/packed
	$(BIN)/os-mix --weights "0.7 $(DEMO)/shards/part-0 0.3 $(DEMO)/shards/part-1" --seq-len 256 --samples 6000 --dry-run
	$(BIN)/os-mix --weights "0.7 $(DEMO)/shards/part-0 0.3 $(DEMO)/shards/part-1" --seq-len 256 --samples 6000 --output $(DEMO)/mix
	$(BIN)/os-mix inspect $(DEMO)/mix --range 0:1 --decode $(DEMO)/tokenizer
	$(BIN)/os-train --config recipes/train-demo.toml --run-dir $(DEMO)/train --tokenizer $(DEMO)/tokenizer > /dev/null
	$(BIN)/os-plot $(DEMO)/train/log.jsonl --field loss --output $(DEMO)/train/loss.png
	$(BIN)/os-soup --latest 2 $(DEMO)/train --output $(DEMO)/soup
	$(BIN)/os-eval run --model $(DEMO)/soup --data $(DEMO)/eval-data \
	  --tasks openbookqa,commonsense_qa,arc:easy,cmmlu:agronomy,triviaqa,gsm8k --output $(DEMO)/eval
	@echo "demo: outputs in $(DEMO)/ (deduplicated and filtered text + manifests in $(DEMO)/clean, shards + manifests in $(DEMO)/shards, packed samples in $(DEMO)/packed, the blend in $(DEMO)/mix,"
	@echo "      the training run in $(DEMO)/train (its loss curve: $(DEMO)/train/loss.png), the soup of its last two checkpoints in $(DEMO)/soup, its evaluation in $(DEMO)/eval)"

clean:
	$(CARGO) clean
	rm -rf demo-out

# Experiments on a Slurm cluster: each target submits one seed experiment with slurm/chain
# (fetch the recipe's shards -> mix -> train -> soup -> eval) from a login node, after fetching the
# base model there. Runs land in runs/<name>/. Site options go in EXP_ARGS, os-eval sweep's in
# EVAL_ARGS, e.g.
#   make exp-baseline EXP_ARGS='--gpu-args "--partition=gpu --nodes=4" --cpu-args "--partition=cpu"' \
#       EVAL_ARGS='--tasks openseek --data eval-data'
# Add EXP_ARGS=--dry-run to print the sbatch commands instead. The blend always holds at least the
# samples training takes (Megatron sizes it from the training length the same way).
EXP_ARGS ?=
EVAL_ARGS ?=
CHAIN = slurm/chain --fetch --eval-args '$(EVAL_ARGS)' $(EXP_ARGS)

.PHONY: exp-baseline exp-curriculum exp-selection exp-ratio-mix slurm-cluster

models/OpenSeek-Small-v1/config.json: | build
	$(BIN)/os-fetch BAAI/OpenSeek-Small-v1 --local-dir models/OpenSeek-Small-v1

# The OpenSeek-Small-v1 baseline: its blend and schedule, 24,576,000 samples (100B tokens).
exp-baseline: models/OpenSeek-Small-v1/config.json
	$(CHAIN) --name baseline --recipe recipes/openseek-small-v1-baseline.toml --train-config recipes/train-baseline.toml

# Seed 001: three curriculum stages in one index (50B + 30B + 20B tokens), the baseline schedule.
exp-curriculum: models/OpenSeek-Small-v1/config.json
	$(CHAIN) --name curriculum --recipe recipes/seed001-curriculum.toml --train-config recipes/train-baseline.toml \
	  --train-args '--train-samples 24414062'

# Seed 003: 18 selected datasets (14.88B tokens), 3,620 steps of 1,024 samples at lr 1e-5.
exp-selection: models/OpenSeek-Small-v1/config.json
	$(CHAIN) --name selection --recipe recipes/seed003-selection.yaml --train-config recipes/train-seed003.toml \
	  --mix-args '--samples 3706880'

# Seed 004: the ratio mix, 7.5M samples, a checkpoint every 1,000 steps, the soup of the last 7.
exp-ratio-mix: models/OpenSeek-Small-v1/config.json
	$(CHAIN) --name ratio-mix --recipe recipes/seed004-ratio-mix.json --train-config recipes/train-seed004.toml \
	  --soup-latest 7

# A one-node Slurm on this machine (root; installs slurm-wlm and munge with apt-get when missing),
# as the tests use it: then `export SLURM_CONF=/tmp/openseek-slurm/slurm.conf` to submit to it.
slurm-cluster:
	tests/slurm/start-cluster.sh
