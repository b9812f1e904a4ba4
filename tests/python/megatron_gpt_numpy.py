"""numpy's own answers for the cases the Rust port of RandomState and normalize must match.

Usage: megatron_gpt_numpy.py CASES_JSON
CASES_JSON: {"shuffles": [[seed, n], ...], "weights": [[w, ...], ...]}
Prints JSON: {"shuffles": [{"seed", "n", "sha256", "sha256_second", "head", "raw32"}],
"normalized": [[float64 bit patterns]], "sums": [float64 bit patterns]}
Each case shuffles numpy.arange(n, dtype=int64) on RandomState(seed), then arange(n // 3 + 1) as
uint32 on the same state; "raw32" are the generator's next three 32-bit outputs afterwards, which
proves exactly as many words were consumed as numpy consumed. sha256 is over little-endian int64.
"""
import hashlib
import json
import struct
import sys

import numpy


def bits(x):
    """The IEEE-754 bit pattern of a float64, so the comparison is exact."""
    return struct.unpack("<Q", struct.pack("<d", x))[0]


cases = json.loads(sys.argv[1])
out = {"shuffles": [], "normalized": [], "sums": []}
for seed, n in cases.get("shuffles", []):
    rs = numpy.random.RandomState(seed)
    a = numpy.arange(n, dtype=numpy.int64)
    rs.shuffle(a)
    b = numpy.arange(n // 3 + 1, dtype=numpy.uint32)  # a second shuffle on the same state, another dtype
    rs.shuffle(b)
    out["shuffles"].append({
        "seed": seed,
        "n": n,
        "sha256": hashlib.sha256(a.astype("<i8").tobytes()).hexdigest(),
        "sha256_second": hashlib.sha256(b.astype("<i8").tobytes()).hexdigest(),
        "head": a[:10].tolist(),
        # randint over the full 32-bit range takes raw 32-bit words: the next three outputs.
        "raw32": [int(x) for x in rs.randint(0, 2**32, size=3, dtype=numpy.uint64)],
    })
for w in cases.get("weights", []):
    arr = numpy.array(w, dtype=numpy.float64)
    out["sums"].append(bits(float(numpy.sum(arr))))
    total = numpy.sum(arr)
    out["normalized"].append([bits(float(x)) for x in (arr / total)])
print(json.dumps(out))
