"""The Python string operations lighteval's prompt functions and metrics use, applied to each
string of a JSON list (argv[1]); prints one JSON object per string.

usage: eval_text_reference.py STRINGS.json
Operations (as in lighteval v0.3.0 / OpenSeek's task file): str.lower, str.capitalize,
str.rstrip, str.strip, HellaSwag's preprocess, harness_triviaqa_normalizer, gsm8k_normalizer.
"""
import json
import re
import string
import sys


def hellaswag_preprocess(text):
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def triviaqa_normalizer(text):
    return text.lower().translate(str.maketrans("", "", string.punctuation))


ANS_RE = re.compile(r"#### (\-?[0-9\.\,]+)")


def gsm8k_normalizer(text):
    match = ANS_RE.search(text)
    if match:
        return match.group(1).strip().replace(",", "")
    return "[invalid]"


for s in json.load(open(sys.argv[1], encoding="utf-8")):
    print(json.dumps({
        "lower": s.lower(),
        "capitalize": s.capitalize(),
        "rstrip": s.rstrip(),
        "strip": s.strip(),
        "hellaswag": hellaswag_preprocess(s),
        "triviaqa": triviaqa_normalizer(s),
        "gsm8k": gsm8k_normalizer(s),
        "chars": len(s),
    }, ensure_ascii=False))
