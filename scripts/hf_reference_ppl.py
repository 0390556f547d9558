#!/usr/bin/env python3
"""Reference perplexity from HuggingFace transformers (float32, sdpa) on a folder written by
`sheaf convert`, under the window protocol of ../shared/BENCHMARK.md: non-overlapping windows of
CTX tokens of the text, each scored independently, exp(mean NLL) over every prediction.

Also proves the converted folder loads in transformers. The Swift test
(Tests/SheafBackendTests/RealModelTests.swift) checks Sheaf's value against what this printed.

Usage: pip install torch transformers tokenizers
       python3 scripts/hf_reference_ppl.py HF_DIR TEXT CTX WINDOWS [THREADS]
"""
import math
import sys
import time

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM


def main(folder, text_path, ctx, windows, threads=2):
    torch.set_num_threads(threads)
    ids = Tokenizer.from_file(f"{folder}/tokenizer.json").encode(
        open(text_path, encoding="utf-8", newline="").read()).ids
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa").eval()
    total, count = 0.0, 0
    start = time.time()
    with torch.inference_mode():
        for w in range(windows):
            x = torch.tensor([ids[w * ctx:(w + 1) * ctx]])
            logits = model(x).logits[0, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
            total += float(nll)
            count += ctx - 1
    seconds = time.time() - start
    print(f"windows {windows} ctx {ctx}: perplexity {math.exp(total / count):.6f} mean NLL {total / count:.6f} "
          f"over {count} predictions; {seconds:.1f} s, {windows * ctx / seconds:.1f} tokens/s")


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], int(a[3]), int(a[4]), int(a[5]) if len(a) > 5 else 2)
