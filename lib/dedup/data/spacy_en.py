"""Dump the rules of spaCy's blank English tokenizer (what datatrove's minhash uses to split words
for language "en") into spacy_en.json, which lib/dedup's word splitter reads.

Run with the venv's python after installing the pinned spacy (tests/requirements.txt):
    .venv/bin/python lib/dedup/data/spacy_en.py > lib/dedup/data/spacy_en.json
"""

import json

import spacy
from spacy.tokenizer import Tokenizer

nlp = spacy.blank("en")
tok = nlp.tokenizer
plain = Tokenizer(
    nlp.vocab,
    rules={},
    prefix_search=tok.prefix_search,
    suffix_search=tok.suffix_search,
    infix_finditer=tok.infix_finditer,
    url_match=tok.url_match,
)
assert tok.token_match is None, "the English tokenizer has no token_match"
specials = {text: [t[65] for t in rule] for text, rule in sorted(tok.rules.items())}
# Special cases that themselves contain affixes are found after affix splitting by a phrase matcher
# over their affix-only tokenization (Tokenizer._apply_special_cases).
matched = {
    text: [t.text for t in plain(text)]
    for text in sorted(tok.rules)
    if tok.find_prefix(text) or tok.find_infix(text) or tok.find_suffix(text) or " " in text
}
json.dump(
    {
        "spacy_version": spacy.__version__,
        "prefix": tok.prefix_search.__self__.pattern,
        "suffix": tok.suffix_search.__self__.pattern,
        "infix": tok.infix_finditer.__self__.pattern,
        "url": tok.url_match.__self__.pattern,
        "specials": specials,
        "matched_specials": matched,
    },
    __import__("sys").stdout,
    ensure_ascii=False,
    indent=0,
)
print()
