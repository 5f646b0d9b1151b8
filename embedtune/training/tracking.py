"""Experiment tracking through Accelerate's trackers (``logger=tensorboard``, ``logger=wandb``, ...).

train_log.jsonl is always written; a tracker is an optional second sink for the same records,
so runs can be browsed and compared in TensorBoard (``tensorboard --logdir runs/``) or any other
tracker Accelerate supports. Files go under ``output_dir/<logger>/``.
"""

from __future__ import annotations

import accelerate.utils
from accelerate.utils import LoggerType
from omegaconf import DictConfig, OmegaConf

from embedtune.errors import ConfigError

TRACKERS = tuple(kind.value for kind in LoggerType if kind is not LoggerType.ALL)
# The pip package that makes each tracker available, where it differs from the tracker's name.
PACKAGES = {"comet_ml": "comet-ml"}


def check_logger(name: str) -> None:
    """``none`` or an Accelerate tracker whose package is installed; else one line saying which."""
    if name == "none":
        return
    if name not in TRACKERS:
        raise ConfigError(f"logger must be none or one of {', '.join(TRACKERS)}, got {name!r}")
    if not getattr(accelerate.utils, f"is_{name}_available")():
        raise ConfigError(f"logger={name} needs the {name} package: pip install {PACKAGES.get(name, name)}")


def hyperparameters(cfg: DictConfig) -> dict[str, bool | int | float | str]:
    """The resolved config flattened to ``{"train.lr": 2e-05, ...}``: trackers (TensorBoard's
    hparams view in particular) take scalar values only, so lists and nulls become strings."""
    flat: dict[str, bool | int | float | str] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                walk(value, name + ".")
            else:
                flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


def scalars(record: dict, prefix: str = "") -> dict[str, float]:
    """The numeric entries of a log record or metrics dict, named for the tracker
    (``train/loss``, ``eval/ndcg@10``); the step is passed separately."""
    return {
        f"{prefix}{key}": value
        for key, value in record.items()
        if key not in ("step", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool)
    }
