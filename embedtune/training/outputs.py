"""What a training run writes in its ``output_dir``, and the rule that an earlier run's outputs
are replaced only when the user says so (``overwrite=true``, or ``resume=...`` to continue it)."""

from __future__ import annotations

import shutil
from pathlib import Path

# Everything a run writes there; a folder holding any of these holds a run.
RUN_OUTPUTS = (
    "final",
    "eval.json",
    "train_log.jsonl",
    "eval_log.jsonl",
    "config.yaml",
    "state",
    "models",
    "embedtune",
)  # embedtune/: tracker files


def run_outputs(folder: Path) -> list[str]:
    """The run outputs ``folder`` holds already, in `RUN_OUTPUTS` order."""
    return [name for name in RUN_OUTPUTS if (folder / name).exists()]


def sweep_runs(folder: Path) -> list[str]:
    """The subfolders of a sweep folder that hold a run."""
    return sorted(child.name for child in folder.iterdir() if child.is_dir() and run_outputs(child)) if folder.is_dir() else []


def clear_run_outputs(folder: Path) -> None:
    """Remove an earlier run's outputs (``overwrite=true``), so that none of its saved states or
    models is taken for the new run's."""
    for name in run_outputs(folder):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
