#!/usr/bin/env bash
# openseek-dist on the GPUs of one machine: os-dist-check as one process per GPU (2 GPUs used).
# With a single GPU the same parts run as one rank with NCCL forced (--force-nccl): the NCCL path
# (library, communicator, stream ordering, watchdog) is exercised, but nothing crosses GPUs, the
# toy compares NCCL against the local backend, and the hang is made by a busy default stream.
#   bench/dist/run.sh [OUT_DIR]   (OUT_DIR defaults to $OUT, else bench/out/dist)
# 1. known-answer collectives over NCCL on 2 GPUs;
# 2. the toy ZeRO-1 run on 1 GPU and on 2 GPUs: losses compared step by step (max relative difference);
# 3. bandwidth: all-reduce (avg) of 1.4e9 fp32 elements in 40 M-element buckets, and the ZeRO-1
#    reduce-scatter + all-gather of the same buffer;
# 4. rank 1 skips an all-reduce: rank 0 must get the watchdog's error (5 s timeout) naming rank, host, collective;
# 5. with 2 GPUs or more and bench/out/gpu/dist/os-train there (bench/dist/train.sh prepare): os-train's loss
#    parity 1 vs 2 GPUs, weak scaling and the overlap of gradient reduction (bench/dist/train.sh, OUT_DIR/train).
# Uses the stripped copy bench/out/gpu/os-dist-check when present (the one carried to the device machine),
# else target/release/os-dist-check. Exit status: the number of failed parts.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${1:-${OUT:-bench/out/dist}}"
bin=bench/out/gpu/os-dist-check
[ -x "$bin" ] || bin=target/release/os-dist-check
[ -x "$bin" ] || { echo "run.sh: no os-dist-check binary (cargo build --release -p os-dist-check)" >&2; exit 66; }
mkdir -p "$out"
{ echo "host: $(hostname)  date: $(date -u +%F' '%T' UTC')"; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  nvidia-smi topo -m 2>/dev/null | head -4 || true; } | tee "$out/machine.txt"
failed=0
ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$ngpu" -ge 2 ]; then world=2 force=(); else world=1 force=(--force-nccl); fi
echo "GPUs: $ngpu -> world size $world ${force[*]}" | tee -a "$out/machine.txt"

# launch NAME WORLD ARGS...: WORLD processes, torchrun-style variables, logs NAME.RANK.log, status of all.
launch() {
  local name=$1 world=$2; shift 2
  local port=$((29500 + RANDOM % 2000)) pids=() rc=0
  for ((r = 0; r < world; r++)); do
    RANK=$r WORLD_SIZE=$world LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 MASTER_PORT=$port NCCL_DEBUG=WARN \
      timeout 120 "$bin" "$@" >"$out/$name.$r.log" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  for ((r = 0; r < world; r++)); do sed "s/^/[$name.$r] /" "$out/$name.$r.log"; done
  return $rc
}

part() { echo "== $1: $2"; [ "$2" = ok ] || failed=$((failed + 1)); }

launch collectives $world "${force[@]}" collectives --elems 16777216 && part collectives ok || part collectives FAILED

launch toy1 1 toy --steps 50 && launch toy2 $world "${force[@]}" toy --steps 50 \
  && awk '/^step/ { if (FILENAME ~ /toy1/) a[$2] = $4; else b[$2] = $4 }
          END { m = 0; n = 0; for (s in a) { if (!(s in b)) exit 1; d = a[s] - b[s]; if (d < 0) d = -d; d /= a[s]; if (d > m) m = d; n++ }
                printf "toy ZeRO-1, 50 steps: 1 GPU (local) vs '"$world"' rank(s) over NCCL, max relative loss difference %.3g over %d steps\n", m, n; exit (n != 50 || m > 1e-5) }' \
       "$out/toy1.0.log" "$out/toy2.0.log" | tee "$out/toy-compare.txt" && part toy ok || part toy FAILED

launch bench $world "${force[@]}" bench --elems 1400000000 --bucket 40000000 --iters 10 && grep '^{' "$out/bench.0.log" >"$out/bench.json" \
  && part bench ok || part bench FAILED

launch hang $world "${force[@]}" --timeout 5 hang --skip 1 && grep -q 'timed out as expected' "$out/hang.0.log" && part hang ok || part hang FAILED

if [ "$ngpu" -ge 2 ] && [ -x bench/out/gpu/dist/os-train ]; then
  bench/dist/train.sh "$out/train" && part os-train ok || part os-train FAILED
fi

echo "failed parts: $failed"
exit $failed
