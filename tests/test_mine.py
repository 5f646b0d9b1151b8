"""Hard-negative mining: every filter removes exactly the candidates it must, on a hand-made
corpus whose cosine scores are set by hand; then the command end to end on a tiny model."""

import json
import math

import pytest
import torch
from helpers import embedtune

from embedtune.data.rows import load_pairs
from embedtune.errors import EmbedtuneError
from embedtune.eval.retrieval import rank
from embedtune.mine.negatives import COUNTS, MiningConfig, mine_negatives, search
from embedtune.mine.pairs import load_corpus


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


def mine(positives=("b", "pos"), positive_score=0.80, **options):
    """Mine for the one query against the corpus stored in a shuffled order (so that ranking,
    not storage order, decides), and return the chosen texts and the counts."""
    order = [5, 0, 9, 3, 7, 10, 1, 4, 8, 2, 6]  # a permutation; the two "g" keep their relative order
    corpus = torch.tensor([unit(CORPUS[i][1]) for i in order])
    texts = [TEXTS[i] for i in order]
    config = MiningConfig(**{"num_negatives": 10, **options})
    mined, counts = mine_negatives(QUERY, torch.tensor([unit(positive_score)]), corpus, texts, [set(positives)], config)
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
    ],
)
def test_mine_command_errors_are_one_line(tiny_bert_dir, pairs_file, tmp_path, args, message):
    base = {"--model": str(tiny_bert_dir), "--data": str(pairs_file), "--out": str(tmp_path / "mined.jsonl")}
    base.update(zip(args[::2], args[1::2]))
    result = embedtune("mine", *(item for pair in base.items() for item in pair))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("embedtune mine: error: ") and message in result.stderr
    assert not (tmp_path / "mined.jsonl").exists()
