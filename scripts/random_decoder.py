"""Randomly initialised Qwen3 decoders with the all-MiniLM-L6-v2 tokenizer, built in code (no
weights to download): the shape the GPU check, the NaN bisection and the `gpu-decoder` bench use.

    python scripts/random_decoder.py OUT_DIR                   # Qwen3-0.6B shape (~2.4 GB as float32)
    python scripts/random_decoder.py --size tiny OUT_DIR       # 2 layers, hidden 64: seconds on a CPU

Writes a Hugging Face model folder (config, weights, tokenizer) that ``backbone=decoder
backbone.path=OUT_DIR`` trains: last-token pooling over BERT's closing [SEP], left padding.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

from embedtune.model import resolve_model_path

TOKENIZER = "all-MiniLM-L6-v2"  # vocabulary 30,522: Qwen3's own 151,669 would need its tokenizer files
# The transformer shape of Qwen3-0.6B / Qwen3-Embedding-0.6B (its config.json), and a tiny one.
SIZES = {
    "qwen3-0.6b": {
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
    },
    "tiny": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
    },
}


def tokenizer():
    """The all-MiniLM-L6-v2 tokenizer (the packaged model, or the float16 stand-in on a GPU machine)."""
    return AutoTokenizer.from_pretrained(resolve_model_path(TOKENIZER))


def build(size: str, vocab_size: int, device: str = "cpu", seed: int = 0) -> Qwen3Model:
    """A Qwen3 backbone of the named size with random float32 weights, SDPA attention, no KV
    cache; initialised on ``device`` (a 0.6B model initialises in a second on a GPU)."""
    config = Qwen3Config(vocab_size=vocab_size, max_position_embeddings=4096, use_cache=False, **SIZES[size])
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        return Qwen3Model(config)


def save(size: str, folder: Path, device: str = "cpu") -> Path:
    """Write a random decoder of ``size`` with the MiniLM tokenizer to ``folder``."""
    tok = tokenizer()
    build(size, len(tok), device).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the model folder to write")
    parser.add_argument("--size", choices=sorted(SIZES), default="qwen3-0.6b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to initialise the weights")
    options = parser.parse_args()
    print(save(options.size, options.out, options.device))


if __name__ == "__main__":
    main()
