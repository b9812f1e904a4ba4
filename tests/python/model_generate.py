"""Reference side of the inference parity tests: transformers' masked forward and greedy `generate`
on a checkpoint written by hf_deepseek.py make.

  model_generate.py DIR REQUEST_JSON OUT_JSON
      REQUEST_JSON: {"prompts": [[ids]...], "batch_size": N, "max_new_tokens": M, "eos": [ids]}
      OUT_JSON: {"masked": {"ids": [[...]], "mask": [[...]], "logits": [...] (flat), "shape": [B, T, V]}
                   (all prompts left-padded with 0 into one batch, positions cumsum(mask) - 1),
                 "generated": [[new ids]...] (prompts in batches of batch_size in the given order,
                   left-padded, `generate(do_sample=False)`, cut before the first EOS),
                 "alone": [[new ids]...] (each prompt alone, no padding)}
"""

import json
import sys

import torch
from transformers import DeepseekV3ForCausalLM, GenerationConfig

PAD = 0


def left_pad(prompts):
    t = max(len(p) for p in prompts)
    ids = torch.tensor([[PAD] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def cut(seq, eos):
    for i, tok in enumerate(seq):
        if tok in eos:
            return seq[:i]
    return seq


def generate(model, prompts, max_new_tokens, eos):
    ids, mask = left_pad(prompts)
    config = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=PAD,
                              bos_token_id=None, min_new_tokens=0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return [cut(row[ids.shape[1]:].tolist(), eos) for row in out]


def main():
    directory, request, out = sys.argv[1:4]
    req = json.load(open(request))
    prompts, bs, n, eos = req["prompts"], req["batch_size"], req["max_new_tokens"], req["eos"]
    model = DeepseekV3ForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    ids, mask = left_pad(prompts)
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.float()
    generated = []
    for s in range(0, len(prompts), bs):
        generated += generate(model, prompts[s:s + bs], n, eos)
    alone = [generate(model, [p], n, eos)[0] for p in prompts]
    result = {"masked": {"ids": ids.tolist(), "mask": mask.tolist(), "logits": logits.flatten().tolist(), "shape": list(logits.shape)},
              "generated": generated, "alone": alone}
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
