"""A synthetic English + Chinese corpus with planted near-duplicates, for os-dedup's tests and
bench/data: JSON lines files of {"id", "text", "dup_of"} ("dup_of": the id of the document a planted
copy was made from, or null). A copy changes a few words, punctuation and case of its source, so
its MinHash similarity stays high. Texts carry what datatrove's normalisation and spaCy's English
splitting treat specially (contractions, numbers with units, currency, accents, quotes, emoji).

    dedup_corpus.py OUT_DIR --files 4 --docs 300 --dup-rate 0.2 --edit-every 33 --seed 1
"""

import argparse
import json
import os
import random

EN_WORDS = (
    "the of and to in is was for on that with as by at from it this be are or an have not which one "
    "all their there been has more were when can who will no if out so said what up its about into "
    "than them only other new some time could these two may first then do any like my now over such "
    "our man me even most made after also did many before must through back years where much your way "
    "well down should because each just those people how too little state good very make world still "
    "own see men work long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take three river forest "
    "panda bamboo rabbit carrot horse farm village market bread winter summer teacher student garden"
).split()
SPECIAL = [
    "don't", "cannot", "gonna", "it's", "I'm", "5km", "$20", "€15", "3.14", "1,000", "café", "naïve",
    "Ångström", "‘quoted’", "“double”", "e-mail", "U.S.", "a.m.", "😀", "☺x", "hello‑world", "#tag",
    "50%", "(aside)", "x/y", "wanna", "dont", "gotta", "2pm", "Mr.", "co-op", "ΟΔΟΣ", "İstanbul",
]
ZH_CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"
ZH_PUNCT = ["，", "。", "、", "；", "：", "！", "？", "“", "”", "《", "》", "·", "—"]


def english(rng, words):
    out = []
    for i in range(words):
        w = rng.choice(SPECIAL) if rng.random() < 0.04 else rng.choice(EN_WORDS)
        if i == 0 or out[-1].endswith("."):
            w = w[:1].upper() + w[1:]
        out.append(w)
        r = rng.random()
        if r < 0.07:
            out[-1] += "."
        elif r < 0.11:
            out[-1] += ","
        elif r < 0.115:
            out[-1] += "\n"
    return " ".join(out).replace("\n ", "\n")


def chinese(rng, chars):
    out = []
    for i in range(chars):
        out.append(rng.choice(ZH_CHARS))
        r = rng.random()
        if r < 0.08:
            out.append(rng.choice(ZH_PUNCT))
        elif r < 0.12:
            out.append(" ")  # spaces and mixed-in Latin words give datatrove's splitter words
        elif r < 0.13:
            out.append(" " + rng.choice(EN_WORDS) + " ")
    return "".join(out)


def near_copy(rng, text, edit_every):
    """A copy with one word in `edit_every` changed, a few punctuation and case edits."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // edit_every)):
        i = rng.randrange(len(words))
        r = rng.random()
        if r < 0.4:
            words[i] = rng.choice(EN_WORDS)
        elif r < 0.7 and len(words) > 10:
            del words[i]
        else:
            words.insert(i, rng.choice(EN_WORDS))
    copy = " ".join(words)
    if rng.random() < 0.5:
        copy = copy.replace(",", ";", 1)
    if rng.random() < 0.3:
        copy = copy.upper()
    return copy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--docs", type=int, default=300, help="documents per file")
    ap.add_argument("--dup-rate", type=float, default=0.2, help="share of documents that are planted copies")
    ap.add_argument("--zh-rate", type=float, default=0.3, help="share of original documents in Chinese")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--words", type=int, default=120, help="mean words (English) per document")
    ap.add_argument("--edit-every", type=int, default=33, help="a planted copy changes one word in this many")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    originals = []
    for f in range(args.files):
        with open(os.path.join(args.out, f"part-{f:04d}.jsonl"), "w", encoding="utf-8") as out:
            for d in range(args.docs):
                doc_id = f"{f}-{d}"
                dup_of = None
                if originals and rng.random() < args.dup_rate:
                    dup_of, source = rng.choice(originals)
                    text = near_copy(rng, source, args.edit_every)
                elif rng.random() < args.zh_rate:
                    text = chinese(rng, rng.randint(args.words, 3 * args.words))
                else:
                    text = english(rng, rng.randint(args.words // 2, 2 * args.words))
                if dup_of is None:
                    originals.append((doc_id, text))
                    if len(originals) > 5000:
                        originals.pop(rng.randrange(len(originals)))
                out.write(json.dumps({"id": doc_id, "text": text, "dup_of": dup_of}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
