"""datatrove 0.10.1's Gopher filters as a pipeline (JsonlReader -> GopherRepetitionFilter ->
GopherQualityFilter -> JsonlWriter), one task per input file; prints the kept ids as JSON.

    datatrove_gopher.py IN_DIR WORK_DIR --workers N
"""

import argparse
import glob
import json
import os

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers.jsonl import JsonlWriter

ap = argparse.ArgumentParser()
ap.add_argument("input")
ap.add_argument("work")
ap.add_argument("--workers", type=int, default=1)
args = ap.parse_args()
tasks = len(glob.glob(os.path.join(args.input, "*.jsonl")))
LocalPipelineExecutor(
    pipeline=[
        JsonlReader(args.input, glob_pattern="*.jsonl"),
        GopherRepetitionFilter(),
        GopherQualityFilter(),
        JsonlWriter(os.path.join(args.work, "kept"), compression=None),
    ],
    tasks=tasks,
    workers=args.workers,
    logging_dir=os.path.join(args.work, "logs"),
    skip_completed=False,
).run()
kept = []
for path in sorted(glob.glob(os.path.join(args.work, "kept", "*.jsonl"))):
    with open(path, encoding="utf-8") as f:
        kept.extend(json.loads(line)["id"] for line in f if line.strip())
print(json.dumps(sorted(kept)))
