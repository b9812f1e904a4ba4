"""Synthetic Megatron shards for the blend benchmark: a real .idx per dataset of the baseline recipe
(document lengths drawn like web text, ~1,000 tokens on average, the dataset's share of 100B tokens)
and a sparse .bin of the matching size (no tokens are read when building indices).

Usage: make_shards.py RECIPE.toml OUT_DIR [SCALE]   (SCALE multiplies every dataset's tokens; default 1)
"""
import os
import sys
import tomllib

import numpy

recipe = tomllib.load(open(sys.argv[1], "rb"))
out = sys.argv[2]
scale = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
weights = numpy.array([d["weight"] for d in recipe["datasets"]], dtype=numpy.float64)
shares = weights / weights.sum()
rng = numpy.random.default_rng(0)
total_docs = 0
for d, share in zip(recipe["datasets"], shares):
    tokens = int(100.7e9 * share * scale)
    ndocs = max(1, tokens // 1000)
    lengths = numpy.clip(rng.lognormal(mean=6.4, sigma=1.0, size=ndocs), 2, 200_000).astype(numpy.int32)
    prefix = os.path.join(out, d["prefix"])
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    pointers = numpy.zeros(ndocs, dtype=numpy.int64)
    numpy.cumsum(lengths[:-1].astype(numpy.int64) * 4, out=pointers[1:])
    with open(prefix + ".idx", "wb") as f:
        f.write(b"MMIDIDX\x00\x00")
        f.write(numpy.array([1], dtype="<u8").tobytes())
        f.write(numpy.array([4], dtype="<u1").tobytes())  # int32 tokens
        f.write(numpy.array([ndocs, ndocs + 1], dtype="<u8").tobytes())
        f.write(lengths.astype("<i4").tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(numpy.arange(ndocs + 1, dtype="<i8").tobytes())
    with open(prefix + ".bin", "wb") as f:
        f.truncate(int(lengths.astype(numpy.int64).sum()) * 4)
    total_docs += ndocs
print(f"{len(shares)} shards, {total_docs} documents")
