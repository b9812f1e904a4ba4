"""Save a JSON lines file as a Hugging Face dataset split with `datasets.save_to_disk` (the
Arrow layout os-eval reads: OUT_DIR/data-00000-of-0000N.arrow + dataset_info.json + state.json).

usage: eval_save_to_disk.py INPUT.jsonl OUT_DIR [--shards N]
"""
import argparse
import json

import datasets

parser = argparse.ArgumentParser()
parser.add_argument("input")
parser.add_argument("out_dir")
parser.add_argument("--shards", type=int, default=1)
args = parser.parse_args()

rows = [json.loads(line) for line in open(args.input, encoding="utf-8") if line.strip()]
ds = datasets.Dataset.from_list(rows)
ds.save_to_disk(args.out_dir, num_shards=args.shards)
print(json.dumps({"rows": len(rows), "columns": ds.column_names}))
