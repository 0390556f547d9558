#!/usr/bin/env python3
"""Golden token ids for Sheaf's tokenizer tests, from the HuggingFace `tokenizers` package.

Builds an HF tokenizer.json from the SmolLM2 GGUF's tokenizer metadata (BPE vocab and merges,
control tokens as special added tokens) and prints, for each pre-tokenizer variant, the id count
and digest of wiki.test.raw, one Austen novel and a Unicode stress string, plus short golden
cases. Tests/SheafIOTests/TokenizerTests.swift holds the printed values as constants.

Digest: sha256 of the ids as little-endian uint32, in hex.

Needs `pip install gguf tokenizers` (PyPI). Usage:
  scripts/tokenizer_golden.py                      # all goldens from the GGUF
  scripts/tokenizer_golden.py --tokenizer-json F   # the same texts through F (e.g. the tokenizer.json
                                                   # that Sheaf writes), to compare with the goldens
  scripts/tokenizer_golden.py --spm                # the tiny SentencePiece-style fixture and its ids
"""
import argparse
import hashlib
import json
import os
import struct
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("SHEAF_CACHE", os.path.expanduser("~/.cache/sheaf"))
MODEL = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
DATA = os.environ.get("SHEAF_DATA", os.path.join(ROOT, "..", "shared", "data"))

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Short cases: digits, runs of spaces, newlines, contractions, Unicode, emoji, special tokens.
GOLDEN_CASES = [
    "Hello world",
    "In 1984, 12345 people paid $3.50 each.",
    "a  b   c    d\n\n\ne\t\tf  \n  g",
    "I'm sure they'll say it's what we'd've done. DON'T SHOUT'S",
    "naïve café, Ελληνικά, русский, 日本語のテキスト, 한국어",
    "emoji: 😀👍🏽 and flags 🇫🇷 ZWJ 👩\u200d💻",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "   leading and trailing   ",
    "x<|endoftext|>y <|im_end|>  z",
    "\u00a0nbsp\u2003em-space\u3000ideographic\u2028line",
    "٣٤ ½ Ⅻ ①②",
    "",
]


def unicode_stress():
    """Every 7th scalar up to U+2FFFF (no surrogates), each after a letter or a space, so that
    every character class meets the pre-tokenizer's rules."""
    parts = []
    for i, cp in enumerate(range(0x20, 0x30000, 7)):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        parts.append(("a", " ", "1", "\n", "'")[i % 5] + chr(cp))
    return "".join(parts)


def read_gguf_tokenizer(path):
    from gguf import GGUFReader

    reader = GGUFReader(path)

    def field(name, default=None):
        f = reader.fields.get(name)
        return default if f is None else f.contents()

    return {
        "model": field("tokenizer.ggml.model"),
        "pre": field("tokenizer.ggml.pre"),
        "tokens": field("tokenizer.ggml.tokens"),
        "merges": field("tokenizer.ggml.merges"),
        "types": field("tokenizer.ggml.token_type"),
        "bos": field("tokenizer.ggml.bos_token_id"),
        "eos": field("tokenizer.ggml.eos_token_id"),
    }


def pre_tokenizer_json(variant):
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if variant == "smollm":  # llama.cpp's smollm: every \p{N} alone, then the GPT-2 regex
        return {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level]}
    if variant == "gpt2":
        return byte_level
    if variant == "llama3":
        split = {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False}
        return {"type": "Sequence", "pretokenizers": [split, dict(byte_level, use_regex=False)]}
    raise ValueError(variant)


def byte_level_tokenizer_json(meta, variant):
    tokens, types = meta["tokens"], meta["types"]
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types))
        if ty == 3
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_json(variant),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            # llama.cpp (and HF's Llama-3 tokenizer.json) look a whole pre-token up before merging.
            "ignore_merges": variant == "llama3",
            "vocab": {t: i for i, t in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in meta["merges"]],
        },
    }


def digest(ids):
    return hashlib.sha256(struct.pack("<%dI" % len(ids), *ids)).hexdigest()


def texts():
    with open(os.path.join(DATA, "wikitext-2-raw", "wiki.test.raw"), encoding="utf-8", newline="") as f:
        wiki = f.read()
    austen_dir = os.path.join(DATA, "austen")
    first = sorted(os.listdir(austen_dir))[0]
    with open(os.path.join(austen_dir, first), encoding="utf-8", newline="") as f:
        austen = f.read()
    return [("wiki.test.raw", wiki), ("austen/" + first, austen), ("unicode-stress", unicode_stress())]


def report(tok, label, with_cases):
    print(f"== {label}")
    for name, text in texts():
        ids = tok.encode(text, add_special_tokens=False).ids
        print(f"{name}: count {len(ids)} sha256 {digest(ids)}")
    if with_cases:
        for case in GOLDEN_CASES:
            ids = tok.encode(case, add_special_tokens=False).ids
            print(f"case {json.dumps(case, ensure_ascii=True)} -> {ids}")
            back = tok.decode(ids, skip_special_tokens=False)
            if back != case:
                print(f"  (decode differs: {json.dumps(back, ensure_ascii=True)})")


# A tiny Llama-2/Mistral-style SentencePiece BPE tokenizer: Metaspace pre-tokenizer (▁, prefix on the
# first segment only), byte fallback <0xNN>, unknown token fused, a handful of merges.
def spm_fixture():
    base = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    pieces = ["▁", "t", "h", "e", "a", "c", "s", "o", "n", "l", "w", "r", "d", "i", "é", "▁t", "he", "▁the",
              "at", "▁c", "▁cat", "on", "▁on", "▁s", "▁sat", "▁w", "or", "ld", "▁wor", "▁world", "in"]
    vocab = {t: i for i, t in enumerate(base + pieces)}
    merges = [["▁", "t"], ["h", "e"], ["▁t", "he"], ["a", "t"], ["▁", "c"], ["▁c", "at"], ["o", "n"], ["▁", "on"],
              ["▁", "s"], ["▁s", "at"], ["▁", "w"], ["o", "r"], ["l", "d"], ["▁w", "or"], ["▁wor", "ld"], ["i", "n"]]
    special = lambda i, t: {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                            "normalized": False, "special": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def spm_variants():
    """The fixture and three variations the Swift test builds the same way."""
    base = spm_fixture()
    yield "metaspace first, byte fallback", base
    always = json.loads(json.dumps(base))
    always["pre_tokenizer"].update(prepend_scheme="always", split=True)
    always["model"]["byte_fallback"] = False
    yield "metaspace always + split, no byte fallback (unknown fused)", always
    legacy = json.loads(json.dumps(base))
    legacy["pre_tokenizer"] = None
    legacy["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    yield "legacy Prepend+Replace normalizer", legacy


SPM_CASES = ["the cat sat on the world", "The Cat", "  the  cat ", "café über 😀", "in<s>the</s> cat", "\n", "",
             "<s> the ÜÜ cat"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=MODEL)
    parser.add_argument("--tokenizer-json", help="encode the texts with this tokenizer.json instead")
    parser.add_argument("--spm", action="store_true", help="print the SentencePiece-style fixture and its ids")
    parser.add_argument("--variants", default="smollm,gpt2,llama3")
    args = parser.parse_args()
    from tokenizers import Tokenizer

    if args.spm:
        print(json.dumps(spm_fixture(), ensure_ascii=False))
        for name, fixture in spm_variants():
            print(f"== SentencePiece fixture, {name}")
            tok = Tokenizer.from_str(json.dumps(fixture))
            for case in SPM_CASES:
                enc = tok.encode(case, add_special_tokens=True)
                plain = tok.encode(case, add_special_tokens=False)
                back = tok.decode(plain.ids, skip_special_tokens=False)
                print(f"case {json.dumps(case, ensure_ascii=True)} -> {plain.ids} with BOS {enc.ids} tokens {plain.tokens}"
                      f" decode {json.dumps(back, ensure_ascii=True)}")
        return
    if args.tokenizer_json:
        report(Tokenizer.from_file(args.tokenizer_json), args.tokenizer_json, with_cases=True)
        return
    if not os.path.exists(args.gguf):
        sys.exit(f"tokenizer_golden: {args.gguf} is missing: run scripts/fixtures")
    meta = read_gguf_tokenizer(args.gguf)
    print(f"gguf: model {meta['model']} pre {meta['pre']} tokens {len(meta['tokens'])} merges {len(meta['merges'])}")
    for variant in args.variants.split(","):
        spec = byte_level_tokenizer_json(meta, variant)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False)
        try:
            report(Tokenizer.from_file(f.name), f"pre-tokenizer {variant}", with_cases=True)
        finally:
            os.unlink(f.name)


if __name__ == "__main__":
    main()
