"""What several test files share: the `embedtune` command run as a user runs it, for the tests that
check it end to end, and the pieces of the tiny random decoders built in code."""

from __future__ import annotations

import os
import subprocess
import sys


def _command(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "embedtune", *args]


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "500"}  # offline; rich wraps no line


def embedtune(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m embedtune ARGS`` to completion, output captured as text."""
    return subprocess.run(_command(args), capture_output=True, text=True, cwd=cwd, env=_environment(), timeout=timeout)


def start_embedtune(*args: str) -> subprocess.Popen:
    """``python -m embedtune ARGS`` in the background, for tests that signal or kill it."""
    return subprocess.Popen(_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment())


# The tiny random decoders' shape (grouped-query attention, like Qwen3 and Llama): 2 layers, 32 dims.
TINY_DECODER_SHAPE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=64,
    max_position_embeddings=512,
)


def chatml_bpe_tokenizer(texts: list[str]):
    """A byte-level BPE `tokenizers.Tokenizer` of 400 entries trained on ``texts``, with Qwen's
    special tokens (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer
