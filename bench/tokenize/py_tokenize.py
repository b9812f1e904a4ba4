"""Reference tokenizers for the benchmark: tokenize a JSON lines corpus with HF `tokenizers`
(encode_batch, all cores) or `tiktoken` (encode_batch, all cores), as a user would in Python.

usage: py_tokenize.py {hf,tiktoken} TOKENIZER_DIR CORPUS.jsonl IDS_OUT [--threads N] [--batch 1000]
Writes every id as little-endian int32 (documents concatenated, no wrapping) to IDS_OUT and prints
JSON: documents, tokens, seconds (tokenizing and reading, not loading the tokenizer).
"""
import argparse
import base64
import json
import os
import sys
import time
import unicodedata

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("kind", choices=["hf", "tiktoken"])
parser.add_argument("tokenizer_dir")
parser.add_argument("corpus")
parser.add_argument("ids_out")
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--batch", type=int, default=1000)
args = parser.parse_args()

PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

if args.kind == "hf":
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(args.tokenizer_dir, "derived_hf", "tokenizer.json"))

    def encode(texts):
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

else:
    import tiktoken

    ranks = {}
    for line in open(os.path.join(args.tokenizer_dir, "qwen.tiktoken"), "rb"):
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    n = len(ranks)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
    enc = tiktoken.Encoding("openseek", pat_str=PATTERN, mergeable_ranks=ranks, special_tokens={s: n + i for i, s in enumerate(specials)})

    def encode(texts):
        # OpenSeek's tokenizer NFC-normalises before encoding; so does os-tokenize.
        texts = [unicodedata.normalize("NFC", t) for t in texts]
        return enc.encode_batch(texts, num_threads=args.threads, allowed_special="all")

start = time.perf_counter()
documents = tokens = 0
with open(args.corpus, encoding="utf-8") as corpus, open(args.ids_out, "wb") as out:
    batch = []
    def flush():
        global documents, tokens
        for ids in encode(batch):
            out.write(np.asarray(ids, dtype="<i4").tobytes())
            tokens += len(ids)
        documents += len(batch)
        batch.clear()
    for line in corpus:
        batch.append(json.loads(line)["text"])
        if len(batch) == args.batch:
            flush()
    if batch:
        flush()
seconds = time.perf_counter() - start
print(json.dumps({"documents": documents, "tokens": tokens, "seconds": seconds}))
