"""Hard-negative mining: every filter removes exactly the candidates it must, on a hand-made
corpus whose cosine scores are set by hand, whatever ranked the candidates; BM25 against its
formula and reciprocal rank fusion against its own; then the command end to end on a tiny model."""

import json
import math
import os
import sys

import numpy as np
import pytest
import torch
from helpers import embedtune

from embedtune.data.rows import load_pairs
from embedtune.errors import EmbedtuneError
from embedtune.eval.retrieval import rank
from embedtune.mine.negatives import COUNTS, MiningConfig, mine_negatives, search
from embedtune.mine.pairs import load_corpus
from embedtune.mine.rankings import best_indices, bm25_rankings, reciprocal_rank_fusion, require_bm25s


def unit(score: float) -> list[float]:
    """A unit vector whose cosine with the query (1, 0) is exactly ``score``."""
    return [score, math.sqrt(1 - score**2)]


# Texts and scores against the query, listed in the order the search ranks them (rank 0 first).
# "b" is another positive of the same query text, "pos" the row's own positive (score 0.80),
# and "g" appears twice (identical text and embedding: a tie, kept in corpus order).
CORPUS = [
    ("a", 0.95), ("b", 0.90), ("c", 0.85), ("pos", 0.80), ("d", 0.78), ("e", 0.74), ("f", 0.70), ("g", 0.60), ("g", 0.60), ("h", 0.50), ("i", 0.40),
]  # fmt: skip
TEXTS = [text for text, _ in CORPUS]
QUERY = torch.tensor([[1.0, 0.0]])


def mine(positives=("b", "pos"), positive_score=0.80, ranking=None, **options):
    """Mine for the one query against the corpus stored in a shuffled order (so that ranking,
    not storage order, decides), and return the chosen texts and the counts. ``ranking`` (positions
    in CORPUS, best first) stands for a BM25 or fused ranking; None: the cosine search ranks."""
    order = [5, 0, 9, 3, 7, 10, 1, 4, 8, 2, 6]  # a permutation; the two "g" keep their relative order
    corpus = torch.tensor([unit(CORPUS[i][1]) for i in order])
    texts = [TEXTS[i] for i in order]
    config = MiningConfig(**{"num_negatives": 10, **options})
    rankings = None if ranking is None else [[order.index(i) for i in ranking]]
    mined, counts = mine_negatives(QUERY, torch.tensor([unit(positive_score)]), corpus, texts, [set(positives)], config, rankings)
    return [texts[i] for i in mined[0].indices], counts, mined[0]


def removed(counts):
    return {name: n for name, n in counts.items() if name not in ("candidates", "eligible") and n}


def test_default_drops_the_query_positives_what_beats_the_positive_and_duplicates():
    chosen, counts, result = mine()
    assert chosen == ["d", "e", "f", "g", "h", "i"]
    assert list(counts) == list(COUNTS)
    assert counts["candidates"] == 11 and counts["eligible"] == 6
    assert removed(counts) == {"exact_positive": 2, "above_positive_margin": 2, "duplicate": 1}  # b, pos | a, c | g
    assert result.positive_score == pytest.approx(0.80)
    assert result.scores == pytest.approx([0.78, 0.74, 0.70, 0.60, 0.50, 0.40])


def test_max_score_is_applied_before_the_positive_aware_filter():
    chosen, counts, _ = mine(max_score=0.92)
    assert chosen == ["d", "e", "f", "g", "h", "i"]
    assert removed(counts) == {"exact_positive": 2, "above_max_score": 1, "above_positive_margin": 1, "duplicate": 1}  # a | c


def test_max_score_alone_when_the_positive_filter_is_off():
    chosen, counts, _ = mine(max_score=0.82, margin=-math.inf)
    assert chosen == ["d", "e", "f", "g", "h", "i"]
    assert removed(counts) == {"exact_positive": 2, "above_max_score": 2, "duplicate": 1}  # a, c


def test_no_filter_but_exact_positives_and_duplicates():
    chosen, counts, _ = mine(margin=-math.inf)
    assert chosen == ["a", "c", "d", "e", "f", "g", "h", "i"]
    assert removed(counts) == {"exact_positive": 2, "duplicate": 1}


@pytest.mark.parametrize(
    ("options", "first", "dropped"),
    [
        ({"margin": 0.05}, "e", 3),  # ceiling 0.80 - 0.05 = 0.75: a, c and d (0.78) go
        ({"relative_margin": 0.05}, "e", 3),  # ceiling 0.80 * 0.95 = 0.76: a, c, d
        ({"relative_margin": 0.1}, "f", 4),  # ceiling 0.72: e (0.74) goes too
        ({"margin": 0.05, "relative_margin": 0.1}, "f", 4),  # both apply: the lower ceiling wins
        ({"margin": -0.1}, "c", 1),  # ceiling 0.90: a negative margin lets c (0.85) beat the positive; a goes
    ],
)
def test_positive_aware_margins(options, first, dropped):
    chosen, counts, _ = mine(**options)
    assert chosen[0] == first
    assert counts["above_positive_margin"] == dropped
    assert counts["eligible"] == 11 - 2 - 1 - dropped


def test_only_the_query_own_positives_are_exact_positives():
    chosen, counts, result = mine(positives=("a",), positive_score=0.95)
    assert chosen == ["b", "c", "pos", "d", "e", "f", "g", "h", "i"]
    assert removed(counts) == {"exact_positive": 1, "duplicate": 1}


@pytest.mark.parametrize(
    ("window", "chosen", "counts"),
    [
        ((4, 8), ["d", "e", "f", "g"], {}),
        ((3, 9), ["d", "e", "f", "g"], {"exact_positive": 1, "duplicate": 1}),  # pos, the second g
        ((0, 3), [], {"exact_positive": 1, "above_positive_margin": 2}),
        ((9, 100), ["h", "i"], {}),  # range_max beyond the corpus
        ((20, 30), [], {}),
    ],
)
def test_rank_window(window, chosen, counts):
    got, got_counts, _ = mine(range_min=window[0], range_max=window[1])
    assert got == chosen
    assert removed(got_counts) == counts
    assert got_counts["candidates"] == max(0, min(window[1], 11) - window[0])


def test_top_sampling_takes_the_best_and_random_sampling_a_seeded_subset_in_rank_order():
    assert mine(num_negatives=3)[0] == ["d", "e", "f"]
    eligible = ["d", "e", "f", "g", "h", "i"]
    draws = {tuple(mine(num_negatives=3, sampling="random", seed=seed)[0]) for seed in range(20)}
    assert all(len(draw) == 3 and list(draw) == [t for t in eligible if t in draw] for draw in draws)
    assert len(draws) > 1
    assert mine(num_negatives=3, sampling="random", seed=7)[0] == mine(num_negatives=3, sampling="random", seed=7)[0]
    assert mine(num_negatives=3, sampling="random")[1] == mine(num_negatives=3)[1]  # counts do not depend on sampling


BY_COSINE = list(range(len(CORPUS)))  # CORPUS is listed in cosine order
REVERSED = BY_COSINE[::-1]


@pytest.mark.parametrize(
    "options",
    [{}, {"max_score": 0.92}, {"margin": 0.05}, {"relative_margin": 0.1}, {"margin": -math.inf}, {"range_min": 3, "range_max": 9}],
)
def test_a_given_ranking_in_cosine_order_mines_exactly_what_the_cosine_search_does(options):
    assert mine(ranking=BY_COSINE, **options) == mine(**options)


def test_a_given_ranking_picks_the_window_and_the_order_while_the_filters_still_judge_by_cosine():
    chosen, counts, result = mine(ranking=REVERSED)
    assert chosen == ["i", "h", "g", "f", "e", "d"]  # the same survivors as by cosine, in the ranking's order
    assert counts == mine()[1]
    assert result.scores == pytest.approx([0.40, 0.50, 0.60, 0.70, 0.74, 0.78])  # cosines, not ranks
    chosen, counts, _ = mine(ranking=REVERSED, range_min=1, range_max=9, margin=0.05)  # h, g, g, f, e, d, pos, c
    assert chosen == ["h", "g", "f", "e"]
    assert removed(counts) == {"exact_positive": 1, "above_positive_margin": 2, "duplicate": 1}  # pos | d (0.78), c
    assert mine(ranking=[9, 2, 3])[0] == ["h"]  # a ranking may list fewer documents than the corpus holds
    assert mine(ranking=[])[1]["candidates"] == 0


def test_chunked_queries_give_the_same_result():
    torch.manual_seed(0)
    queries, corpus = torch.nn.functional.normalize(torch.randn(9, 8), dim=1), torch.nn.functional.normalize(torch.randn(40, 8), dim=1)
    texts = [f"doc {i}" for i in range(40)]
    positives = [{texts[i]} for i in range(9)]
    whole = mine_negatives(queries, corpus[:9], corpus, texts, positives, MiningConfig(range_max=30))
    chunked = mine_negatives(queries, corpus[:9], corpus, texts, positives, MiningConfig(range_max=30, chunk_size=2))
    assert whole[1] == chunked[1]
    assert [r.indices for r in whole[0]] == [r.indices for r in chunked[0]]  # scores may differ in the last float bits
    assert [s for r in whole[0] for s in r.scores] == pytest.approx([s for r in chunked[0] for s in r.scores], abs=1e-6)
    assert all(texts[q] not in [texts[i] for i in result.indices] for q, result in enumerate(whole[0]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_negatives": 0}, "--num-negatives must be >= 1"),
        ({"range_min": 5, "range_max": 5}, "--range-min < --range-max"),
        ({"range_min": -1}, "--range-min < --range-max"),
        ({"sampling": "best"}, "--sampling must be one of top, random"),
        ({"relative_margin": 1.0}, "--relative-margin must be in [0, 1)"),
        ({"margin": math.nan}, "--margin must be a number"),
    ],
)
def test_bad_config_is_one_clear_error(options, message):
    with pytest.raises(EmbedtuneError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        MiningConfig(**options)


def test_rank_can_return_scores():
    torch.manual_seed(0)
    queries, corpus = torch.randn(5, 4), torch.randn(12, 4)
    indices, scores = rank(queries, corpus, top_k=6, chunk_size=2, return_scores=True)
    assert torch.equal(indices, rank(queries, corpus, top_k=6))
    assert torch.allclose(scores, (queries @ corpus.T).gather(1, indices))
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


def test_faiss_and_torch_search_agree():
    pytest.importorskip("faiss")
    torch.manual_seed(0)
    queries, corpus = torch.nn.functional.normalize(torch.randn(50, 16), dim=1), torch.nn.functional.normalize(torch.randn(300, 16), dim=1)
    corpus[7] = corpus[3]  # an exact tie: both backends rank the lower index first
    queries[0] = corpus[3]
    with_faiss = [torch.cat(parts) for parts in zip(*search(queries, corpus, 20, chunk_size=16, use_faiss=True))]
    with_torch = [torch.cat(parts) for parts in zip(*search(queries, corpus, 20, chunk_size=16, use_faiss=False))]
    assert torch.equal(with_faiss[0], with_torch[0])
    assert torch.allclose(with_faiss[1], with_torch[1], atol=1e-5)
    assert with_torch[0][0, :2].tolist() == [3, 7]


# --- BM25 and reciprocal rank fusion -----------------------------------------------------------

# No English stop word and no one-letter word, so that the words below are exactly BM25's terms.
BM25_CORPUS = [
    "protein folding kinetics",
    "protein protein interaction networks",
    "folding paper cranes",
    "enzyme kinetics measured across living cells",
    "gene expression networks cells",
    "protein folding kinetics",  # a copy of document 0: the same score, ranked after it
]


def bm25_by_hand(query: str, corpus: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """The Lucene variant of BM25 that bm25s documents, term by term:
    sum_t log(1 + (N - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len / avg_len))."""
    documents = [text.split() for text in corpus]
    average_length = np.mean([len(words) for words in documents])
    scores = np.zeros(len(documents))
    for term in set(query.split()):
        df = sum(term in words for words in documents)
        idf = math.log(1 + (len(documents) - df + 0.5) / (df + 0.5))
        for d, words in enumerate(documents):
            tf = words.count(term)
            scores[d] += idf * tf / (tf + k1 * (1 - b + b * len(words) / average_length))
    return scores


def test_bm25_ranks_as_its_formula_computed_by_hand():
    pytest.importorskip("bm25s")
    queries = ["protein folding", "cells networks", "enzyme", "paper", "unknown words only"]
    rankings = bm25_rankings(queries, BM25_CORPUS, top_k=10)
    for query, ranking in zip(queries, rankings):
        scores = bm25_by_hand(query, BM25_CORPUS)
        expected = [int(d) for d in np.lexsort((np.arange(len(scores)), -scores)) if scores[d] > 0]
        assert ranking == expected, query
    assert rankings[0] == [0, 5, 1, 2]  # one of each word beats "protein" twice: term frequency saturates
    assert rankings[3:] == [[2], []]  # documents with no word of the query are not ranked
    assert bm25_rankings(queries[:1], BM25_CORPUS, top_k=2) == [[0, 5]]  # the cut keeps ties in index order
    assert bm25_rankings(["The PROTEIN, of the cells!"], BM25_CORPUS, top_k=10) == bm25_rankings(
        ["protein cells"], BM25_CORPUS, top_k=10
    )  # lowercased, stop words out


@pytest.mark.parametrize("top_k", [1, 2, 3, 4, 5, 6, 9])
def test_best_indices_keeps_ties_in_index_order_across_the_cut(top_k):
    scores = np.array([0.5, 2.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.5])
    assert best_indices(scores, top_k) == [1, 3, 6, 2, 5, 0, 7][:top_k]  # never the zero score


def test_reciprocal_rank_fusion_follows_its_formula():
    by_cosine, by_words = [0, 1, 2, 3], [3, 2, 5]
    fused = {0: 1 / 61, 1: 1 / 62, 2: 1 / 63 + 1 / 62, 3: 1 / 64 + 1 / 61, 5: 1 / 63}  # sum of 1 / (60 + rank), ranks from 1
    assert reciprocal_rank_fusion([by_cosine, by_words]) == sorted(fused, key=fused.get, reverse=True) == [3, 2, 0, 1, 5]
    first, second = [0, 1, 2, 3, 4], [5, 1, 6, 7, 0]  # 0 at ranks 1 and 5, 1 at ranks 2 and 2
    assert reciprocal_rank_fusion([first, second]) == [1, 0, 5, 2, 6, 3, 7, 4]  # 2/62 > 1/61 + 1/65; then ties by index
    assert reciprocal_rank_fusion([first, second], k=0) == [0, 1, 5, 2, 6, 3, 7, 4]  # 1 + 1/5 > 2/2: k is what flattens the top
    assert reciprocal_rank_fusion([[4, 7], [7, 4]]) == [4, 7]  # equal sums: ties by index
    assert reciprocal_rank_fusion([[2, 0], []]) == [2, 0]


def test_a_missing_bm25s_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm25s", None)  # `import bm25s` now raises ImportError
    with pytest.raises(EmbedtuneError, match=r"need the bm25s package .*: pip install 'embedtune\[bm25\]'"):
        require_bm25s()


def test_load_corpus_joins_beir_titles_and_reads_other_columns(tmp_path):
    beir = tmp_path / "corpus.jsonl"
    beir.write_text('{"_id": "1", "title": "Sorting", "text": "sorted(xs) returns a list"}\n{"_id": "2", "title": "", "text": "len(xs)"}\n')
    assert load_corpus(str(beir)) == ["Sorting sorted(xs) returns a list", "len(xs)"]
    csv_path = tmp_path / "docs.csv"
    csv_path.write_text("id,body\n1,first doc\n2,second doc\n")
    assert load_corpus(str(csv_path), "body") == ["first doc", "second doc"]
    with pytest.raises(EmbedtuneError, match="docs.csv:2: missing column 'text'"):
        load_corpus(str(csv_path))


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def pairs_file(tmp_path):
    """12 toy pairs; "what is item 0" has two positives, so neither may be the other's negative."""
    rows = [{"query": f"what is item {i}", "positive": f"item {i} is a thing number {i}"} for i in range(12)]
    rows.append({"query": "what is item 0", "positive": "item zero, also known as the first item"})
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_mine_command_writes_a_training_file(tiny_bert_dir, pairs_file, tmp_path):
    out = tmp_path / "mined.jsonl"
    result = embedtune(
        "mine", "--model", str(tiny_bert_dir), "--data", str(pairs_file), "--out", str(out), "--num-negatives", "3", "--margin=-inf"
    )
    assert result.returncode == 0, result.stderr
    assert "removed: a positive of the query" in result.stdout and "negatives per query" in result.stdout
    pairs = load_pairs(str(pairs_file))
    positives_of = {pair.query: {p.positive for p in pairs if p.query == pair.query} for pair in pairs}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["query"], row["positive"]) for row in rows] == [(pair.query, pair.positive) for pair in pairs]
    for row in rows:
        assert len(row["negatives"]) == 3  # 12 other documents, margin off: always enough
        assert not positives_of[row["query"]] & set(row["negatives"])
        assert len(row["negative_scores"]) == 3 and row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
        assert isinstance(row["positive_score"], float)
    mined = load_pairs(str(out))  # what `embedtune train data=files` reads, teacher scores included
    assert [pair.negatives for pair in mined] == [tuple(row["negatives"]) for row in rows]
    assert [pair.teacher_scores for pair in mined] == [(row["positive_score"], *row["negative_scores"]) for row in rows]


def test_mine_command_with_a_beir_corpus_and_filters(tiny_bert_dir, pairs_file, tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    documents = [{"_id": str(i), "title": f"item {i}", "text": f"is a thing number {i}"} for i in range(12)]  # joined: the positives
    documents += [{"_id": f"x{i}", "title": "", "text": f"some other text {i % 3}"} for i in range(6)]  # each text twice
    corpus.write_text("".join(json.dumps(d) + "\n" for d in documents))
    out = tmp_path / "mined.jsonl"
    args = ["--model", str(tiny_bert_dir), "--data", str(pairs_file), "--corpus", str(corpus), "--out", str(out)]
    result = embedtune(
        "mine", *args, "--num-negatives", "2", "--range-min", "1", "--sampling", "random", "--relative-margin", "0.05", "--drop-short"
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert 0 < len(rows) <= 13
    for row in rows:
        assert len(row["negatives"]) == 2 and len(set(row["negatives"])) == 2 and row["positive"] not in row["negatives"]
        ceiling = min(row["positive_score"], row["positive_score"] * 0.95)
        assert all(score <= ceiling + 1e-6 for score in row["negative_scores"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--range-min", "5", "--range-max", "5"], "need 0 <= --range-min < --range-max, got 5 and 5"),
        (["--out", "mined.csv"], "--out must be a .jsonl file"),
        (["--corpus", "missing.jsonl"], "missing.jsonl: no such file"),
        (["--max-length", "0"], "--max-length must be >= 1, got 0"),
    ],
)
def test_mine_command_errors_are_one_line(tiny_bert_dir, pairs_file, tmp_path, args, message):
    base = {"--model": str(tiny_bert_dir), "--data": str(pairs_file), "--out": str(tmp_path / "mined.jsonl")}
    base.update(zip(args[::2], args[1::2]))
    result = embedtune("mine", *(item for pair in base.items() for item in pair))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("embedtune mine: error: ") and message in result.stderr
    assert not (tmp_path / "mined.jsonl").exists()


def test_mine_command_max_length_is_the_model_cut_at_that_many_tokens(tiny_bert_dir, pairs_file, tmp_path):
    """--max-length 4 scores texts as a model loaded with max_length=4 embeds them (not the saved length)."""
    from embedtune.model import load_embedder

    out = tmp_path / "mined.jsonl"
    args = ["--model", str(tiny_bert_dir), "--data", str(pairs_file), "--out", str(out), "--num-negatives", "1", "--margin=-inf"]
    assert embedtune("mine", *args, "--max-length", "4").returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for max_length in (4, None):
        model = load_embedder(str(tiny_bert_dir), max_length=max_length)
        queries, positives = (model.encode([row[column] for row in rows]) for column in ("query", "positive"))
        cosines = (queries * positives).sum(-1).tolist()
        matches = all(abs(row["positive_score"] - cosine) < 1e-5 for row, cosine in zip(rows, cosines))
        assert matches == (max_length == 4)


@pytest.mark.parametrize("method", ["bm25", "hybrid"])
def test_mine_command_ranks_by_bm25_or_the_fusion_and_scores_by_cosine(tiny_bert_dir, pairs_file, tmp_path, method):
    pytest.importorskip("bm25s")
    from embedtune.model import load_embedder

    out = tmp_path / "mined.jsonl"
    args = ["--model", str(tiny_bert_dir), "--data", str(pairs_file), "--out", str(out), "--method", method]
    result = embedtune("mine", *args, "--num-negatives", "2", "--range-max", "4", "--margin=-inf")
    assert result.returncode == 0, result.stderr
    assert f"candidates (ranks 0-3 by {method})" in result.stdout and "removed: a positive of the query" in result.stdout
    pairs = load_pairs(str(pairs_file))
    corpus = list(dict.fromkeys(pair.positive for pair in pairs))
    queries = list(dict.fromkeys(pair.query for pair in pairs))
    model = load_embedder(str(tiny_bert_dir))
    query_embeddings, corpus_embeddings = model.encode(queries, "query", 8), model.encode(corpus, "document", 8)
    by_words = dict(zip(queries, bm25_rankings(queries, corpus, 4)))
    by_cosine = dict(zip(queries, rank(query_embeddings, corpus_embeddings, 4).tolist()))
    for row in (json.loads(line) for line in out.read_text().splitlines()):
        if method == "bm25":
            ranking = by_words[row["query"]]
        else:
            ranking = reciprocal_rank_fusion([by_cosine[row["query"]], by_words[row["query"]]])[:4]
        expected = [corpus[i] for i in ranking if corpus[i] not in {p.positive for p in pairs if p.query == row["query"]}][:2]
        assert row["negatives"] == expected
        cosines = corpus_embeddings[[corpus.index(text) for text in row["negatives"]]] @ query_embeddings[queries.index(row["query"])]
        assert row["negative_scores"] == pytest.approx(cosines.tolist(), abs=1e-4)  # the model's cosines, not BM25's


def test_mine_command_without_bm25s_says_how_to_install_it_before_loading_anything(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "bm25s"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'bm25s'\")\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")])))
    out = tmp_path / "mined.jsonl"
    result = embedtune(
        "mine", "--model", str(tmp_path / "no-model"), "--data", str(tmp_path / "no-data.jsonl"), "--out", str(out), "--method", "bm25"
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("embedtune mine: error: --method bm25 and hybrid need the bm25s package")
    assert "pip install 'embedtune[bm25]'" in result.stderr and not out.exists()


def test_mine_command_dtype_scores_as_the_model_loaded_in_that_dtype(tiny_bert_dir, pairs_file, tmp_path):
    """--dtype bfloat16 scores texts as a model whose weights were loaded in bfloat16 (not float32's)."""
    from embedtune.model import load_embedder

    out = tmp_path / "mined.jsonl"
    args = ["--model", str(tiny_bert_dir), "--data", str(pairs_file), "--out", str(out), "--num-negatives", "1", "--margin=-inf"]
    assert embedtune("mine", *args, "--dtype", "bfloat16").returncode == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    for dtype in ("bfloat16", "float32"):
        model = load_embedder(str(tiny_bert_dir), dtype=dtype)
        queries, positives = (model.encode([row[column] for row in rows]) for column in ("query", "positive"))
        cosines = (queries * positives).sum(-1).tolist()
        matches = all(abs(row["positive_score"] - cosine) < 1e-5 for row, cosine in zip(rows, cosines))
        assert matches == (dtype == "bfloat16")
