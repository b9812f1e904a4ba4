"""megatron-core's own GPTDataset / BlendedDataset on shards it writes itself, dumped for comparison.

Usage: megatron_gpt_blend.py WORKDIR CONFIG_JSON
CONFIG_JSON: {"shards": [[num_docs, min_len, max_len], ...], "weights": [...], "seq_len": N,
              "samples": N, "seed": S, "split": "98,1,1", "vocab": V, "eod": E, "data_seed": D,
              "reset_position_ids": bool, "reset_attention_mask": bool, "eod_mask_loss": bool}
"weights": null with one shard builds Megatron's plain GPTDataset (no blend files).
Writes WORKDIR/shards/dNN.{bin,idx} with megatron's IndexedDatasetBuilder (int32 tokens, every
document ending in EOD), builds the train split with BlendedMegatronDatasetBuilder, and saves under
WORKDIR/megatron/: dNNN_{document,sample,shuffle}_index.npy of every GPTDataset,
blend_dataset_index.npy / blend_dataset_sample_index.npy, samples.npy (int64 [N, seq_len+1], the
raw text of each blended sample), and, for the first 64 samples, tokens/labels/loss_mask/
position_ids from __getitem__ (batch_{tokens,labels,loss_mask,position_ids}.npy, int64). Prints JSON: {"prefixes": [...], "num_samples": N,
"documents": [[doc ids of blended sample i], ...]}.
"""
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")
import logging

logging.disable(logging.WARNING)

import numpy
import torch

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder


class Tok:
    """The few tokenizer facts GPTDataset reads."""

    def __init__(self, vocab, eod, pad):
        self.vocab_size = vocab
        self.eod = eod
        self.pad = pad
        self.unique_identifiers = {"class": "Tok", "vocab": vocab, "eod": eod, "pad": pad}


def main():
    work = sys.argv[1]
    cfg = json.loads(sys.argv[2])
    rng = numpy.random.default_rng(cfg.get("data_seed", 0))
    vocab, eod = cfg["vocab"], cfg["eod"]
    os.makedirs(os.path.join(work, "shards"), exist_ok=True)
    prefixes = []
    for k, (ndocs, lo, hi) in enumerate(cfg["shards"]):
        prefix = os.path.join(work, "shards", f"d{k:02d}")
        builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
        for _ in range(ndocs):
            n = int(rng.integers(lo, hi + 1))
            doc = rng.integers(0, eod, size=n - 1).astype(numpy.int32)
            builder.add_document(numpy.concatenate([doc, [eod]]).astype(numpy.int32), [n])
        builder.finalize(prefix + ".idx")
        prefixes.append(prefix)
    # BlendedDataset asks torch.distributed for the rank when it caches: one local process group.
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo", init_method="file://" + os.path.join(work, "pg"), rank=0, world_size=1)
    tok = Tok(vocab, eod, cfg.get("pad", vocab - 1))  # pad == eod makes Megatron use no pad
    config = GPTDatasetConfig(
        random_seed=cfg["seed"],
        sequence_length=cfg["seq_len"],
        blend=(prefixes, cfg["weights"]),
        split=cfg["split"],
        path_to_cache=os.path.join(work, "cache"),
        tokenizer=tok,
        reset_position_ids=cfg.get("reset_position_ids", False),
        reset_attention_mask=cfg.get("reset_attention_mask", False),
        eod_mask_loss=cfg.get("eod_mask_loss", False),
        create_attention_mask=False,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [cfg["samples"], 0, 0], lambda: True, config).build()
    out = os.path.join(work, "megatron")
    os.makedirs(out, exist_ok=True)
    if isinstance(train, GPTDataset):
        # One unweighted prefix ("weights": null): Megatron returns the GPTDataset itself.
        single = train
        for name, arr in (("document", single.document_index), ("sample", single.sample_index), ("shuffle", single.shuffle_index)):
            numpy.save(os.path.join(out, f"d000_{name}_index.npy"), arr)
        samples, documents = [], []
        for i in range(len(single)):
            text, docs = single._query_document_sample_shuffle_indices(i)
            samples.append(text)
            documents.append([int(x) for x in docs])
        numpy.save(os.path.join(out, "samples.npy"), numpy.stack(samples).astype(numpy.int64))
        print(json.dumps({"prefixes": prefixes, "num_samples": len(single), "documents": documents}))
        return
    for d, ds in enumerate(train.datasets):
        numpy.save(os.path.join(out, f"d{d:03d}_document_index.npy"), ds.document_index)
        numpy.save(os.path.join(out, f"d{d:03d}_sample_index.npy"), ds.sample_index)
        numpy.save(os.path.join(out, f"d{d:03d}_shuffle_index.npy"), ds.shuffle_index)
    numpy.save(os.path.join(out, "blend_dataset_index.npy"), train.dataset_index)
    numpy.save(os.path.join(out, "blend_dataset_sample_index.npy"), train.dataset_sample_index)
    samples, documents = [], []
    for i in range(len(train)):
        d, j = int(train.dataset_index[i]), int(train.dataset_sample_index[i])
        text, docs = train.datasets[d]._query_document_sample_shuffle_indices(j)
        samples.append(text)
        documents.append([int(x) for x in docs])
    numpy.save(os.path.join(out, "samples.npy"), numpy.stack(samples).astype(numpy.int64))
    batch = [train[i] for i in range(min(64, len(train)))]
    for key in ("tokens", "labels", "loss_mask", "position_ids"):
        # int64 everywhere (the loss mask is 0.0/1.0), so one reader serves all four.
        numpy.save(os.path.join(out, f"batch_{key}.npy"), numpy.stack([b[key].numpy() for b in batch]).astype(numpy.int64))
    print(json.dumps({"prefixes": prefixes, "num_samples": len(train), "documents": documents}))


if __name__ == "__main__":
    main()
