"""Print, as JSON, the Unicode version of this Python's unicodedata and the code point ranges it
holds unassigned (category Cn): {"unidata_version": "14.0.0", "unassigned": [[lo, hi], ...]}.
The tokenizer tests leave those out when comparing with Python, whose NFC knows only this version.
"""
import json
import sys
import unicodedata


def main():
    ranges = []
    for cp in range(0x110000):
        if unicodedata.category(chr(cp)) == "Cn":
            if ranges and ranges[-1][1] == cp - 1:
                ranges[-1][1] = cp
            else:
                ranges.append([cp, cp])
    json.dump({"unidata_version": unicodedata.unidata_version, "unassigned": ranges}, sys.stdout)


if __name__ == "__main__":
    main()
