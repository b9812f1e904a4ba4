"""megatron-core building the same blend (BlendedMegatronDatasetBuilder, GPTDataset) over the
synthetic shards: the reference side of bench/mix. Prints wall seconds and peak RSS.

Usage: megatron_build.py RECIPE.toml DATA_ROOT CACHE_DIR
"""
import logging
import os
import resource
import sys
import time
import tomllib
import warnings

warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig


class Tok:
    def __init__(self):
        self.vocab_size, self.eod, self.pad = 151851, 151850, 151643
        self.unique_identifiers = {"class": "Tok"}


recipe = tomllib.load(open(sys.argv[1], "rb"))
root, cache = sys.argv[2], sys.argv[3]
torch.distributed.init_process_group("gloo", init_method="file://" + os.path.join(cache, "pg"), rank=0, world_size=1)
prefixes = [os.path.join(root, d["prefix"]) for d in recipe["datasets"]]
weights = [d["weight"] for d in recipe["datasets"]]
t = time.time()
config = GPTDatasetConfig(
    random_seed=recipe["seed"], sequence_length=recipe["seq_len"], blend=(prefixes, weights), split=recipe["split"],
    path_to_cache=cache, tokenizer=Tok(), reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
    create_attention_mask=False,
)
train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [recipe["total_samples"], 0, 0], lambda: True, config).build()
wall = time.time() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"megatron-core: {len(train)} samples in {wall:.1f} s, peak RSS {peak:.0f} MiB")
