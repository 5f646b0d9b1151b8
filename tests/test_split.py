"""Holding out a retrieval set's queries: `embedtune data --beir`."""

import pytest

from embedtune.cli import main
from embedtune.data.held_out import load_beir, write_beir
from embedtune.data.rows import load_pairs
from embedtune.data.split import split_queries
from embedtune.data.types import RetrievalSet
from embedtune.errors import DataError


@pytest.fixture
def benchmark():
    """Ten queries; query i is judged relevant to documents i and (for even i) i + 10."""
    corpus = {f"d{i}": f"document {i}" for i in range(20)}
    qrels = {f"q{i}": {f"d{i}": 1, **({f"d{i + 10}": 2} if i % 2 == 0 else {})} for i in range(10)}
    return RetrievalSet("toy/test", {f"q{i}": f"query {i}" for i in range(10)}, corpus, qrels)


def test_split_holds_out_whole_queries_and_pairs_every_judgement_of_the_rest(benchmark):
    pairs, held_out = split_queries(benchmark, 0.3, seed=1)
    assert len(held_out.queries) == 3 and held_out.corpus == benchmark.corpus
    assert held_out.qrels == {query_id: benchmark.qrels[query_id] for query_id in held_out.queries}
    train_ids = sorted(set(benchmark.queries) - set(held_out.queries))
    expected = [(f"query {q[1:]}", benchmark.corpus[d]) for q in train_ids for d in sorted(benchmark.qrels[q])]
    assert [(pair.query, pair.positive) for pair in pairs] == expected
    assert not {pair.query for pair in pairs} & set(held_out.queries.values())
    assert split_queries(benchmark, 0.3, seed=1)[1].queries == held_out.queries  # seeded
    assert split_queries(benchmark, 0.3, seed=2)[1].queries != held_out.queries


def test_split_keeps_at_least_one_query_on_each_side(benchmark):
    assert len(split_queries(benchmark, 0.01)[1].queries) == 1
    assert len(split_queries(benchmark, 0.99)[1].queries) == 9
    with pytest.raises(DataError, match=r"eval fraction must be in \(0, 1\), got 1"):
        split_queries(benchmark, 1)


def test_data_command_splits_a_beir_folder(benchmark, tmp_path, capsys):
    write_beir(benchmark, tmp_path / "beir", split="train")
    main(["data", "--beir", str(tmp_path / "beir"), "--split", "train", "--eval-fraction", "0.5", "--out", str(tmp_path / "out")])
    assert "held-out queries over 20 documents" in capsys.readouterr().out
    pairs, held_out = load_pairs(str(tmp_path / "out" / "train.jsonl")), load_beir(str(tmp_path / "out" / "eval"))
    assert len(held_out.queries) == 5 and len(held_out.corpus) == 20
    assert {pair.query for pair in pairs}.isdisjoint(held_out.queries.values()) and len({pair.query for pair in pairs}) == 5
    with pytest.raises(SystemExit):
        main(["data", "--beir", str(tmp_path / "beir"), "--out", str(tmp_path / "again")])  # no qrels/test.tsv
    assert "qrels/test.tsv: no such file (splits here: train)" in capsys.readouterr().err
