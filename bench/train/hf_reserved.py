"""hf_baseline.py's main loop (../shared/bench/hf_baseline.py, imported unchanged) with one more
figure per result: the peak memory *reserved* by PyTorch's allocator, comparable with what os-train
reports (device memory in use from cudaMemGetInfo), beside hf_baseline's peak allocated.
Looks for hf_baseline.py in $HF_BASELINE_DIR, bench/out/gpu/train (carried copy), ../shared/bench."""
import json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
for d in [os.environ.get("HF_BASELINE_DIR", ""), os.path.join(here, "../out/gpu/train"), os.path.join(here, "../../../shared/bench")]:
    if d and os.path.isfile(os.path.join(d, "hf_baseline.py")):
        sys.path.insert(0, d)
        break
import torch
import transformers
import hf_baseline as hb

print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name(), flush=True)
seq = int(os.environ.get("SEQ", 4096))
steps = int(os.environ.get("STEPS", 10))
for v in json.loads(os.environ.get("VARIANTS", '[{"experts": "grouped_mm", "compile": true}]')):
    for mb in json.loads(os.environ.get("MBS", "[4]")):
        torch.cuda.reset_peak_memory_stats()
        try:
            hb.run(v, mb, seq, steps, 3)
            print(json.dumps(dict(variant=v, mb=mb, peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 1))), flush=True)
        except Exception as e:
            print(json.dumps(dict(variant=v, mb=mb, error=repr(e)[:400])), flush=True)
            torch.cuda.empty_cache()
