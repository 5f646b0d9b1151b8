"""Checks of a composed training config, and building objects from its groups.

Hydra's struct mode already rejects unknown keys; `validate` rejects bad values with a message
that names the option, before anything is loaded or written. `embedtune.training.build` is the
one place that reads the values to build a run.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from embedtune.errors import ConfigError, EmbedtuneError
from embedtune.model import HUB_ID
from embedtune.pooling import POOLINGS
from embedtune.training.tracking import check_logger

MIXED_PRECISION = ("no", "fp16", "bf16", "auto")
# transformers' learning-rate schedules that need nothing but the warm-up and total steps (the
# others need a metric every step or extra arguments the config does not give them).
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


def config_dir() -> Path:
    """The shipped `conf/` folder: inside the installed package, or beside it in a checkout."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise ConfigError(f"cannot find embedtune's conf/ folder next to {package}")


def _require(condition: bool, option: str, expectation: str, value) -> None:
    if not condition:
        raise ConfigError(f"{option} must be {expectation}, got {value!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(low: int, optional: bool = False) -> tuple:
    return (lambda v: (optional and v is None) or (_is_int(v) and v >= low)), ("null or " if optional else "") + f"an integer >= {low}"


def _one_of(options: tuple, text: str | None = None) -> tuple:
    return (lambda v: v in options), text or f"one of {', '.join(options)}"


BOOLEAN = (lambda v: isinstance(v, bool), "true or false")
POSITIVE = (lambda v: _is_number(v) and v > 0, "a number > 0")
NON_NEGATIVE = (lambda v: _is_number(v) and v >= 0, "a number >= 0")
SHARE = (lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)")

# Every plain value a training run depends on: key -> (check, what it must be). Values that
# depend on each other (mrl, temperature bounds, the loss's own arguments) are checked in `validate`.
RULES = {
    "batch.size": (lambda v: _is_int(v) and v >= 2, "an integer >= 2 (in-batch negatives need company)"),
    "batch.gradcache": BOOLEAN,
    "batch.no_duplicates": BOOLEAN,
    "batch.mini_batch_size": _integer(1),
    "train.lr": POSITIVE,
    "train.epochs": _integer(1),
    "train.max_steps": _integer(1, optional=True),
    "train.warmup_ratio": SHARE,
    "train.weight_decay": NON_NEGATIVE,
    "train.max_grad_norm": POSITIVE,
    "train.gradient_accumulation_steps": _integer(1),
    "train.mixed_precision": _one_of(MIXED_PRECISION),
    "train.query_max_length": _integer(1),
    "train.log_every": _integer(1),
    "train.scheduler": _one_of(SCHEDULERS),
    "train.on_nonfinite": _one_of(("stop", "skip"), "stop or skip"),
    "train.max_nonfinite_in_a_row": _integer(1),
    "train.num_workers": _integer(0),
    "save.model_every_n_steps": _integer(1, optional=True),
    "save.state_every_n_steps": _integer(1, optional=True),
    "save.keep_last_states": _integer(1, optional=True),
    "resume": (lambda v: v is None or isinstance(v, str), "null, auto or a state folder"),
    "overwrite": BOOLEAN,
    "negatives.per_query": _integer(0),
    "negatives.cross_device": BOOLEAN,
    "backbone.max_length": _integer(1),
    "backbone.dtype": _one_of(("float32", "bfloat16", "float16"), "float32, bfloat16 or float16"),
    "backbone.padding_side": _one_of((None, "left", "right"), "null, left or right"),
    "backbone.attn_implementation": (lambda v: v is None or isinstance(v, str), "null or a name (eager, sdpa, flash_attention_2)"),
    "backbone.bidirectional": BOOLEAN,
    "backbone.gradient_checkpointing": BOOLEAN,
    "pooling.mode": _one_of(POOLINGS),
    "lora.enabled": BOOLEAN,
    "lora.r": _integer(1),
    "lora.alpha": POSITIVE,
    "lora.dropout": SHARE,
    "lora.target_modules": (
        lambda v: v is not None and len(v) > 0 and all(isinstance(m, str) for m in v),
        "a non-empty list of layer names",
    ),
    "prompt.query": (lambda v: isinstance(v, str), "a string"),
    "prompt.document": (lambda v: isinstance(v, str), "a string"),
    "eval.batch_size": _integer(1),
    "eval.before": BOOLEAN,
    "eval.every_n_steps": _integer(1, optional=True),
    "logger": (lambda v: isinstance(v, str), "none or a tracker name (tensorboard, wandb, ...)"),
    "hub.repo_id": (lambda v: v is None or (isinstance(v, str) and HUB_ID.match(v) is not None), "null or a Hub repository id (user/name)"),
    "hub.private": BOOLEAN,
    "hub.exist_ok": BOOLEAN,
    "collapse.warn_below": NON_NEGATIVE,
}


# Keys renamed so that their names say what they write: old key -> new key. Users' configs and
# scripts still set the old ones; `apply_renamed_keys` moves their values with a notice.
RENAMED_KEYS = {
    "train.save_every": "save.model_every_n_steps",
    "checkpoint.every_n_steps": "save.state_every_n_steps",
    "checkpoint.keep_last": "save.keep_last_states",
}


def apply_renamed_keys(cfg: DictConfig) -> list[str]:
    """Move the values set under renamed keys to their new names; return one deprecation notice
    per key moved. An old key is set when it is not null (its default)."""
    notices, shipped = [], None
    for old, new in RENAMED_KEYS.items():
        value = OmegaConf.select(cfg, old)
        if value is None:
            continue
        shipped = shipped or OmegaConf.load(config_dir() / "train.yaml")
        current = OmegaConf.select(cfg, new)
        if current not in (value, OmegaConf.select(shipped, new)):  # the new key was set too, to something else
            raise ConfigError(f"{old} is the old name of {new}: set only {new} (got {old}={value}, {new}={current})")
        OmegaConf.update(cfg, new, value)
        OmegaConf.update(cfg, old, None)
        notices.append(f"{old} is deprecated: use {new}={value} (it means the same)")
    return notices


def validate(cfg: DictConfig) -> None:
    """Check every value the training run depends on; raise `ConfigError` naming the first bad one."""
    apply_renamed_keys(cfg)
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except Exception as error:  # omegaconf's MissingMandatoryValue / InterpolationResolutionError
        key = getattr(error, "full_key", "") or "config"
        reason = str(error).splitlines()[0]
        if "Missing mandatory value" in reason:
            reason = "required but not set (add it on the command line: KEY=VALUE)"
        raise ConfigError(f"{key}: {reason}") from None
    for key, (check, expectation) in RULES.items():
        value = OmegaConf.select(cfg, key)
        _require(check(value), key, expectation, value)
    check_logger(cfg.logger)
    dims, weights = cfg.mrl.dims, cfg.mrl.weights
    positive_integers = dims is None or (OmegaConf.is_list(dims) and len(dims) > 0 and all(_is_int(d) and d >= 1 for d in dims))
    _require(positive_integers, "mrl.dims", "null or a list of positive integers", dims)
    one_per_dim = OmegaConf.is_list(weights) and dims is not None and len(weights) == len(dims)
    _require(
        weights is None or (one_per_dim and all(_is_number(w) and w >= 0 for w in weights)),
        "mrl.weights",
        "null or one number >= 0 per mrl.dims entry",
        weights,
    )
    if cfg.temperature.learnable:
        low, high = cfg.temperature.min, cfg.temperature.max
        _require(_is_number(low) and _is_number(high) and 0 < low < high, "temperature.min/max", "numbers with 0 < min < max", (low, high))
    instantiate_group(cfg.loss, "loss")  # the loss checks its own arguments (temperature > 0, ...)


def instantiate_group(node: DictConfig, group: str):
    """``hydra.utils.instantiate`` with errors turned into one line naming the group.

    An `EmbedtuneError` raised by the target (a bad data row, say) passes through unchanged.
    """
    try:
        return hydra.utils.instantiate(node, _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, EmbedtuneError):
            raise cause from None
        reason = str(cause) if cause is not None else str(error).splitlines()[0]
        raise ConfigError(f"{group}: {reason}") from None
