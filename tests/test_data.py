"""Data loading: every supported format, and every malformed row stops with file, row and reason."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedtune.data.held_out import load_beir, pairs_as_retrieval_set
from embedtune.data.rows import Columns, load_pairs
from embedtune.data.stdlib import load as load_stdlib
from embedtune.data.types import Pair
from embedtune.errors import DataError

ROWS = [
    {"query": "how to sort", "positive": "sorted(xs)", "negatives": ["len(xs)", "xs.pop()"]},
    {"query": "how to count", "positive": "len(xs)", "negatives": []},
]


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_jsonl_csv_parquet_load_the_same_pairs(tmp_path):
    expected = [Pair("how to sort", "sorted(xs)", ("len(xs)", "xs.pop()")), Pair("how to count", "len(xs)", ())]
    jsonl = write_jsonl(tmp_path / "p.jsonl", ROWS)
    csv_path = tmp_path / "p.csv"
    csv_path.write_text('query,positive,negatives\nhow to sort,sorted(xs),"[""len(xs)"", ""xs.pop()""]"\nhow to count,len(xs),\n')
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    for source in (jsonl, csv_path, parquet):
        assert load_pairs(str(source)) == expected


def test_custom_column_names(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"anchor": "a question", "answer": "an answer"}])
    assert load_pairs(str(path), Columns(query="anchor", positive="answer")) == [Pair("a question", "an answer")]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"query": "q", "positive": ', "invalid JSON"),
        ('["q", "p"]', "expected a JSON object"),
        ('{"query": "q"}', "missing column 'positive'"),
        ('{"query": "   ", "positive": "p"}', "column 'query' is empty"),
        ('{"query": 7, "positive": "p"}', "column 'query' must be a string, got int"),
        ('{"query": "q", "positive": "p", "negatives": 3}', "column 'negatives' must be a list of strings"),
        ('{"query": "q", "positive": "p", "negatives": ["ok", ""]}', "column 'negatives' item 1"),
    ],
)
def test_malformed_row_names_file_line_and_reason(tmp_path, line, reason):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], line])
    with pytest.raises(DataError) as error:
        load_pairs(str(path))
    assert str(error.value).startswith(f"{path}:2: ")
    assert reason in str(error.value)
    assert "\n" not in str(error.value)


def test_csv_row_with_extra_field_is_an_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("query,positive\na,b\nc,d,e\n")
    with pytest.raises(DataError, match=r"p.csv:3: more fields than the header"):
        load_pairs(str(path))


@pytest.mark.parametrize(("name", "content", "reason"), [("empty.jsonl", "", "no rows"), ("x.txt", "a", "unsupported file type")])
def test_empty_or_unsupported_file(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=reason):
        load_pairs(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(str(tmp_path / "nope.jsonl"))


def test_pairs_as_retrieval_set_shares_ids_of_repeated_texts():
    benchmark = pairs_as_retrieval_set([Pair("q1", "doc", ("neg",)), Pair("q2", "doc")], "x")
    assert len(benchmark.corpus) == 2
    assert benchmark.qrels == {"q0": {"d0": 1}, "q1": {"d0": 1}}


def make_beir(folder, qrels_lines):
    (folder / "qrels").mkdir(parents=True)
    write_jsonl(folder / "corpus.jsonl", [{"_id": "d1", "title": "Title", "text": "body"}, {"_id": "d2", "title": "", "text": "other"}])
    write_jsonl(folder / "queries.jsonl", [{"_id": "q1", "text": "question"}, {"_id": "q2", "text": "unjudged"}])
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(line + "\n" for line in qrels_lines))
    return folder


def test_beir_folder_joins_titles_and_keeps_judged_queries(tmp_path):
    benchmark = load_beir(str(make_beir(tmp_path / "b", ["q1\td1\t1", "q1\td2\t0"])), "test")
    assert benchmark.corpus == {"d1": "Title body", "d2": "other"}
    assert benchmark.queries == {"q1": "question"}
    assert benchmark.qrels == {"q1": {"d1": 1}}


def test_beir_qrels_with_unknown_id_names_the_line(tmp_path):
    folder = make_beir(tmp_path / "b", ["q1\td1\t1", "q1\td9\t1"])
    with pytest.raises(DataError, match=r"qrels/test.tsv:3: unknown corpus id 'd9'"):
        load_beir(str(folder), "test")


def test_beir_missing_split_lists_available(tmp_path):
    folder = make_beir(tmp_path / "b", ["q1\td1\t1"])
    with pytest.raises(DataError, match="splits here: test"):
        load_beir(str(folder), "dev")


def test_stdlib_split_by_package_deterministic_and_answers_hidden_from_queries(tmp_path):
    for package in ("alpha", "beta", "gamma", "delta"):
        functions = "".join(
            f'def {package}_f{i}(x):\n    """Compute the {package} value number {i} of x."""\n    y = x + {i}\n    return y * {i}\n\n'
            for i in range(5)
        )
        (tmp_path / f"{package}.py").write_text(functions)
    first = load_stdlib(eval_fraction=0.5, root=str(tmp_path))
    second = load_stdlib(eval_fraction=0.5, root=str(tmp_path))
    assert first.train == second.train and first.eval.qrels == second.eval.qrels
    train_docs = {pair.positive for pair in first.train}
    assert len(first.train) == 10 and len(first.eval.corpus) == 10
    assert not train_docs & set(first.eval.corpus.values())  # no held-out function is trained on
    for pair in first.train:
        assert '"""' not in pair.positive and pair.query.startswith("Compute the")
        assert len(pair.negatives) == 3 and pair.positive not in pair.negatives
        package = pair.positive.split("def ")[1].split("_f")[0]
        assert all(negative.startswith(f"def {package}_") for negative in pair.negatives)  # same module


def test_written_pairs_and_beir_folder_load_back_unchanged(tmp_path):
    from embedtune.data.held_out import write_beir
    from embedtune.data.rows import write_pairs
    from embedtune.data.types import RetrievalSet

    pairs = [Pair("q one", "doc one", ("neg a", "neg b")), Pair("q two", "doc two")]
    write_pairs(pairs, tmp_path / "train.jsonl")
    assert load_pairs(str(tmp_path / "train.jsonl")) == pairs
    benchmark = RetrievalSet("x", {"q1": "question"}, {"d1": "answer", "d2": "other"}, {"q1": {"d1": 2}})
    write_beir(benchmark, tmp_path / "beir")
    again = load_beir(str(tmp_path / "beir"), "test")
    assert (again.queries, again.corpus, again.qrels) == (benchmark.queries, benchmark.corpus, benchmark.qrels)
