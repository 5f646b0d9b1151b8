"""Every shipped config composes, validates and binds to its target's signature."""

import inspect
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from embedtune.errors import ConfigError
from embedtune.training.config import config_dir, validate

GROUPS = sorted(p.name for p in config_dir().iterdir() if p.is_dir())
OPTIONS = [(group, yaml.stem) for group in GROUPS for yaml in sorted((config_dir() / group).glob("*.yaml"))]
REQUIRED = {
    ("backbone", "hf"): ["backbone.path=/some/model"],
    ("backbone", "decoder"): ["backbone.path=/some/model"],
    ("data", "files"): ["data.train=pairs.jsonl"],
    ("data", "stream"): ["data.sources=[{path: a.jsonl, weight: 1}]"],
    **{("data", preset): ["data.train=data.jsonl"] for preset in ("simcse", "nli", "sts", "weak")},
}


def compose_train(overrides):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=overrides)


def test_groups_include_the_documented_ones():
    assert {"backbone", "pooling", "loss", "stage", "data"} <= set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_validates(group, option):
    cfg = compose_train([f"{group}={option}", *REQUIRED.get((group, option), [])])
    validate(cfg)


def target_node(group, option):
    """The option's keys, or for a `# @package _global_` option (the data presets) its group's key."""
    node = OmegaConf.to_container(OmegaConf.load(config_dir() / group / f"{option}.yaml"))
    return node if "_target_" in node else node.get(group, {})


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, o in OPTIONS if "_target_" in target_node(g, o)])
def test_target_arguments_bind_to_signature(group, option):
    node = target_node(group, option)
    target = hydra.utils.get_method(node.pop("_target_"))
    inspect.signature(target).bind(**node)  # raises TypeError on a misspelt or missing argument


def test_stages_differ_in_batch_lr_and_negatives():
    sft, pretrain = compose_train(["stage=sft"]), compose_train(["stage=pretrain"])
    assert pretrain.batch.size > sft.batch.size
    assert pretrain.train.lr > sft.train.lr
    assert sft.negatives.per_query > 0 == pretrain.negatives.per_query
    assert (sft.output_dir, pretrain.output_dir) == ("runs/sft", "runs/pretrain")


def test_command_line_overrides_beat_the_stage():
    cfg = compose_train(["stage=pretrain", "batch.size=8", "loss.temperature=0.02"])
    assert (cfg.batch.size, cfg.loss.temperature) == (8, 0.02)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("batch.size=1", "batch.size must be an integer >= 2"),
        ("train.lr=0", "train.lr must be a number > 0"),
        ("loss.temperature=-0.1", "loss: temperature must be > 0"),
        ("train.mixed_precision=fp8", "train.mixed_precision must be one of"),
        ("negatives.per_query=-1", "negatives.per_query must be an integer >= 0"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose_train([override]))


def test_config_dir_is_the_repository_conf():
    assert config_dir() == Path(__file__).resolve().parents[1] / "conf"
