"""Throughput of the Python peers on the texts of a JSONL file (field "text"): tiktoken
(OpenSeek's rank file, Qwen's specials, NFC first as tokenization_qwen.py does) and Hugging Face
tokenizers (a tokenizer.json), each through encode_batch on N threads. Prints MB/s and tokens/s.

usage: tok_throughput.py RANK_FILE TOKENIZER_JSON IN.jsonl [THREADS] [ROUNDS]
"""
import json
import os
import sys
import time
import unicodedata

sys.path.insert(0, os.path.dirname(__file__))
from tiktoken_encode import ENDOFTEXT, EXTRAS, IMEND, IMSTART, PAT_STR, SPECIAL_START_ID, load_ranks  # noqa: E402

import tiktoken  # noqa: E402
import tokenizers  # noqa: E402


def report(name, nbytes, ntokens, seconds):
    print(f"{name:<40} {nbytes / seconds / 1e6:8.2f} MB/s {ntokens / seconds:12.0f} tokens/s  (best {seconds:.3f} s)")


def main():
    rank_file, tok_json, in_path = sys.argv[1:4]
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 1
    rounds = int(sys.argv[5]) if len(sys.argv) > 5 else 3
    with open(in_path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    ranks = load_ranks(rank_file)
    specials = {t: i for i, t in enumerate((ENDOFTEXT, IMSTART, IMEND) + EXTRAS, start=SPECIAL_START_ID)}
    enc = tiktoken.Encoding("openseek", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=specials)
    best, ids = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        ids = enc.encode_batch([unicodedata.normalize("NFC", t) for t in texts], num_threads=threads, allowed_special="all")
        best = min(best, time.perf_counter() - t0)
    ntokens = sum(map(len, ids))
    report(f"tiktoken encode_batch ({threads} threads)", nbytes, ntokens, best)

    os.environ["RAYON_NUM_THREADS"] = str(threads)
    tk = tokenizers.Tokenizer.from_file(tok_json)
    best, hf_ids = float("inf"), None
    for _ in range(rounds):
        t0 = time.perf_counter()
        hf_ids = [e.ids for e in tk.encode_batch_fast(texts, add_special_tokens=False)]
        best = min(best, time.perf_counter() - t0)
    report(f"tokenizers encode_batch_fast ({threads} threads)", nbytes, sum(map(len, hf_ids)), best)
    same = sum(a == b for a, b in zip(ids, hf_ids))
    print(f"documents with identical ids: {same}/{len(texts)}")


if __name__ == "__main__":
    main()
