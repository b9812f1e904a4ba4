"""os-filter's language-identification peers: trains tiny fastText supervised classifiers on
generated lines of four languages (en, de, fr, zh) with fastText's own package, saves them
(.bin with hierarchical softmax, softmax and one-vs-all; a quantized, pruned .ftz), and prints
fastText's predict(k=-1 and k=2) on held-out lines plus datatrove 0.10.1's LanguageFilter verdicts
on multi-line documents, as one JSON object.

    fasttext_lid.py DIR
"""

import json
import os
import random
import sys

import fasttext
from fasttext.FastText import _FastText
from datatrove.data import Document
from datatrove.pipeline.filters import LanguageFilter

WORDS = {
    "en": "the of and to in is was for that with as on by it from this be are have which one had not but what all were when we there can an your said use each she do how their if will up other about out many then them these so some her would make like him into time has look two more write go see number no way could people my than first water been call who oil its now find long down day did get come made may part".split(),
    "de": "der die und in den von zu das mit sich des auf für ist im dem nicht ein eine als auch es an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem über einen so zum war haben nur oder aber vor zur bis mehr durch man sein wurde sei größer schön müssen Straße".split(),
    "fr": "le de un être et à il avoir ne je son que se qui ce dans en du elle au pour pas que vous par sur faire plus dire me on mon lui nous comme mais pouvoir avec tout y aller voir bien où sans tu ou leur homme si deux mari moi vouloir te femme venir quand grand celui été très déjà".split(),
    "zh": list("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"),
}


def sentence(rng, lang, n=None):
    n = n or rng.randint(4, 12)
    words = [rng.choice(WORDS[lang]) for _ in range(n)]
    if lang == "zh":
        # Chinese: runs of characters, now and then a space between phrases.
        return "".join(w + (" " if rng.random() < 0.15 else "") for w in words).strip()
    return " ".join(words)


def main():
    out = sys.argv[1]
    rng = random.Random(7)
    train = os.path.join(out, "train.txt")
    with open(train, "w", encoding="utf-8") as f:
        for i in range(800):
            # Unequal label counts, so the hierarchical softmax tree is not balanced.
            lang = ["en", "en", "en", "de", "de", "fr", "zh", "zh"][i % 8]
            f.write(f"__label__{lang} {sentence(rng, lang)}\n")
    common = dict(input=train, epoch=8, lr=0.5, minn=2, maxn=4, bucket=5000, wordNgrams=2, thread=1, seed=3, verbose=0)
    models, trained = {}, {}
    for loss in ["hs", "softmax", "ova"]:
        trained[loss] = fasttext.train_supervised(dim=16, loss=loss, **common)
        models[loss] = os.path.join(out, f"{loss}.bin")
        trained[loss].save_model(models[loss])
    # lid.176.ftz's kind: quantized input (fastText quantizes no output of under 256 labels), norms
    # quantized, the dictionary pruned; sub-vectors of 3, so the last is shorter (16 = 5 x 3 + 1).
    # The softmax model above, quantized after its .bin is saved: a second identical training in this
    # process stops with fastText's "Encountered NaN" in about a third of runs (fasttext-numpy2-wheel 0.9.2).
    model = trained["softmax"]
    model.quantize(input=train, qnorm=True, qout=False, cutoff=400, retrain=False, dsub=3)
    models["ftz"] = os.path.join(out, "softmax.ftz")
    model.save_model(models["ftz"])

    lines = [sentence(rng, lang) for lang in ["en", "de", "fr", "zh"] * 10]
    lines += [
        sentence(rng, "en", 3) + " " + sentence(rng, "fr", 3),
        sentence(rng, "de", 2) + " " + sentence(rng, "zh", 6),
        "xyzzy qwertz plugh",
        "",
        "   \t ",
        "__label__de the cat",
        "the water </s> der die und",
        "Straße größer café déjà très",
        "naïve résumé 🙂 über",
        "the\tof\rand\x0bto\x0cin",
        "12345 678",
    ]
    predictions = {}
    for name, path in models.items():
        m = _FastText(path)
        predictions[name] = {}
        for k in [-1, 2]:
            rows = []
            for line in lines:
                labels, probs = m.predict(line, k=k)
                rows.append([list(labels), [float(p) for p in probs]])
            predictions[name][str(k)] = rows

    # Documents of several lines, some of mixed languages, for datatrove's LanguageFilter.
    docs = []
    for i in range(60):
        langs = [rng.choice(["en", "de", "fr", "zh"]) for _ in range(rng.randint(1, 3))]
        docs.append({"id": f"doc{i}", "text": "\n".join(sentence(rng, lang) for lang in langs)})
    verdicts = {}
    for keep in [["en", "de"], None]:
        lf = LanguageFilter(languages=keep, language_threshold=0.65)
        lf.model._model = _FastText(models["hs"])
        verdicts["none" if keep is None else ",".join(keep)] = [lf.filter(Document(text=d["text"], id=d["id"])) for d in docs]
    print(json.dumps({"models": models, "lines": lines, "predictions": predictions, "documents": docs, "datatrove": verdicts}))


if __name__ == "__main__":
    main()
