#!/usr/bin/env bash
# os-train over the GPUs of one machine at the OpenSeek-Small-v1 shape (bench/train/train.toml: random
# init from seed 1234, seq 4096, micro-batch 4, bf16-mixed: bf16 parameters, fp32 master weights and
# Adam moments; ZeRO-1 over the ranks):
# 1. parity: the same global batch (8 samples) on 1 GPU (2 micro-batches) and on N GPUs (N = 2, or the
#    largest of 8/4/2 present, micro-batches 8/N... at least 1 each), 50 steps from the same initial
#    weights: losses compared step by step (max relative difference) against the drift between two 1-GPU
#    runs (GPU training in bf16 is not bitwise reproducible); the N-GPU run starts as `srun` tasks would
#    (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS, SLURM_STEP_ID, SLURM_JOB_ID, SLURM_JOB_NODELIST), the
#    launch path of slurm/train.sbatch;
# 2. weak scaling with accumulation 8 (global batch 32 x GPUs) and with 1 micro-batch per step (4 x GPUs)
#    on 1, 2, 4, 8 GPUs (as present): tokens/s per GPU over the steps after the 3rd, efficiency against
#    1 GPU, peak memory per GPU, and the time the collectives add per step (step time on N GPUs minus 1);
# 3. overlap: the accumulation-8 run on the most GPUs again with overlap_grad_reduce and
#    overlap_param_gather off.
# With one GPU (a dry run of the whole script): every part runs at world size 1 with NCCL forced
# (debug.force_nccl: the ZeRO-1 path, its collectives over NCCL) and the parity part compares it with
# the one-GPU optimizer.
#   bench/dist/train.sh prepare      here: a 4096-token store of 800 samples and the stripped os-train
#                                    in bench/out/gpu/dist/ (carry that directory)
#   bench/dist/train.sh [OUT_DIR]    on the GPU machine (OUT_DIR defaults to $OUT, else bench/out/dist-train);
#                                    the summary goes to OUT_DIR/summary.txt. Exit status: failed parts.
# Env: NGPU (GPUs to use), TRAIN_FLAGS (more os-train flags, e.g. "--device cpu --model-config tiny.json
# --threads 1" for a run without GPUs), PARITY_STEPS (50), SCALING_STEPS (13). NCCL_NVLS_ENABLE=0 is set.
set -uo pipefail
cd "$(dirname "$0")/../.."
export NCCL_NVLS_ENABLE=0
g=bench/out/gpu/dist
if [ "${1:-}" = prepare ]; then
  set -e
  rm -rf "$g/demo" "$g/shards" "$g/mix" && mkdir -p "$g"
  target/release/os-demo-data --output "$g/demo" >/dev/null
  target/release/os-tokenize --tokenizer "$g/demo/tokenizer" --wrap-docs --quiet --output "$g/shards/part-0" "$g/demo/corpus/part-0.jsonl"
  rm -rf "$g/demo"
  target/release/os-mix --weights "1.0 $g/shards/part-0" --seq-len 4096 --samples 3500 --output "$g/mix" >/dev/null
  objcopy --strip-debug target/release/os-train "$g/os-train"
  exit 0
fi
out="${1:-${OUT:-bench/out/dist-train}}"
bin=$g/os-train
[ -x "$bin" ] || { echo "train.sh: no $bin (run bench/dist/train.sh prepare)" >&2; exit 66; }
mkdir -p "$out"
# The store names its shards by absolute path: a copy pointing at this checkout (outside OUT_DIR).
mix=$(mktemp -d)/mix
cp -r "$g/mix" "$mix"
sed -i "s|\"prefix\": \".*/bench/out/gpu/dist/shards/|\"prefix\": \"$PWD/$g/shards/|" "$mix/manifest.json"
ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
read -ra extra <<< "${TRAIN_FLAGS:-}"
parity_steps=${PARITY_STEPS:-50}
scaling_steps=${SCALING_STEPS:-13}
{ echo "host: $(hostname)  date: $(date -u +%F' '%T' UTC')  GPUs: $ngpu"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | sort | uniq -c
  python3 -c 'import torch; print("torch", torch.__version__, "nccl", ".".join(map(str, torch.cuda.nccl.version())))' 2>/dev/null || true
} | tee "$out/summary.txt"
[ "$ngpu" -ge 1 ] || { echo "train.sh: no GPU" | tee -a "$out/summary.txt"; exit 69; }
# World sizes to measure: 1 and every power of two up to the GPUs present.
worlds=(1); for w in 2 4 8; do [ "$ngpu" -ge "$w" ] && worlds+=("$w"); done
big=${worlds[-1]}
force=(); [ "$ngpu" -eq 1 ] && force=(--debug.force_nccl true)

# train NAME WORLD LAUNCH STEPS GLOBAL_BATCH [FLAGS...]: WORLD ranks of os-train; LAUNCH torchrun or slurm.
train() {
  local name=$1 world=$2 launch=$3 steps=$4 gbs=$5; shift 5
  local port=$((29500 + RANDOM % 2000)) pids=() rc=0 run="$out/$name"
  rm -rf "$run"
  for ((r = 0; r < world; r++)); do
    local vars=()
    if [ "$launch" = slurm ]; then
      vars=(SLURM_PROCID=$r SLURM_LOCALID=$r SLURM_NTASKS=$world SLURM_STEP_NUM_TASKS=$world SLURM_STEP_ID=0 SLURM_JOB_ID=$port
            SLURM_JOB_NODELIST=localhost SLURM_STEP_NODELIST=localhost MASTER_ADDR=127.0.0.1)
    elif [ "$world" -gt 1 ]; then
      vars=(RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port)
    fi
    env "${vars[@]}" timeout 420 "$bin" --config bench/train/train.toml --run-dir "$run" --data "$mix" \
      --train-iters "$steps" --global-batch-size "$gbs" "${extra[@]}" "$@" >/dev/null 2>"$run.$r.err" &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  [ $rc = 0 ] || { echo "$name failed:"; tail -5 "$run".*.err; }
  return $rc
}

failed=0
part() { echo "== $1: $2" | tee -a "$out/summary.txt"; [ "$2" = ok ] || failed=$((failed + 1)); }

# 1. Parity: 1 GPU twice (the drift), then the largest world (ZeRO-1 forced on one GPU) through Slurm variables.
pw=$big; [ "$pw" -gt 8 ] && pw=8
train gpu1 1 torchrun "$parity_steps" 8 && train gpu1-again 1 torchrun "$parity_steps" 8 \
  && train "parity$pw" "$pw" slurm "$parity_steps" 8 --micro-batch-size $((8 / pw < 4 ? 8 / pw : 4)) "${force[@]}" \
  && python3 - "$out/gpu1/log.jsonl" "$out/gpu1-again/log.jsonl" "$out/parity$pw/log.jsonl" "$pw" "$parity_steps" <<'PY' | tee -a "$out/summary.txt" && part parity ok || part parity FAILED
import json, sys
a, again, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:4])
world, steps = int(sys.argv[4]), int(sys.argv[5])
assert len(a) == len(again) == len(b) == steps, (len(a), len(again), len(b))
def rel(x, y):
    return [abs(p["loss"] - q["loss"]) / abs(p["loss"]) for p, q in zip(x, y)]
n, floor = rel(a, b), rel(a, again)
worst = max(range(steps), key=lambda i: n[i])
# bf16 training is not bitwise reproducible on a GPU (atomics in attention and GEMM backward passes): two
# 1-GPU runs drift apart too. N GPUs pass when they stay within 1.5x that run-to-run drift (or 1e-2).
bound = max(1e-2, 1.5 * max(floor))
print(f"parity, global batch 8, {steps} steps, {world} rank(s) launched as srun tasks: loss 1 GPU {a[0]['loss']:.4f} -> {a[-1]['loss']:.4f}, "
      f"{world} rank(s) {b[0]['loss']:.4f} -> {b[-1]['loss']:.4f}; max relative difference {n[worst]:.3g} (step {worst + 1}), first step {n[0]:.3g}; "
      f"two 1-GPU runs: max {max(floor):.3g}, first step {floor[0]:.3g}; bound {bound:.3g}")
sys.exit(0 if n[worst] <= bound and n[0] < 1e-4 else 1)
PY

# 2. Weak scaling, accumulation 8 and 1 micro-batch per step; 3. overlap off on the most GPUs.
for w in "${worlds[@]}"; do
  f=(); [ "$w" -eq 1 ] && f=("${force[@]}")
  train "acc8-gpu$w" "$w" torchrun "$scaling_steps" $((32 * w)) "${f[@]}" || failed=$((failed + 1))
  train "acc1-gpu$w" "$w" torchrun "$scaling_steps" $((4 * w)) "${f[@]}" || failed=$((failed + 1))
done
f=(); [ "$big" -eq 1 ] && f=("${force[@]}")
train "acc8-gpu$big-no-overlap" "$big" torchrun "$scaling_steps" $((32 * big)) --overlap-grad-reduce false --overlap-param-gather false "${f[@]}" \
  || failed=$((failed + 1))
python3 - "$out" "$big" "${worlds[@]}" <<'PY' | tee -a "$out/summary.txt"
import json, os, sys
out, big, worlds = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3:]]
def rate(name, world):
    path = os.path.join(out, name, "log.jsonl")
    if not os.path.exists(path):
        return None
    rows = [json.loads(l) for l in open(path)][3:]
    tps = sum(r["tokens"] for r in rows) / sum(r["step_time_s"] for r in rows) / world
    mean = lambda k: sum(r[k] for r in rows) / len(rows)
    memory = open(os.path.join(out, name + ".0.err")).read().split("per rank: ")[-1].split("\n")[0] if os.path.exists(os.path.join(out, name + ".0.err")) else ""
    return dict(run=name, gpus=world, steps=len(rows), tokens_per_s_per_gpu=round(tps), step_s=round(mean("step_time_s"), 4),
                fwd_bwd_s=round(mean("fwd_bwd_s"), 4), optimizer_s=round(mean("optimizer_s"), 4),
                peak_gib=round(max(r["peak_memory_gib"] or 0 for r in rows), 1), held=memory)
for acc in (8, 1):
    base = rate(f"acc{acc}-gpu1", 1)
    for w in worlds:
        r = rate(f"acc{acc}-gpu{w}", w)
        if r and base:
            r["weak_scaling_efficiency"] = round(r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"], 3)
            r["collectives_add_s_per_step"] = round(r["step_s"] - base["step_s"], 4)
        print(json.dumps(r))
print(json.dumps(rate(f"acc8-gpu{big}-no-overlap", big)))
PY
echo "failed parts: $failed" | tee -a "$out/summary.txt"
exit $failed
