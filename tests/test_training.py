"""Training must make a real model better on held-out data it never saw."""

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from embedtune.training.build import adamw
from embedtune.training.config import config_dir
from embedtune.training.run import run


def test_short_sft_on_stdlib_raises_held_out_ndcg(minilm_2layer_dir, tmp_path):
    """Real MiniLM weights (2 of 6 layers) fine-tuned for 24 steps on stdlib pairs; the held-out
    packages' nDCG@10 must rise clearly, and the saved model must reproduce the final metric."""
    overrides = [
        f"backbone.path={minilm_2layer_dir}",
        "backbone.max_length=64",
        "data.max_train_pairs=384",
        "data.max_eval_queries=150",
        "batch.size=16",
        "train.lr=1e-4",
        "train.query_max_length=32",
        "eval.batch_size=128",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    result = run(cfg, tmp_path)
    before, after = result["before"]["ndcg@10"], result["after"]["ndcg@10"]
    assert result["steps"] == 24
    assert after > before + 0.03, (before, after)


import json  # noqa: E402
import math  # noqa: E402

import pytest  # noqa: E402

from embedtune.errors import ConfigError  # noqa: E402
from embedtune.model import load_embedder  # noqa: E402
from embedtune.training.config import config_dir as _config_dir  # noqa: E402
from embedtune.training.config import validate  # noqa: E402

LOSSES = sorted(p.stem for p in (_config_dir() / "loss").glob("*.yaml"))


@pytest.fixture(scope="module")
def rich_pairs(tmp_path_factory):
    """Rows with every optional column: negatives, gold score, label, teacher scores."""
    path = tmp_path_factory.mktemp("rich") / "pairs.jsonl"
    rows = [
        {
            "query": f"question number {i}",
            "positive": f"answer about topic {i}",
            "negatives": [f"distractor {i} a", f"distractor {i} b"],
            "score": float(i % 5),
            "label": f"class{i % 3}",
            "positive_score": 5.0,
            "negative_scores": [1.0, 0.5],
        }
        for i in range(16)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def compose_tiny(model_dir, pairs, *extra):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=files", f"data.train={pairs}", "data.score_column=score", "data.label_column=label",
                f"backbone.path={model_dir}", "backbone.max_length=16", "batch.size=4", "train.max_steps=2",
                "negatives.per_query=2", "eval.before=false", *extra,
            ],
        )  # fmt: skip


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_through_the_loop(tiny_bert_dir, rich_pairs, tmp_path, loss):
    run(compose_tiny(tiny_bert_dir, rich_pairs, f"loss={loss}"), tmp_path)
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["loss"]) for r in records)
    assert {"embedding_std", "similarity_gap"} <= set(records[-1])


def test_learnable_temperature_and_sigmoid_bias_are_trained_saved_and_restored(tiny_bert_dir, rich_pairs, tmp_path):
    run(compose_tiny(tiny_bert_dir, rich_pairs, "loss=sigmoid", "temperature=learnable", "train.lr=1e-2"), tmp_path)
    saved = json.loads((tmp_path / "final" / "embedtune.json").read_text())["loss_params"]
    assert saved["logit_scale"] != pytest.approx(math.log(1 / 0.1)) and saved["sigmoid_bias"] != pytest.approx(-10.0)
    assert "temperature" in json.loads((tmp_path / "train_log.jsonl").read_text().splitlines()[-1])
    restored = load_embedder(str(tmp_path / "final"))
    assert restored.loss_params["logit_scale"].item() == pytest.approx(saved["logit_scale"])


def test_learnable_temperature_stays_within_bounds(tiny_bert_dir, rich_pairs, tmp_path):
    run(compose_tiny(tiny_bert_dir, rich_pairs, "temperature=learnable", "temperature.min=0.04", "train.lr=10"), tmp_path)
    tau = 1 / math.exp(json.loads((tmp_path / "final" / "embedtune.json").read_text())["loss_params"]["logit_scale"])
    assert 0.04 - 1e-6 <= tau <= 1.0 + 1e-6


def test_matryoshka_dims_are_recorded_and_too_large_dims_rejected(tiny_bert_dir, rich_pairs, tmp_path):
    from embedtune.errors import ConfigError

    run(compose_tiny(tiny_bert_dir, rich_pairs, "mrl.dims=[16,32,8]"), tmp_path)
    assert json.loads((tmp_path / "final" / "embedtune.json").read_text())["matryoshka_dims"] == [32, 16, 8]
    with pytest.raises(ConfigError, match=r"mrl.dims: 64 is larger than the embedding \(32 dims\)"):
        run(compose_tiny(tiny_bert_dir, rich_pairs, "mrl.dims=[64,16]"), tmp_path / "again")


def test_too_few_negatives_is_a_clear_error(tiny_bert_dir, rich_pairs, tmp_path):
    from embedtune.errors import DataError

    with pytest.raises(DataError, match=r"16 pair\(s\) have fewer than negatives.per_query=3"):
        run(compose_tiny(tiny_bert_dir, rich_pairs, "negatives.per_query=3"), tmp_path)


def test_gradcache_run_through_the_loop(tiny_bert_dir, rich_pairs, tmp_path):
    run(
        compose_tiny(tiny_bert_dir, rich_pairs, "batch.gradcache=true", "batch.mini_batch_size=3", "mrl.dims=[32,8]", "loss=qwen3"),
        tmp_path,
    )
    records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records][-1] == 2 and all(math.isfinite(r["loss"]) for r in records)


def test_model_every_n_steps_writes_loadable_models_for_merging(tiny_bert_dir, rich_pairs, tmp_path):
    run(compose_tiny(tiny_bert_dir, rich_pairs, "train.max_steps=3", "save.model_every_n_steps=1"), tmp_path)
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert models == ["step-00001", "step-00002"]  # the last step is final/
    assert load_embedder(str(tmp_path / "models" / "step-00002")).max_length == 16


def test_renamed_save_keys_still_work_with_a_one_line_notice(tiny_bert_dir, rich_pairs, tmp_path, capsys):
    cfg = compose_tiny(
        tiny_bert_dir, rich_pairs, "train.max_steps=3", "train.save_every=1", "checkpoint.every_n_steps=2", "checkpoint.keep_last=1"
    )
    run(cfg, tmp_path)
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["step-00001", "step-00002"]
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["step-00002"]
    err = " ".join(capsys.readouterr().err.split())
    for old, new in (
        ("train.save_every", "save.model_every_n_steps=1"),
        ("checkpoint.every_n_steps", "save.state_every_n_steps=2"),
        ("checkpoint.keep_last", "save.keep_last_states=1"),
    ):
        assert f"{old} is deprecated: use {new}" in err


def test_old_and_new_name_of_one_key_set_to_different_values_is_refused(tiny_bert_dir, rich_pairs):
    cfg = compose_tiny(tiny_bert_dir, rich_pairs, "train.save_every=1", "save.model_every_n_steps=2")
    with pytest.raises(ConfigError, match="train.save_every is the old name of save.model_every_n_steps"):
        validate(cfg)


@pytest.mark.parametrize("fast_bfloat16, runs_as", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_is_bf16_only_where_bfloat16_is_fast_and_is_recorded(
    tiny_bert_dir, rich_pairs, tmp_path, monkeypatch, fast_bfloat16, runs_as
):
    monkeypatch.setattr("embedtune.training.build.has_fast_bfloat16", lambda device: fast_bfloat16)
    run(compose_tiny(tiny_bert_dir, rich_pairs, "train.mixed_precision=auto"), tmp_path)
    assert OmegaConf.load(tmp_path / "config.yaml").train.mixed_precision == runs_as
    card = (tmp_path / "final" / "README.md").read_text()
    assert ("bf16 mixed precision" in card) == (runs_as == "bf16")


def test_bf16_where_bfloat16_is_emulated_trains_with_a_one_line_warning(tiny_bert_dir, rich_pairs, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("embedtune.training.build.has_fast_bfloat16", lambda device: False)
    run(compose_tiny(tiny_bert_dir, rich_pairs, "train.mixed_precision=bf16"), tmp_path)
    assert OmegaConf.load(tmp_path / "config.yaml").train.mixed_precision == "bf16"
    warnings = [line for line in capsys.readouterr().err.splitlines() if "train.mixed_precision=bf16" in line]
    assert len(warnings) == 1 and "emulated" in warnings[0] and "train.mixed_precision=auto" in warnings[0]


def test_runs_in_one_process_may_differ_in_mixed_precision(tiny_bert_dir, rich_pairs, tmp_path, monkeypatch):
    """A sweep (-m) runs its jobs in one process; Accelerate keeps its state between them."""
    monkeypatch.setattr("embedtune.training.build.has_fast_bfloat16", lambda device: True)
    for precision in ("no", "bf16", "no"):
        run(compose_tiny(tiny_bert_dir, rich_pairs, f"train.mixed_precision={precision}"), tmp_path / precision)
        assert OmegaConf.load(tmp_path / precision / "config.yaml").train.mixed_precision == precision


def test_adamw_is_fused_and_its_first_step_is_the_adamw_formula():
    """AdamW's first step from zero moments: p <- p (1 - lr wd) - lr g / (|g| + eps), decay on matrices only."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = adamw(model, lr=0.1, weight_decay=0.01)
    assert optimizer.defaults["fused"]  # torch >= 2.4 has the CPU kernel
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()
    for p, old in zip(model.parameters(), before):
        decay = 0.01 if p.ndim >= 2 else 0.0
        expected = old.numpy() * (1 - 0.1 * decay) - 0.1 * p.grad.numpy() / (np.abs(p.grad.numpy()) + 1e-8)
        np.testing.assert_allclose(p.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_adamw_falls_back_to_the_unfused_form_where_torch_has_no_fused_kernel(monkeypatch):
    class NoFusedKernel(torch.optim.AdamW):
        def __init__(self, params, fused=None, **options):
            if fused:
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
            super().__init__(params, **options)

    monkeypatch.setattr(torch.optim, "AdamW", NoFusedKernel)
    optimizer = adamw(torch.nn.Linear(4, 3), lr=0.1, weight_decay=0.01)
    assert isinstance(optimizer, NoFusedKernel) and not optimizer.defaults["fused"]
