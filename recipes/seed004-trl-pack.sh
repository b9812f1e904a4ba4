#!/usr/bin/env bash
# Seed 004's packing, reproduced: every dataset of its ratio mix (recipes/seed004-ratio-mix.json)
# packed as its scripts did, with TRL's pack_dataset strategy "bfd" at max_length 4096 (rows of
# 4096 tokens = os-pack --seq-len 4095, a sample being seq_len + 1 tokens), datasets' map batches of
# 1,000 rows over dataset_num_proc = 4 processes: os-pack --strategy trl-bfd gives TRL's rows, pieces
# (seq_lengths), order and position ids exactly (tests/tests/pack.rs checks it against trl from PyPI).
# TRL's bfd truncates documents longer than a row and drops the rest; STRATEGY=trl-bfd-split keeps
# them (TRL's bfd_split).
#
#   recipes/seed004-trl-pack.sh DATA_ROOT OUT_DIR [os-pack options]
#
# DATA_ROOT holds the recipe's prefixes (os-fetch --recipe recipes/seed004-ratio-mix.json fetches
# them); each lands in OUT_DIR/<prefix>/ as a packed sample store (os-mix inspect reads it).
# Not reproduced: the step after packing, where seed 004 samples the packed datasets by ratio to
# 7.5M rows and concatenates them (its code is not published); os-mix blends Megatron-style
# (recipes/seed004-ratio-mix.json).
set -euo pipefail
DATA_ROOT=${1:?usage: recipes/seed004-trl-pack.sh DATA_ROOT OUT_DIR [os-pack options]}
OUT=${2:?usage: recipes/seed004-trl-pack.sh DATA_ROOT OUT_DIR [os-pack options]}
shift 2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export PATH="${OPENSEEK_BIN_DIR:+$OPENSEEK_BIN_DIR:}$PATH"
# The recipe lists one "prefix": "..." per line.
prefixes=$(sed -n 's/^ *"prefix": "\(.*\)",\{0,1\}$/\1/p' "$HERE/seed004-ratio-mix.json")
[ -n "$prefixes" ] || { echo "seed004-trl-pack: no prefixes found in $HERE/seed004-ratio-mix.json" >&2; exit 78; }
for prefix in $prefixes; do
  os-pack --input "$DATA_ROOT/$prefix" --strategy "${STRATEGY:-trl-bfd}" --seq-len 4095 \
    --trl-batch-size 1000 --trl-num-proc 4 --pad-token 151643 --eod-token 151850 \
    --output "$OUT/$prefix" "$@"
done
