#!/usr/bin/env python3
"""Independent reference for `sheaf convert --dtype f32` on a llama GGUF.

Dequantises every tensor with the `gguf` package (PyPI) and numpy, renames it to the
HuggingFace name, un-permutes llama Q/K rows ([heads, hd/2, 2, dIn] -> [heads, 2, hd/2, dIn],
see ../shared/BENCHMARK.md), and prints, per tensor, the sha256 of its float32 little-endian
bytes, then one digest over all of them in sorted name order. The Swift test
(Tests/SheafIOTests/ConvertTests.swift) checks Sheaf's converted safetensors against the
numbers this printed; only those numbers are committed, never model data.

Usage: pip install gguf numpy; python3 scripts/convert_golden.py MODEL.gguf
"""
import hashlib
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

FIXED = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
         "output.weight": "lm_head.weight"}
BLOCK = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight",
         "attn_q.weight": "self_attn.q_proj.weight", "attn_k.weight": "self_attn.k_proj.weight",
         "attn_v.weight": "self_attn.v_proj.weight", "attn_output.weight": "self_attn.o_proj.weight",
         "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
         "ffn_down.weight": "mlp.down_proj.weight"}


def hf_name(name):
    if name in FIXED:
        return FIXED[name]
    _, layer, rest = name.split(".", 2)
    return f"model.layers.{layer}.{BLOCK[rest]}"


def field(reader, key):
    f = reader.fields[key]
    return int(f.parts[f.data[0]][0])


def main(path):
    reader = GGUFReader(path)
    heads = field(reader, "llama.attention.head_count")
    kv_heads = field(reader, "llama.attention.head_count_kv")
    digests = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists dimensions innermost first
        values = values.reshape(shape)
        n_heads = heads if t.name.endswith("attn_q.weight") else kv_heads if t.name.endswith("attn_k.weight") else None
        if n_heads:
            d_out, d_in = shape
            values = values.reshape(n_heads, d_out // n_heads // 2, 2, d_in).swapaxes(1, 2).reshape(d_out, d_in)
        digests[hf_name(t.name)] = (hashlib.sha256(np.ascontiguousarray(values).astype("<f4").tobytes()).hexdigest(), shape,
                                    float(values.astype(np.float64).sum()))
    total = hashlib.sha256()
    for name in sorted(digests):
        total.update(bytes.fromhex(digests[name][0]))
    for name in ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.0.self_attn.k_proj.weight", "model.layers.29.mlp.down_proj.weight", "model.norm.weight"]:
        sha, shape, s = digests[name]
        print(f'("{name}", {shape}, "{sha}", {s!r}),')
    print(f"tensors {len(digests)} all {total.hexdigest()}")


if __name__ == "__main__":
    main(sys.argv[1])
