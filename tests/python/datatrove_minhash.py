"""Run datatrove's MinHash deduplication (its minhash_deduplication example: the four stages with
LocalPipelineExecutor, default MinhashConfig, 64-bit xxhash) over the JSON lines files of IN_DIR,
one task per file, and print the ids of the documents it removed as a JSON list.

    datatrove_minhash.py IN_DIR WORK_DIR [--workers N]
"""

import argparse
import glob
import json
import os

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.jsonl import JsonlWriter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("input")
    ap.add_argument("work")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.input, "*.jsonl")))
    tasks = len(files)
    config = MinhashConfig()
    w = lambda p: os.path.join(args.work, p)
    common = dict(workers=args.workers, skip_completed=False)
    LocalPipelineExecutor(
        pipeline=[JsonlReader(args.input, glob_pattern="*.jsonl"), MinhashDedupSignature(output_folder=w("signatures"), config=config, language="en")],
        tasks=tasks, logging_dir=w("logs/1"), **common,
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupBuckets(input_folder=w("signatures"), output_folder=w("buckets"), config=config)],
        tasks=config.num_buckets, logging_dir=w("logs/2"), **common,
    ).run()
    LocalPipelineExecutor(
        pipeline=[MinhashDedupCluster(input_folder=w("buckets"), output_folder=w("remove_ids"), config=config)],
        tasks=1, logging_dir=w("logs/3"), **common,
    ).run()
    LocalPipelineExecutor(
        pipeline=[
            JsonlReader(args.input, glob_pattern="*.jsonl"),
            MinhashDedupFilter(input_folder=w("remove_ids"), exclusion_writer=JsonlWriter(w("removed"), compression=None)),
            JsonlWriter(w("kept"), compression=None),
        ],
        tasks=tasks, logging_dir=w("logs/4"), **common,
    ).run()
    removed = []
    for path in sorted(glob.glob(w("removed/*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            removed.extend(json.loads(line)["id"] for line in f if line.strip())
    print(json.dumps(sorted(removed)))


if __name__ == "__main__":
    main()
