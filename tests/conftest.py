"""Shared fixtures: tiny models written to disk in code (no downloads), paths to shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import TINY_DECODER_SHAPE, chatml_bpe_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> str:
    from embedtune.model import resolve_model_path

    return resolve_model_path("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer, 32-dim BERT with MiniLM's real tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def minilm_2layer_dir(tmp_path_factory) -> Path:
    """The real all-MiniLM-L6-v2 weights cut to their first 2 layers: real, 3x cheaper."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("minilm-2layer")
    AutoModel.from_pretrained(minilm_path(), num_hidden_layers=2).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path()).save_pretrained(folder)
    return folder


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present (it is development material, not part of a clone)")
    return SHARED_DATA


# Texts the tiny decoders' tokenizers are trained on (and tests embed): every letter, digit and
# the punctuation of the instruction templates, so nothing falls back to an unknown token.
DECODER_CORPUS = [
    "a short text",
    "a considerably longer text that needs more tokens than the other ones do",
    "mid length text here",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    "query: passage: ",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,:;!?'\"()[]{}-_=+*/\\<>\n",
]


def _save_tokenizer(tokenizer, folder: Path, **config) -> int:
    """Save a `tokenizers.Tokenizer` as a transformers tokenizer folder, then set the entries a
    real model's tokenizer_config.json has (its class, BOS/EOS flags, padding side). Returns the
    vocabulary size."""
    import json

    from transformers import PreTrainedTokenizerFast

    special = {key: config.pop(key) for key in ("bos_token", "eos_token", "unk_token", "pad_token") if key in config}
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, **special).save_pretrained(folder)
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}, indent=2))
    return tokenizer.get_vocab_size()


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A random 2-layer Qwen3 (hidden 32, 4 heads, 2 KV heads, head_dim 8) with a byte-level BPE
    tokenizer trained in code, loaded as Qwen2Tokenizer like the real one: no BOS, appends
    nothing, ``<|endoftext|>`` is both EOS and pad."""
    from transformers import Qwen3Config, Qwen3Model

    folder = tmp_path_factory.mktemp("tiny-qwen3")
    tokenizer = chatml_bpe_tokenizer(DECODER_CORPUS)
    vocab_size = _save_tokenizer(tokenizer, folder, eos_token="<|endoftext|>", pad_token="<|endoftext|>", tokenizer_class="Qwen2Tokenizer")
    config = Qwen3Config(vocab_size=vocab_size, **TINY_DECODER_SHAPE)
    torch.manual_seed(0)
    Qwen3Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a Metaspace BPE tokenizer trained in code and configured like
    Llama 2's: BOS ``<s>`` prepended, no EOS appended, no pad token, left padding."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer.train_from_iterator(
        DECODER_CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    vocab_size = _save_tokenizer(
        tokenizer,
        folder,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        tokenizer_class="LlamaTokenizer",
        add_bos_token=True,
        add_eos_token=False,
        padding_side="left",
    )
    config = LlamaConfig(vocab_size=vocab_size, **TINY_DECODER_SHAPE)
    torch.manual_seed(0)
    LlamaModel(config).save_pretrained(folder)
    return folder
