"""The peers of os-filter's rules on a JSON lines file: datatrove 0.10.1's GopherRepetitionFilter
and GopherQualityFilter (defaults, English) and OpenCC's own Python package (t2s). Prints, per
document, {"id", "gopher_repetition": reason or null, "gopher_quality": reason or null, "t2s": text}.

    datatrove_filters.py IN.jsonl
"""

import json
import sys

import opencc
from datatrove.data import Document
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter


def verdict(result):
    if result is True:
        return None
    return result[1] if isinstance(result, tuple) else "dropped"


def main():
    repetition, quality = GopherRepetitionFilter(), GopherQualityFilter()
    t2s = opencc.OpenCC("t2s")
    with open(sys.argv[1], encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            doc = Document(text=record["text"], id=record["id"])
            print(json.dumps({
                "id": record["id"],
                "gopher_repetition": verdict(repetition.filter(doc)),
                "gopher_quality": verdict(quality.filter(doc)),
                "t2s": t2s.convert(record["text"]),
            }, ensure_ascii=False))


if __name__ == "__main__":
    main()
