"""Held-out evaluation during training and experiment tracking (logger=tensorboard)."""

import json

import pytest
from hydra import compose, initialize_config_dir

from embedtune.errors import ConfigError
from embedtune.training.config import config_dir, validate
from embedtune.training.run import run
from embedtune.training.tracking import hyperparameters, scalars


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [{"query": f"question number {i}", "positive": f"answer about topic {i}"} for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def compose_run(model_dir, pairs, *extra):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=files", f"data.train={pairs}", f"data.eval={pairs}", f"backbone.path={model_dir}", "backbone.max_length=16",
                "batch.size=4", "train.max_steps=3", "train.log_every=1", "negatives.per_query=0", *extra,
            ],
        )  # fmt: skip


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_periodic_eval_writes_the_held_out_curve_and_the_tracker_gets_every_record(tiny_bert_dir, pairs_file, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(compose_run(tiny_bert_dir, pairs_file, "eval.every_n_steps=2", "logger=tensorboard"), tmp_path)
    curve = read_jsonl(tmp_path / "eval_log.jsonl")
    assert [record["step"] for record in curve] == [0, 2, 3]  # before, every 2nd step, final
    assert curve[0]["ndcg@10"] == pytest.approx(result["before"]["ndcg@10"])
    assert curve[-1]["ndcg@10"] == pytest.approx(result["after"]["ndcg@10"])
    assert all("loss" in record for record in read_jsonl(tmp_path / "train_log.jsonl"))  # training records stay apart

    events = EventAccumulator(str(tmp_path / "embedtune"))  # the scalars; add_hparams writes a subfolder of its own
    events.Reload()
    loss = [(event.step, event.value) for event in events.Scalars("train/loss")]
    logged = [(record["step"], record["loss"]) for record in read_jsonl(tmp_path / "train_log.jsonl")]
    assert [step for step, _ in loss] == [step for step, _ in logged]
    assert [value for _, value in loss] == pytest.approx([value for _, value in logged], rel=1e-6)
    assert [event.step for event in events.Scalars("eval/ndcg@10")] == [0, 2, 3]


def test_unknown_or_missing_tracker_is_a_one_line_config_error(tiny_bert_dir, pairs_file, monkeypatch):
    with pytest.raises(ConfigError, match=r"^logger must be none or one of aim, tensorboard, .*got 'tensorbored'$"):
        validate(compose_run(tiny_bert_dir, pairs_file, "logger=tensorbored"))
    monkeypatch.setattr("accelerate.utils.is_wandb_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^logger=wandb needs the wandb package: pip install wandb$"):
        validate(compose_run(tiny_bert_dir, pairs_file, "logger=wandb"))
    with pytest.raises(ConfigError, match=r"^eval.every_n_steps must be null or an integer >= 1, got 0$"):
        validate(compose_run(tiny_bert_dir, pairs_file, "eval.every_n_steps=0"))


def test_hyperparameters_are_flat_scalars_and_scalars_skip_step_and_text():
    from omegaconf import OmegaConf

    flat = hyperparameters(OmegaConf.create({"train": {"lr": 1e-5, "max_steps": None}, "mrl": {"dims": [64, 32]}, "seed": 3}))
    assert flat == {"train.lr": 1e-5, "train.max_steps": "None", "mrl.dims": "[64, 32]", "seed": 3}
    assert scalars({"step": 4, "epoch": 0.5, "loss": 1.5, "data": "x", "ok": True}, "train/") == {"train/loss": 1.5}
