"""TRL's pack_dataset (trl from PyPI, pinned in tests/requirements.txt) on the documents of a JSON
file (a list of token-id lists), for os-pack's trl-bfd / trl-bfd-split parity test.

usage: trl_pack.py DOCS_JSON SEQ_LENGTH BATCH_SIZE NUM_PROC STRATEGY...
prints {strategy: [{"input_ids": [...], "seq_lengths": [...], "position_ids": [...]}, ...]}; the
position ids are those TRL's padding-free collator derives from seq_lengths (restarting per piece).
"""
import json
import sys

from datasets import Dataset
from trl.data_utils import pack_dataset

docs_path, seq_length, batch_size, num_proc, *strategies = sys.argv[1:]
with open(docs_path) as f:
    docs = json.load(f)
dataset = Dataset.from_dict({"input_ids": docs})
out = {}
for strategy in strategies:
    packed = pack_dataset(
        dataset, int(seq_length), strategy=strategy, map_kwargs={"batch_size": int(batch_size), "num_proc": int(num_proc)}
    )
    out[strategy] = [
        {
            "input_ids": row["input_ids"],
            "seq_lengths": row["seq_lengths"],
            "position_ids": [p for n in row["seq_lengths"] for p in range(n)],
        }
        for row in packed
    ]
print(json.dumps(out))
