#!/usr/bin/env bash
# The run users make, beside the benchmark's friendliest configuration, in one call (after
# `bench/train/run.sh prepare` here; carry bench/out): os-train at the OpenSeek-Small-v1 shape, seq 4096,
# micro-batch 4, bf16-mixed, with
#   plain      one micro-batch per step, plain causal attention, no MTP (the speed benchmark);
#   acc8       8 micro-batches per step;
#   zero1      8 micro-batches per step through ZeRO-1 with NCCL forced on one GPU (the multi-GPU path);
#   recipe     OpenSeek's recipe: 8 micro-batches, attention within documents, one MTP depth
#              (mtp_loss_coeff 0.3), through ZeRO-1 with NCCL forced;
#   zero1-acc1 ZeRO-1 with one micro-batch per step.
#   bench/train/recipe.sh [OUT_DIR]   on the device machine (OUT_DIR defaults to $OUT, else bench/out/recipe)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/out/recipe}}"
mtp="--model-config $PWD/bench/train/openseek-small-v1-mtp.json --mtp-loss-coeff 0.3"
HF=0 OS_VARIANTS="--recompute none;\
--recompute none --global-batch-size 32;\
--recompute none --global-batch-size 32 --debug.force_nccl true;\
--recompute none --global-batch-size 32 --debug.force_nccl true --attention-per-document true $mtp;\
--recompute none --debug.force_nccl true" bash bench/train/run.sh "$out"
