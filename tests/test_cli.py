"""The command line as a user runs it: tiny models, real processes, real files."""

import json

import pytest
from helpers import embedtune

from embedtune.model import load_embedder


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """40 toy (query, positive, negative) rows with distinct texts."""
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [
        {"query": f"what is item {i}", "positive": f"item {i} is a thing number {i}", "negatives": [f"unrelated text {i}"]}
        for i in range(40)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tiny_run_args(model_dir, pairs, out):
    return [
        "train", "data=files", f"data.train={pairs}", f"data.eval={pairs}", f"backbone.path={model_dir}",
        "backbone.max_length=32", "batch.size=8", "train.max_steps=3", "train.log_every=1", f"output_dir={out}",
    ]  # fmt: skip


def test_train_writes_log_config_eval_and_final_model(tiny_bert_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    result = embedtune(*tiny_run_args(tiny_bert_dir, pairs_file, out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all({"step", "loss", "lr", "pairs_per_s"} <= set(r) and r["pairs_per_s"] > 0 for r in records)
    assert "size: 8" in (out / "config.yaml").read_text()
    evaluation = json.loads((out / "eval.json").read_text())
    assert set(evaluation["after"]) == {"ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100"}
    assert load_embedder(str(out / "final")).max_length == 32
    assert "fine-tuned" in result.stdout  # the before/after table


def test_sweep_runs_one_job_per_value(tiny_bert_dir, pairs_file, tmp_path):
    out = tmp_path / "sweep"
    result = embedtune("train", "-m", "loss.temperature=0.02,0.1", *tiny_run_args(tiny_bert_dir, pairs_file, out)[1:])
    assert result.returncode == 0, result.stderr
    runs = sorted(p.name for p in (tmp_path / "sweep-sweep").iterdir() if p.is_dir())
    assert runs == ["0_loss.temperature=0.02", "1_loss.temperature=0.1"]
    for run in runs:
        config = (tmp_path / "sweep-sweep" / run / "config.yaml").read_text()
        assert f"temperature: {run.split('=')[1]}" in config
        assert (tmp_path / "sweep-sweep" / run / "final" / "modules.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["loss.temprature=0.1"], "Could not override 'loss.temprature'"),
        (["batch.size=1"], "batch.size must be an integer >= 2"),
        (["-m", "loss.temperature=0.05,-1"], "loss: temperature must be > 0, got -1"),
        (["stage=finetune"], "Could not find 'stage/finetune'"),
        (["data=files"], "data.train: required but not set"),
    ],
)
def test_bad_train_arguments_fail_with_one_line_and_write_nothing(tmp_path, args, message):
    result = embedtune("train", *args, f"output_dir={tmp_path / 'out'}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_data_row_fails_with_one_line_and_leaves_no_output_folder(tiny_bert_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "positive": "p"}\n{"query": "q2"}\n')
    result = embedtune("train", "data=files", f"data.train={bad}", f"backbone.path={tiny_bert_dir}", f"output_dir={tmp_path / 'o'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"embedtune train: error: {bad}:2: missing column 'positive' (row has: query)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl"]  # no .hydra/, no train.log, no empty folder


def test_eval_writes_json_with_metric_names(tiny_bert_dir, pairs_file, tmp_path):
    result = embedtune("eval", "--model", str(tiny_bert_dir), "--data", str(pairs_file), "--out", str(tmp_path / "m.json"))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"} <= set(metrics)
    assert 0 <= metrics["ndcg@10"] <= 1 and "ndcg@10" in result.stdout


def test_help_texts():
    assert "train" in embedtune("--help").stdout and "eval" in embedtune("--help").stdout
    train_help = embedtune("train", "--help").stdout
    backbones = next(line for line in train_help.splitlines() if line.startswith("backbone: "))
    assert {"hf", "minilm", "decoder"} <= set(backbones.removeprefix("backbone: ").split(", "))
    assert "embedtune train -m loss.temperature" in train_help
    assert "--data" in embedtune("eval", "--help").stdout


def test_unknown_command():
    result = embedtune("fly")
    assert result.returncode == 2 and "unknown command" in result.stderr


def test_data_command_writes_stdlib_as_files_that_train_and_eval_read(tmp_path):
    result = embedtune("data", "--out", str(tmp_path / "d"), "--max-train-pairs", "20", "--max-eval-queries", "5")
    assert result.returncode == 0, result.stderr
    from embedtune.data.held_out import load_beir
    from embedtune.data.rows import load_pairs

    pairs = load_pairs(str(tmp_path / "d" / "train.jsonl"))
    assert len(pairs) == 20 and all(len(p.negatives) == 3 for p in pairs)
    held_out = load_beir(str(tmp_path / "d" / "eval"), "test")
    assert len(held_out.queries) == 5 and not {p.positive for p in pairs} & set(held_out.corpus.values())
