"""data-juicer 1.6.1's text rules (text_length, average_line_length, special_characters,
word_repetition filters) over JSON lines files, batch by batch as its executor applies a recipe
(each operator's compute_stats_batched then process_batched; documents a filter drops do not reach
the next); prints the kept ids as a JSON list. Parameters as os-filter's recipe in bench/data/run.py.

py-data-juicer pins dill/multiprocess versions older than datatrove's, so it runs from its own venv:
    python3 -m venv bench/out/dj-venv && bench/out/dj-venv/bin/pip install py-data-juicer==1.6.1 aiohttp
    bench/out/dj-venv/bin/python bench/data/data_juicer_filters.py FILE... > kept.json
"""

import json
import sys

from data_juicer.ops.filter import AverageLineLengthFilter, SpecialCharactersFilter, TextLengthFilter, WordRepetitionFilter
from data_juicer.utils.constant import Fields

# The same thresholds as the os-filter recipe bench/data/run.py writes.
OPS = [
    TextLengthFilter(min_len=200),
    AverageLineLengthFilter(min_len=10, max_len=800),
    SpecialCharactersFilter(min_ratio=0.0, max_ratio=0.23),
    WordRepetitionFilter(lang="en", tokenization=False, rep_len=2, min_ratio=0.0, max_ratio=0.01),
]
BATCH = 1000


def run(batch, kept):
    samples = {"text": [d["text"] for d in batch], Fields.stats: [{} for _ in batch]}
    ids = [d["id"] for d in batch]
    for op in OPS:
        samples = op.compute_stats_batched(samples)
        keep = list(op.process_batched(samples))
        samples = {k: [v for v, k_ in zip(vals, keep) if k_] for k, vals in samples.items()}
        ids = [i for i, k_ in zip(ids, keep) if k_]
    kept.extend(ids)


kept = []
for path in sys.argv[1:]:
    batch = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                batch.append(json.loads(line))
                if len(batch) == BATCH:
                    run(batch, kept)
                    batch = []
    if batch:
        run(batch, kept)
print(json.dumps(sorted(kept)))
