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

MIXED_PRECISION = ("no", "fp16", "bf16")
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
    train = cfg.train
    _require(
        _is_int(cfg.batch.size) and cfg.batch.size >= 2, "batch.size", "an integer >= 2 (in-batch negatives need company)", cfg.batch.size
    )
    _require(isinstance(cfg.batch.gradcache, bool), "batch.gradcache", "true or false", cfg.batch.gradcache)
    _require(isinstance(cfg.batch.no_duplicates, bool), "batch.no_duplicates", "true or false", cfg.batch.no_duplicates)
    _require(
        _is_int(cfg.batch.mini_batch_size) and cfg.batch.mini_batch_size >= 1,
        "batch.mini_batch_size",
        "an integer >= 1",
        cfg.batch.mini_batch_size,
    )
    _require(_is_number(train.lr) and train.lr > 0, "train.lr", "a number > 0", train.lr)
    _require(_is_int(train.epochs) and train.epochs >= 1, "train.epochs", "an integer >= 1", train.epochs)
    _require(
        train.max_steps is None or (_is_int(train.max_steps) and train.max_steps >= 1),
        "train.max_steps",
        "null or an integer >= 1",
        train.max_steps,
    )
    _require(_is_number(train.warmup_ratio) and 0 <= train.warmup_ratio < 1, "train.warmup_ratio", "in [0, 1)", train.warmup_ratio)
    _require(_is_number(train.weight_decay) and train.weight_decay >= 0, "train.weight_decay", "a number >= 0", train.weight_decay)
    _require(_is_number(train.max_grad_norm) and train.max_grad_norm > 0, "train.max_grad_norm", "a number > 0", train.max_grad_norm)
    _require(
        _is_int(train.gradient_accumulation_steps) and train.gradient_accumulation_steps >= 1,
        "train.gradient_accumulation_steps",
        "an integer >= 1",
        train.gradient_accumulation_steps,
    )
    _require(
        train.mixed_precision in MIXED_PRECISION, "train.mixed_precision", f"one of {', '.join(MIXED_PRECISION)}", train.mixed_precision
    )
    _require(
        _is_int(train.query_max_length) and train.query_max_length >= 1, "train.query_max_length", "an integer >= 1", train.query_max_length
    )
    _require(_is_int(train.log_every) and train.log_every >= 1, "train.log_every", "an integer >= 1", train.log_every)
    _require(train.scheduler in SCHEDULERS, "train.scheduler", f"one of {', '.join(SCHEDULERS)}", train.scheduler)
    _require(train.on_nonfinite in ("stop", "skip"), "train.on_nonfinite", "stop or skip", train.on_nonfinite)
    _require(
        _is_int(train.max_nonfinite_in_a_row) and train.max_nonfinite_in_a_row >= 1,
        "train.max_nonfinite_in_a_row",
        "an integer >= 1",
        train.max_nonfinite_in_a_row,
    )
    for key in ("model_every_n_steps", "state_every_n_steps", "keep_last_states"):
        value = cfg.save[key]
        _require(value is None or (_is_int(value) and value >= 1), f"save.{key}", "null or an integer >= 1", value)
    _require(cfg.resume is None or isinstance(cfg.resume, str), "resume", "null, auto or a state folder", cfg.resume)
    _require(isinstance(cfg.overwrite, bool), "overwrite", "true or false", cfg.overwrite)
    _require(_is_int(train.num_workers) and train.num_workers >= 0, "train.num_workers", "an integer >= 0", train.num_workers)
    _require(
        _is_int(cfg.negatives.per_query) and cfg.negatives.per_query >= 0, "negatives.per_query", "an integer >= 0", cfg.negatives.per_query
    )
    _require(isinstance(cfg.negatives.cross_device, bool), "negatives.cross_device", "true or false", cfg.negatives.cross_device)
    _require(
        _is_int(cfg.backbone.max_length) and cfg.backbone.max_length >= 1, "backbone.max_length", "an integer >= 1", cfg.backbone.max_length
    )
    _require(cfg.backbone.dtype in ("float32", "bfloat16", "float16"), "backbone.dtype", "float32, bfloat16 or float16", cfg.backbone.dtype)
    _require(cfg.pooling.mode in POOLINGS, "pooling.mode", f"one of {', '.join(POOLINGS)}", cfg.pooling.mode)
    _validate_decoder_options(cfg)
    _require(_is_int(cfg.eval.batch_size) and cfg.eval.batch_size >= 1, "eval.batch_size", "an integer >= 1", cfg.eval.batch_size)
    _require(isinstance(cfg.eval.before, bool), "eval.before", "true or false", cfg.eval.before)
    every = cfg.eval.every_n_steps
    _require(every is None or (_is_int(every) and every >= 1), "eval.every_n_steps", "null or an integer >= 1", every)
    _require(isinstance(cfg.logger, str), "logger", "none or a tracker name (tensorboard, wandb, ...)", cfg.logger)
    check_logger(cfg.logger)
    dims, weights = cfg.mrl.dims, cfg.mrl.weights
    _require(
        dims is None or (OmegaConf.is_list(dims) and len(dims) > 0 and all(_is_int(d) and d >= 1 for d in dims)),
        "mrl.dims",
        "null or a list of positive integers",
        dims,
    )
    _require(
        weights is None
        or (
            OmegaConf.is_list(weights) and dims is not None and len(weights) == len(dims) and all(_is_number(w) and w >= 0 for w in weights)
        ),
        "mrl.weights",
        "null or one number >= 0 per mrl.dims entry",
        weights,
    )
    if cfg.temperature.learnable:
        low, high = cfg.temperature.min, cfg.temperature.max
        _require(_is_number(low) and _is_number(high) and 0 < low < high, "temperature.min/max", "numbers with 0 < min < max", (low, high))
    hub = cfg.hub
    _require(
        hub.repo_id is None or (isinstance(hub.repo_id, str) and HUB_ID.match(hub.repo_id) is not None),
        "hub.repo_id",
        "null or a Hub repository id (user/name)",
        hub.repo_id,
    )
    _require(isinstance(hub.private, bool), "hub.private", "true or false", hub.private)
    _require(isinstance(hub.exist_ok, bool), "hub.exist_ok", "true or false", hub.exist_ok)
    _require(
        _is_number(cfg.collapse.warn_below) and cfg.collapse.warn_below >= 0,
        "collapse.warn_below",
        "a number >= 0",
        cfg.collapse.warn_below,
    )
    instantiate_group(cfg.loss, "loss")  # the loss checks its own arguments (temperature > 0, ...)


def _validate_decoder_options(cfg: DictConfig) -> None:
    """Backbone loading options, LoRA and the prompt preset."""
    backbone, lora = cfg.backbone, cfg.lora
    _require(backbone.padding_side in (None, "left", "right"), "backbone.padding_side", "null, left or right", backbone.padding_side)
    _require(
        backbone.attn_implementation is None or isinstance(backbone.attn_implementation, str),
        "backbone.attn_implementation",
        "null or a name (eager, sdpa, flash_attention_2)",
        backbone.attn_implementation,
    )
    _require(isinstance(backbone.bidirectional, bool), "backbone.bidirectional", "true or false", backbone.bidirectional)
    _require(
        isinstance(backbone.gradient_checkpointing, bool),
        "backbone.gradient_checkpointing",
        "true or false",
        backbone.gradient_checkpointing,
    )
    _require(isinstance(lora.enabled, bool), "lora.enabled", "true or false", lora.enabled)
    _require(_is_int(lora.r) and lora.r >= 1, "lora.r", "an integer >= 1", lora.r)
    _require(_is_number(lora.alpha) and lora.alpha > 0, "lora.alpha", "a number > 0", lora.alpha)
    _require(_is_number(lora.dropout) and 0 <= lora.dropout < 1, "lora.dropout", "in [0, 1)", lora.dropout)
    modules = lora.target_modules
    _require(
        modules is not None and len(modules) > 0 and all(isinstance(m, str) for m in modules),
        "lora.target_modules",
        "a non-empty list of layer names",
        modules,
    )
    for key in ("query", "document"):
        _require(isinstance(cfg.prompt[key], str), f"prompt.{key}", "a string", cfg.prompt[key])


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
