"""The length report: token lengths of the training texts, and how much max_length cuts."""

from __future__ import annotations

import json

import pytest
from helpers import embedtune
from transformers import AutoTokenizer

from embedtune.data.lengths import Lengths, measure, sample_pairs
from embedtune.data.types import Pair


def test_cut_shares_and_percentiles_follow_their_definitions():
    lengths = Lengths("documents", "backbone.max_length", 10, (4, 8, 12, 16))
    assert lengths.cut_texts == 0.5  # 12 and 16 exceed 10
    assert lengths.cut_tokens == pytest.approx((2 + 6) / 40)  # tokens beyond 10, of all tokens
    assert (
        lengths.describe()
        == "documents: 4 texts, tokens p50 10, p90 14, p99 15, max 16; backbone.max_length=10 cuts 50.0% of them (20.0% of their tokens)"
    )


def test_measure_counts_tokens_with_prompts_special_tokens_and_the_negatives_used(tiny_bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    pairs = [Pair("short query", "a positive document", ("negative one", "negative two")), Pair("another", "doc")]
    queries, documents = measure(tokenizer, pairs, ("query: ", ""), (64, 256), negatives_per_query=1)
    count = lambda text: len(tokenizer(text)["input_ids"])  # noqa: E731 -- [CLS] ... [SEP]
    assert queries.lengths == (count("query: short query"), count("query: another"))
    assert documents.lengths == (count("a positive document"), count("negative one"), count("doc"))  # only the first negative is used
    assert (queries.option, queries.max_length, documents.option, documents.max_length) == (
        "train.query_max_length",
        64,
        "backbone.max_length",
        256,
    )


def test_samples_are_seeded_and_a_stream_gives_its_first_pairs():
    pairs = [Pair(f"q{i}", f"d{i}") for i in range(50)]
    assert sample_pairs(pairs, seed=1, size=10) == sample_pairs(pairs, seed=1, size=10) != sample_pairs(pairs, seed=2, size=10)
    assert sample_pairs(pairs, seed=1, size=100) == pairs
    assert sample_pairs(iter([pairs[:4], pairs[4:8]]), seed=0, size=6) == pairs[:6]


def test_every_training_run_prints_the_length_report_and_warns_when_much_is_cut(tiny_bert_dir, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        "".join(json.dumps({"query": f"question {i}", "positive": " ".join(["word"] * 40) + f" {i}"}) + "\n" for i in range(16))
    )
    result = embedtune("train", "data=files", f"data.train={path}", f"backbone.path={tiny_bert_dir}", "backbone.max_length=16", "negatives.per_query=0",
                       "batch.size=8", "train.max_steps=1", "train.warmup_ratio=0", "eval.before=false", f"output_dir={tmp_path / 'run'}")  # fmt: skip
    assert result.returncode == 0, result.stderr
    err = " ".join(result.stderr.split())
    assert "queries: 16 texts" in err and "train.query_max_length=64 cuts 0.0% of them" in err
    assert (
        "warning: documents: 16 texts" in err and "backbone.max_length=16 cuts 100.0% of them" in err and "raise backbone.max_length" in err
    )
