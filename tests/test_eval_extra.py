"""MAP@100, STS correlations and loaders, data-set detection and `embedtune eval` over several
data sets and Matryoshka sizes: against values worked out by hand."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import embedtune

from embedtune.cli import main
from embedtune.data.held_out import write_beir
from embedtune.data.sts_files import is_sts_file, load_sts
from embedtune.data.types import RetrievalSet
from embedtune.errors import DataError
from embedtune.eval.benchmarks import load_benchmark, positive_pairs
from embedtune.eval.metrics import map_at_k, retrieval_metrics
from embedtune.eval.retrieval import rank, truncate

# --- MAP ----------------------------------------------------------------------------------
from embedtune.eval.sts import average_ranks, evaluate_sts, pearson, spearman


def test_map_divides_by_all_relevant_documents_found_or_not():
    # relevant a (rank 1), b (rank 3), c (rank 5); d never retrieved: AP = (1/1 + 2/3 + 3/5) / 4
    ranking = ["a", "x", "b", "y", "c"]
    relevant = {"a": 1, "b": 2, "c": 1, "d": 1}
    assert map_at_k(ranking, relevant, 100) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    assert map_at_k(ranking, relevant, 3) == pytest.approx((1 + 2 / 3) / 4)  # c falls past the cut
    assert map_at_k(["x", "y"], relevant, 100) == 0.0


def test_map_with_ties_broken_by_corpus_order():
    query = torch.tensor([[1.0, 0.0]])
    corpus = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])  # d1 and d2 tie at cosine 1
    ranking = [f"d{i}" for i in rank(query, corpus, top_k=4)[0].tolist()]
    assert ranking == ["d1", "d2", "d3", "d0"]
    # relevant d2 (rank 2) and d3 (rank 3): AP = (1/2 + 2/3) / 2
    assert map_at_k(ranking, {"d2": 1, "d3": 1}, 100) == pytest.approx(7 / 12)


def test_retrieval_metrics_report_map_at_100():
    metrics = retrieval_metrics({"q1": ["x", "a"], "q2": ["b"]}, {"q1": {"a": 1}, "q2": {"b": 1}})
    assert metrics["map@100"] == pytest.approx((1 / 2 + 1) / 2)


def test_truncate_keeps_a_renormalised_prefix_and_leaves_full_size_alone():
    embeddings = torch.tensor([[0.6, 0.0, 0.8], [0.0, 0.6, 0.8]])
    assert torch.allclose(truncate(embeddings, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert truncate(embeddings, 3) is embeddings


# --- STS statistics -----------------------------------------------------------------------


def test_average_ranks_share_the_mean_rank_of_ties():
    assert average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3]).tolist() == [3, 1, 3, 3]  # ranks 2, 3, 4 -> 3 each


def test_spearman_and_pearson_by_hand_with_ties():
    # ranks of x: [1, 2.5, 2.5, 4], of y: [1, 3, 2, 4]; centred: [-1.5, 0, 0, 1.5] and [-1.5, .5, -.5, 1.5]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # centred x [-1, 0, 1], y [-7/3, -1/3, 8/3]: covariance sum 5, squares 2 and 38/3
    assert pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(5 / math.sqrt(2 * 38 / 3))
    assert spearman([1, 2, 3], [10, 100, 1000]) == pytest.approx(1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))  # a constant side has no correlation


def test_spearman_and_pearson_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    generator = np.random.default_rng(0)
    x, y = generator.integers(0, 6, 300), generator.integers(0, 4, 300) + 0.3 * generator.integers(0, 6, 300)  # many ties
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)
    assert pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert np.array_equal(average_ranks(y), stats.rankdata(y))


# --- loaders and detection ----------------------------------------------------------------


def test_stsb_layout_splits_on_tabs_only_and_keeps_seven_fields(tmp_path):
    path = tmp_path / "sts-dev.csv"
    path.write_text(
        'main-news\tsrc\t2012\t0001\t2.500\tHe said "hi.\tShe said hi.\textra\tmore\n'  # unbalanced quote, 9 fields
        "main-forums\tsrc\t2013\t0002\t0\tA cat.\tA dog.\n"
    )
    pairs = load_sts(str(path))
    assert [(p.query, p.positive, p.score, p.label) for p in pairs] == [
        ('He said "hi.', "She said hi.", 2.5, "main-news"),
        ("A cat.", "A dog.", 0.0, "main-forums"),
    ]
    assert is_sts_file(str(path))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("g\ts\t2012\t2\tnot-a-number\tA.\tB.", "sts.tsv:2: column 'score' must be a number, got 'not-a-number'"),
        ("g\ts\t2012\t2\t1.0\tA.", "sts.tsv:2: expected 7 tab-separated fields"),
        ("g\ts\t2012\t2\t1.0\tA.\t ", "sts.tsv:2: column 'sentence2' is empty"),
    ],
)
def test_bad_stsb_row_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "sts.tsv"
    path.write_text(f"g\ts\t2012\t1\t4.0\tA man.\tA person.\n{line}\n")
    with pytest.raises(DataError, match=message):
        load_sts(str(path))


def test_generic_scored_pairs_from_jsonl_and_csv(tmp_path):
    jsonl = tmp_path / "sts.jsonl"
    jsonl.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "c", "sentence2": "d", "score": 0.5}\n')
    csv = tmp_path / "sts.csv"
    csv.write_text("sentence1,sentence2,score\na,b,1\nc,d,x\n")
    assert [p.score for p in load_sts(str(jsonl))] == [1.0, 0.5]
    assert is_sts_file(str(jsonl)) and is_sts_file(str(csv))
    with pytest.raises(DataError, match=r"sts.csv:3: column 'score' must be a number, got 'x'"):
        load_sts(str(csv))


def test_load_benchmark_detects_beir_sts_and_pairs(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"query": "q1", "positive": "p1"}\n{"query": "q2", "positive": "p2"}\n')
    sts = tmp_path / "sts.jsonl"
    sts.write_text('{"sentence1": "a", "sentence2": "b", "score": 4}\n{"sentence1": "c", "sentence2": "d", "score": 1}\n')
    write_beir(RetrievalSet("toy", {"q": "query"}, {"d1": "doc one", "d2": "doc two"}, {"q": {"d2": 1}}), tmp_path / "beir")
    assert [load_benchmark(str(s)).task for s in (pairs, sts, tmp_path / "beir")] == ["retrieval", "sts", "retrieval"]
    assert load_benchmark(str(tmp_path / "beir")).describe() == "1 queries, 2 documents"
    # positives for diagnostics: the top quarter of an STS file by gold score, a BEIR folder's judged pairs
    assert [(p.query, p.positive) for p in positive_pairs(load_benchmark(str(sts)))] == [("a", "b")]
    assert [(p.query, p.positive) for p in positive_pairs(load_benchmark(str(tmp_path / "beir")))] == [("query", "doc two")]


# --- the command --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    """A pairs file, an STS-B-layout file and a BEIR folder, each small."""
    root = tmp_path_factory.mktemp("eval-data")
    rows = [{"query": f"what is item {i}", "positive": f"item {i} is a thing number {i}"} for i in range(12)]
    (root / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "sts-dev.csv").write_text(
        "".join(f"g\ts\t2012\t{i}\t{i % 5}.0\ta cat sat number {i}\ta {'cat' if i % 2 else 'dog'} sat {i}\n" for i in range(10))
    )
    write_beir(
        RetrievalSet(
            "toy",
            {f"q{i}": f"question {i}" for i in range(4)},
            {f"d{i}": f"answer {i}" for i in range(8)},
            {f"q{i}": {f"d{i}": 1} for i in range(4)},
        ),
        root / "beir",
    )
    return root


def test_eval_several_data_sets_and_matryoshka_dims(tiny_bert_dir, eval_data, tmp_path):
    pytest.importorskip("matplotlib")
    out, table, plot = tmp_path / "r.json", tmp_path / "r.csv", tmp_path / "dims.png"
    data = [str(eval_data / "pairs.jsonl"), str(eval_data / "sts-dev.csv"), str(eval_data / "beir")]
    result = embedtune(
        "eval",
        "--model",
        str(tiny_bert_dir),
        "--data",
        *data,
        "--dims",
        "16",
        "32",
        "--out",
        str(out),
        "--csv",
        str(table),
        "--plot",
        str(plot),
    )
    assert result.returncode == 0, result.stderr
    assert "sts: sts-dev.csv (10 scored pairs)" in result.stdout and "retrieval: beir/test (4 queries, 8 documents)" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(row["task"], row["dim"]) for row in rows] == [
        ("retrieval", 32),
        ("retrieval", 16),
        ("sts", 32),
        ("sts", 16),
        ("retrieval", 32),
        ("retrieval", 16),
    ]
    assert {"ndcg@10", "map@100"} <= set(rows[0]) and {"spearman", "pearson"} <= set(rows[2])
    lines = table.read_text().splitlines()
    assert lines[0].startswith("data,name,task,model,dim,ndcg@10") and lines[0].endswith("spearman,pearson") and len(lines) == 7
    assert plot.read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dims", "64"], "embedtune eval: error: --dims 64 is more than the 32 dimensions of"),
        (["--dims", "0"], "embedtune eval: error: --dims must be positive, got 0"),
    ],
)
def test_eval_rejects_bad_dims_in_one_line(tiny_bert_dir, eval_data, capsys, extra, message):
    with pytest.raises(SystemExit) as raised:
        main(["eval", "--model", str(tiny_bert_dir), "--data", str(eval_data / "pairs.jsonl"), *extra])
    assert raised.value.code == 2 and message in capsys.readouterr().err


def test_eval_names_a_bad_sts_row(tiny_bert_dir, tmp_path, capsys):
    bad = tmp_path / "sts.jsonl"
    bad.write_text('{"sentence1": "a", "sentence2": "b", "score": 1}\n{"sentence1": "c", "sentence2": "d"}\n')
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_bert_dir), "--data", str(bad)])
    assert capsys.readouterr().err.strip() == f"embedtune eval: error: {bad}:2: missing column 'score' (row has: sentence1, sentence2)"


def test_stsb_dev_spearman_with_real_minilm_layers(shared_data, minilm_2layer_dir):
    from embedtune.model import load_embedder

    pairs = load_sts(str(shared_data / "stsb" / "sts-dev.csv"))[:200]
    metrics = evaluate_sts(load_embedder(str(minilm_2layer_dir)), pairs, show_progress=False)
    assert metrics["spearman"] > 0.5, metrics
