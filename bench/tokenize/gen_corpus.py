"""Generate the tokenize benchmark corpus: JSON lines of mixed English, Chinese, code and digits.

Words are drawn from the OpenSeek vocabulary itself (Zipf-weighted by rank, so frequent tokens are
frequent), code comes from the Python standard library's sources, so the text exercises the same
merges real data does rather than a handful of repeated templates. Deterministic for a seed.

usage: gen_corpus.py RANK_FILE OUTPUT.jsonl --mb 200 [--seed 0]
"""
import argparse
import base64
import bisect
import itertools
import json
import os
import random
import sysconfig

parser = argparse.ArgumentParser()
parser.add_argument("rank_file")
parser.add_argument("output")
parser.add_argument("--mb", type=float, default=200)
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
rng = random.Random(args.seed)

english, chinese = [], []
for line in open(args.rank_file, "rb"):
    token, rank = line.split()
    try:
        text = base64.b64decode(token).decode("utf-8")
    except UnicodeDecodeError:
        continue
    word = text.strip()
    if text.startswith(" ") and word.isascii() and word.isalpha():
        english.append(word)
    elif word and all("\u4e00" <= ch <= "\u9fff" for ch in word):
        chinese.append(word)


def zipf_sampler(words):
    cumulative = list(itertools.accumulate(1.0 / (i + 10) for i in range(len(words))))
    total = cumulative[-1]
    return lambda: words[bisect.bisect_left(cumulative, rng.random() * total)]


en_word, zh_word = zipf_sampler(english), zipf_sampler(chinese)

code_chunks = []
stdlib = sysconfig.get_paths()["stdlib"]
for root, _, files in os.walk(stdlib):
    for name in sorted(files):
        if name.endswith(".py") and len(code_chunks) < 4000:
            try:
                source = open(os.path.join(root, name), encoding="utf-8").read()
            except (UnicodeDecodeError, OSError):
                continue
            for i in range(0, len(source), 3000):
                code_chunks.append(source[i : i + 3000])


def english_doc():
    sentences = []
    for _ in range(rng.randint(3, 30)):
        words = [en_word() for _ in range(rng.randint(4, 20))]
        words[0] = words[0].capitalize()
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 10**rng.randint(1, 7))))
        sentences.append(" ".join(words) + rng.choice([".", ".", ".", "?", "!", ";"]))
    return " ".join(sentences) + rng.choice(["", "\n", "\n\n"])


def chinese_doc():
    sentences = []
    for _ in range(rng.randint(3, 30)):
        sentence = "".join(zh_word() for _ in range(rng.randint(4, 25)))
        if rng.random() < 0.2:
            sentence += str(rng.randint(1900, 2030)) + "年"
        sentences.append(sentence + rng.choice(["。", "，", "！", "？"]))
    return "".join(sentences)


def digits_doc():
    rows = [" ".join(f"{rng.uniform(-1e4, 1e4):.{rng.randint(0, 6)}f}" for _ in range(rng.randint(3, 12))) for _ in range(rng.randint(5, 40))]
    return "\n".join(rows)


makers = [english_doc] * 5 + [chinese_doc] * 3 + [lambda: rng.choice(code_chunks)] * 2 + [digits_doc]
target = int(args.mb * 1e6)
written = 0
with open(args.output + ".tmp", "w", encoding="utf-8") as out:
    while written < target:
        line = json.dumps({"text": rng.choice(makers)()}, ensure_ascii=False) + "\n"
        out.write(line)
        written += len(line.encode("utf-8"))
os.replace(args.output + ".tmp", args.output)
print(json.dumps({"bytes": written, "english_words": len(english), "chinese_words": len(chinese), "code_chunks": len(code_chunks)}))
