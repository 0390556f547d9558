#!/usr/bin/env python3
"""Golden statistics of dequantised SmolLM2 GGUF tensors, computed independently of Sheaf.

Uses the `gguf` package from PyPI (llama.cpp's own Python reader and numpy dequantisation)
and numpy: `python3 -m pip install gguf numpy`. For each tensor it prints the name, ggml type,
shape (PyTorch order, outermost first), the float64 sum and sum of squares, the first four
values, and the sha256 of the float32 little-endian bytes in the file's own row order (no
llama Q/K un-permutation). Tests/SheafIOTests/GGUFTests.swift holds the numbers as constants.

It also prints, without the model, the sha256 of seeded random blocks of every type Sheaf
dequantises (F32 ... Q6_K): the bytes come from SplitMix64 exactly as the Swift test makes
them (scale fields forced finite), so the test checks each dequantiser against gguf-py on
data no hand example covers.

Usage: scripts/gguf_golden.py [MODEL.gguf]
"""
import hashlib
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TENSORS = [
    "token_embd.weight",  # Q8_0
    "blk.0.attn_q.weight",  # Q4_1
    "blk.0.attn_k.weight",  # Q4_1
    "blk.0.ffn_down.weight",  # Q4_1
    "blk.29.attn_v.weight",  # Q4_1
    "output_norm.weight",  # F32
    "blk.0.attn_norm.weight",  # F32 (the file holds only Q8_0, Q4_1 and F32)
]


M64 = (1 << 64) - 1


class SplitMix64:
    """SheafCore's SplitMix64, bit for bit."""

    def __init__(self, seed: int) -> None:
        self.state = seed & M64

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & M64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


# type: (ggml id, block elements, block bytes, byte offsets of f16 scale fields in a block)
RANDOM_TYPES = {
    "F32": (0, 1, 4, []),
    "F16": (1, 1, 2, [0]),
    "BF16": (30, 1, 2, []),
    "Q8_0": (8, 32, 34, [0]),
    "Q4_0": (2, 32, 18, [0]),
    "Q4_1": (3, 32, 20, [0, 2]),
    "Q5_0": (6, 32, 22, [0]),
    "Q5_1": (7, 32, 24, [0, 2]),
    "Q4_K": (12, 256, 144, [0, 2]),
    "Q5_K": (13, 256, 176, [0, 2]),
    "Q6_K": (14, 256, 210, [208]),
}
RANDOM_BLOCKS = 4  # quantised types; plain types get 64 elements


def random_bytes(name: str) -> bytes:
    """Seeded bytes for `name`, finite everywhere: f16 scales get exponents 10-17 (2^-5..2^2),
    BF16/F32 elements exponents 120-135."""
    type_id, block, size, scale_offsets = RANDOM_TYPES[name]
    count = RANDOM_BLOCKS if block > 1 else 64
    rng = SplitMix64(1000 + type_id)
    data = bytearray(rng.next() & 0xFF for _ in range(count * size))
    for b in range(count):
        base = b * size
        for o in scale_offsets:
            bits = data[base + o] | data[base + o + 1] << 8
            bits = (bits & 0x83FF) | ((10 + ((bits >> 10) & 7)) << 10)
            data[base + o : base + o + 2] = bits.to_bytes(2, "little")
        if name == "BF16":
            bits = int.from_bytes(data[base : base + 2], "little")
            bits = (bits & 0x807F) | ((120 + ((bits >> 7) & 15)) << 7)
            data[base : base + 2] = bits.to_bytes(2, "little")
        if name == "F32":
            bits = int.from_bytes(data[base : base + 4], "little")
            bits = (bits & 0x807FFFFF) | ((120 + ((bits >> 23) & 15)) << 23)
            data[base : base + 4] = bits.to_bytes(4, "little")
    return bytes(data)


def random_blocks() -> None:
    from gguf.constants import GGMLQuantizationType

    for name, (type_id, block, size, _) in RANDOM_TYPES.items():
        raw = np.frombuffer(random_bytes(name), dtype=np.uint8)
        values = np.ascontiguousarray(dequantize(raw, GGMLQuantizationType(type_id)), dtype="<f4").reshape(-1)
        print(f"random {name}\tcount={values.size}\tsha256={hashlib.sha256(values.tobytes()).hexdigest()}")


def main() -> None:
    random_blocks()
    cache = os.environ.get("SHEAF_CACHE", os.path.expanduser("~/.cache/sheaf"))
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    for name in TENSORS:
        t = by_name[name]
        values = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype="<f4")
        shape = [int(d) for d in reversed(t.shape)]  # GGUF lists ne innermost first
        assert values.size == int(np.prod(shape)), (name, values.shape, shape)
        flat = values.reshape(-1)
        as64 = flat.astype(np.float64)
        digest = hashlib.sha256(flat.tobytes()).hexdigest()
        first = ", ".join(repr(float(v)) for v in flat[:4])
        print(f"{name}\t{t.tensor_type.name}\t{shape}\tsum={float(as64.sum())!r}\tsumsq={float((as64 * as64).sum())!r}\tfirst=[{first}]\tsha256={digest}")


if __name__ == "__main__":
    main()
