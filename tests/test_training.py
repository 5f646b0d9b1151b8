"""Training must make a real model better on held-out data it never saw."""

from hydra import compose, initialize_config_dir

from embedtune.config import config_dir
from embedtune.train import run


def test_short_sft_on_stdlib_raises_held_out_ndcg(minilm_2layer_dir, tmp_path):
    """Real MiniLM weights (2 of 6 layers) fine-tuned for 24 steps on stdlib pairs; the held-out
    packages' nDCG@10 must rise clearly, and the saved model must reproduce the final metric."""
    overrides = [
        f"backbone.path={minilm_2layer_dir}",
        "backbone.max_length=64",
        "data.max_train_pairs=384",
        "data.max_eval_queries=150",
        "train.batch_size=16",
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
