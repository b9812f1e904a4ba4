"""Encode texts with Python tiktoken, built as OpenSeek's tokenization_qwen.py builds it: the
qwen.tiktoken ranks, Qwen's pre-tokenizer pattern, the special tokens from id 151643 on, NFC
before encoding and every special-token string allowed.

usage: tiktoken_encode.py RANK_FILE IN.jsonl OUT.jsonl
IN holds one {"text": ...} object per line; OUT gets one JSON list of ids per line, in order.
"""
import base64
import json
import sys
import unicodedata

import tiktoken

PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
IMSTART = "<|im_start|>"
IMEND = "<|im_end|>"
EXTRAS = tuple(f"<|extra_{i}|>" for i in range(205))
SPECIAL_START_ID = 151643


def load_ranks(path):
    ranks = {}
    with open(path, "rb") as f:
        for line in f.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def main():
    rank_file, in_path, out_path = sys.argv[1:4]
    ranks = load_ranks(rank_file)
    assert len(ranks) == SPECIAL_START_ID, f"{rank_file}: {len(ranks)} ranks, expected {SPECIAL_START_ID}"
    specials = {tok: i for i, tok in enumerate((ENDOFTEXT, IMSTART, IMEND) + EXTRAS, start=SPECIAL_START_ID)}
    enc = tiktoken.Encoding("openseek", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)
    with open(in_path, encoding="utf-8") as f:
        texts = [unicodedata.normalize("NFC", json.loads(line)["text"]) for line in f if line.strip()]
    ids = enc.encode_batch(texts, allowed_special="all")
    with open(out_path, "w", encoding="utf-8") as f:
        for row in ids:
            f.write(json.dumps(row))
            f.write("\n")


if __name__ == "__main__":
    main()
