#!/usr/bin/env python3
"""Cross-check peer for tests/tests/shards.rs: megatron-core's own IndexedDataset and
IndexedDatasetBuilder read and write indexed datasets (.bin/.idx).

  read PREFIX...        print what megatron reads from each shard (prefix "multimodal:P" opens P
                        with multimodal=True)
  write OUTDIR          write shards with IndexedDatasetBuilder (add_item, end_document,
                        add_document with lengths, multimodal modes, add_index merges) and print
                        what was written

Only the JSON result goes to stdout; anything megatron prints on import goes to stderr."""

import contextlib
import json
import os
import sys

with contextlib.redirect_stdout(sys.stderr):
    import numpy
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


def tolist(a):
    return numpy.asarray(a).tolist()


def read(args):
    out = []
    for arg in args:
        multimodal = arg.startswith("multimodal:")
        prefix = arg[len("multimodal:"):] if multimodal else arg
        ds = IndexedDataset(prefix, multimodal=multimodal)
        n = len(ds)
        sequences, modes = [], []
        for i in range(n):
            item = ds[i]
            if multimodal:
                item, mode = item
                modes.append(int(mode))
            sequences.append(tolist(item))
        # Contiguous slices go through megatron's other read path (one read, then split).
        sliced = ds[0:n]
        if multimodal:
            sliced = sliced[0]
        gets = []
        for i in range(n):
            length = int(ds.sequence_lengths[i])
            if length >= 2:
                part = ds.get(i, offset=1, length=length - 1)
                if multimodal:
                    part = part[0]
                gets.append({"sequence": i, "offset": 1, "length": length - 1, "tokens": tolist(part)})
        out.append({
            "prefix": prefix,
            "dtype": ds.index.dtype.__name__,
            "sequence_count": n,
            "document_count": len(ds.document_indices) - 1,
            "sequence_lengths": tolist(ds.sequence_lengths),
            "sequence_pointers": tolist(ds.index.sequence_pointers),
            "document_indices": tolist(ds.document_indices),
            "sequences": sequences,
            "sliced": [tolist(s) for s in sliced],
            "gets": gets,
            "modes": modes if multimodal else None,
        })
    return out


DTYPES = ["uint16", "int32", "uint8", "int64", "float32", "int8", "int16", "float64"]


def top_id(name):
    """The largest token id the dtype holds that the Rust side (u32 ids) can also write."""
    if name.startswith("float"):
        return 1 << 24 if name == "float32" else 2**32 - 1
    return min(int(numpy.iinfo(getattr(numpy, name)).max), 2**32 - 1)


def random_documents(rng, name, count):
    """`count` documents of 0..3 sequences of 0..9 tokens; the first token is the dtype's top id."""
    hi = min(top_id(name), 50000)
    docs = []
    for _ in range(count):
        docs.append([rng.randint(0, hi + 1, size=rng.randint(0, 10)).tolist() for _ in range(rng.randint(0, 4))])
    docs[0].insert(0, [top_id(name), 0])
    return docs


def build(prefix, name, docs, multimodal=False):
    """Write `docs` alternating add_item+end_document and add_document(tensor, lengths)."""
    dtype = getattr(numpy, name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype, multimodal=multimodal)
    modes = []
    for d, doc in enumerate(docs):
        if multimodal or d % 2 == 0 or not doc:
            for s, seq in enumerate(doc):
                mode = (d + s) % 3 if multimodal else 0
                modes.append(mode)
                builder.add_item(torch.tensor(seq, dtype=torch.int64), mode=mode)
            builder.end_document()
        else:
            flat = [t for seq in doc for t in seq]
            builder.add_document(torch.tensor(flat, dtype=torch.int64), [len(seq) for seq in doc])
    builder.finalize(prefix + ".idx")
    return {"prefix": prefix, "dtype": name, "documents": docs, "modes": modes if multimodal else None}


def write(outdir):
    rng = numpy.random.RandomState(1234)
    datasets = [build(os.path.join(outdir, "mg_" + name), name, random_documents(rng, name, 6)) for name in DTYPES]
    datasets.append(build(os.path.join(outdir, "mg_multimodal"), "int32", random_documents(rng, "int32", 4), multimodal=True))
    parts = [build(os.path.join(outdir, f"mg_part{k}"), "int32", random_documents(rng, "int32", 5)) for k in range(3)]
    datasets += parts

    merges = []
    # add_index over whole shards: what `merge` must reproduce byte for byte.
    merged = os.path.join(outdir, "mg_merged")
    builder = IndexedDatasetBuilder(merged + ".bin", dtype=numpy.int32)
    for part in parts:
        builder.add_index(part["prefix"])
    builder.finalize(merged + ".idx")
    merges.append({"output": merged, "inputs": [p["prefix"] for p in parts], "before": []})
    # A uint16 shard merged with itself.
    twice = os.path.join(outdir, "mg_uint16_twice")
    builder = IndexedDatasetBuilder(twice + ".bin", dtype=numpy.uint16)
    builder.add_index(datasets[0]["prefix"])
    builder.add_index(datasets[0]["prefix"])
    builder.finalize(twice + ".idx")
    merges.append({"output": twice, "inputs": [datasets[0]["prefix"]] * 2, "before": []})
    # add_index after documents of its own: indices are offset by the sequences already there.
    mixed = os.path.join(outdir, "mg_mixed")
    before = [[[1, 2, 3], [4]], [[5]]]
    builder = IndexedDatasetBuilder(mixed + ".bin", dtype=numpy.int32)
    for doc in before:
        for seq in doc:
            builder.add_item(torch.tensor(seq, dtype=torch.int64))
        builder.end_document()
    builder.add_index(parts[1]["prefix"])
    builder.finalize(mixed + ".idx")
    merges.append({"output": mixed, "inputs": [parts[1]["prefix"]], "before": before})
    # Multimodal merge keeps the modes.
    mm = os.path.join(outdir, "mg_multimodal_twice")
    builder = IndexedDatasetBuilder(mm + ".bin", dtype=numpy.int32, multimodal=True)
    builder.add_index(datasets[8]["prefix"])
    builder.add_index(datasets[8]["prefix"])
    builder.finalize(mm + ".idx")
    merges.append({"output": mm, "inputs": [datasets[8]["prefix"]] * 2, "before": []})
    return {"datasets": datasets, "merges": merges}


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("read", "write"):
        sys.exit(__doc__)
    result = read(sys.argv[2:]) if sys.argv[1] == "read" else write(sys.argv[2])
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
