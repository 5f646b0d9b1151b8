"""Searched and launched sweeps: Hydra's Optuna sweeper maximises the held-out headline metric and
`embedtune report` ranks its runs; the submitit launcher runs each point as a job (here as local
processes, two tasks each = one 2-process run); the SLURM launcher config composes. Tests that
need the optional plugins (pip install 'embedtune[sweeps]') skip without them."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import embedtune
from hydra import compose, initialize_config_dir

from embedtune.training.config import config_dir


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep-data") / "pairs.jsonl"
    path.write_text(
        "".join(
            json.dumps({"query": f"what is item {i}", "positive": f"item {i} is a thing number {i}", "negatives": [f"unrelated text {i}"]})
            + "\n"
            for i in range(40)
        )
    )
    return path


def tiny(model_dir, pairs, out) -> list[str]:
    return [
        "data=files",
        f"data.train={pairs}",
        f"data.eval={pairs}",
        f"backbone.path={model_dir}",
        "backbone.max_length=32",
        "batch.size=8",
        "train.max_steps=2",
        f"output_dir={out}",
    ]


def headline(run_folder) -> float:
    return json.loads((run_folder / "eval.json").read_text())["after"]["ndcg@10"]


def test_optuna_search_maximises_the_held_out_metric_and_report_ranks_it(tiny_bert_dir, pairs, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = tmp_path / "search"
    result = embedtune(
        "train",
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=3",
        "train.lr=tag(log,interval(1e-5,1e-2))",
        "loss.temperature=interval(0.02,0.2)",
        *tiny(tiny_bert_dir, pairs, out),
    )
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "search-sweep"
    runs = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [p.name.split("_")[0] for p in runs] == ["0", "1", "2"] and all(
        "loss.temperature=" in p.name and "train.lr=" in p.name for p in runs
    )
    scores = {p.name: headline(p) for p in runs}
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert found["best_value"] == max(scores.values())  # maximised, and the value each run returned is its nDCG@10
    best = max(scores, key=scores.get)
    for key, value in found["best_params"].items():
        assert f"{key}={value}" in best
    report = embedtune("report", str(sweep))
    assert report.returncode == 0, report.stderr
    assert f"best: {best} (ndcg@10 {scores[best]:.4f})" in report.stdout
    assert "optuna (optimization_results.yaml): best value" in report.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "hydra/sweeper=optuna", "loss.temperature=interval(0,0.2)"], "loss: temperature must be > 0, got 0"),  # an end is checked
        (
            ["loss.temperature=interval(0.01,0.2)"],
            "loss.temperature=interval(0.01,0.2) is a range to search: run it with -m hydra/sweeper=optuna",
        ),
        (["-m", "loss.temperature=interval(0.01,0.2)"], "is a range to search"),  # the grid sweeper cannot search
    ],
)
def test_bad_searches_are_one_line_before_anything_runs(tiny_bert_dir, pairs, tmp_path, args, message):
    if "hydra/sweeper=optuna" in args:
        pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = embedtune("train", *args, *tiny(tiny_bert_dir, pairs, tmp_path / "s"))
    assert result.returncode != 0 and message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "s-sweep").exists() and not (tmp_path / "s").exists()


def test_submitit_local_runs_each_point_as_a_two_process_job(tiny_bert_dir, pairs, tmp_path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # two processes per job on a machine without GPUs
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "loss.temperature=0.02,0.1",
        *tiny(tiny_bert_dir, pairs, tmp_path / "sub"),
    ]
    result = embedtune("train", *args)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sub-sweep"
    runs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert runs == ["0_loss.temperature=0.02", "1_loss.temperature=0.1"]
    for name in runs:
        assert "temperature: " + name.split("=")[1] in (sweep / name / "config.yaml").read_text()
        assert (sweep / name / "final" / "README.md").is_file() and headline(sweep / name) >= 0
    logs = "".join(path.read_text() for path in (sweep / ".submitit").rglob("*_0_log.err"))
    assert logs.count("x 2 process(es)") == 2  # each point ran as one run of 2 processes
    again = embedtune("train", *args)  # the sweep folder holds runs now: refused before any job starts
    assert again.returncode != 0 and "holds the runs 0_loss.temperature=0.02, 1_loss.temperature=0.1 of an earlier sweep" in again.stderr
    report = embedtune("report", str(sweep), "--overwrite")
    assert report.returncode == 0 and "best: " in report.stdout


def test_slurm_gpu_launcher_config_runs_one_task_per_gpu():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.tasks_per_node == launcher.gpus_per_node == 4 and launcher.nodes == 1
