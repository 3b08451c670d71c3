"""Runs inside a transformers 4.x virtualenv (bench/llmcompressor_check.py starts it).

    bench/.venv-transformers4/bin/python bench/transformers4_worker.py JOB.json

JOB.json: {"model": folder, "text": str, "windows": [[ids...], ...], "out": result.json}.
Loads the saved folder with AutoTokenizer and AutoModelForCausalLM as a 4.x user would and
writes the token ids of `text`, the RoPE base the config gives, the tokenizer's class and the
perplexity over `windows` (exp of the mean next-token loss) to `out`.
"""

from __future__ import annotations

import json
import math
import sys


def main(job_path: str) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job = json.load(open(job_path))
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    model = AutoModelForCausalLM.from_pretrained(job["model"], torch_dtype=torch.float32).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for window in job["windows"]:
            ids = torch.tensor([window])  # (1, seqlen)
            loss = model(ids, labels=ids).loss  # mean over seqlen - 1 predicted tokens
            nll, count = nll + float(loss) * (ids.shape[1] - 1), count + ids.shape[1] - 1
    result = {
        "ids": tokenizer(job["text"]).input_ids,
        "tokenizer_class": type(tokenizer).__name__,
        "rope_theta": model.config.rope_theta,
        "ppl": math.exp(nll / count),
        "transformers": transformers.__version__,
    }
    json.dump(result, open(job["out"], "w"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
