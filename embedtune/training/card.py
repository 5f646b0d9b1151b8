"""The model card of a model a run saves: what the run knew before training (`TrainingSetup.card`,
built from the config) plus where it stands (step, time, hardware, held-out scores)."""

from __future__ import annotations

import os
import platform

import torch

from embedtune.model_card import TrainingOutcome, training_card
from embedtune.training.build import TrainingSetup
from embedtune.training.checkpoint import TrainerState


def run_card(setup: TrainingSetup, state: TrainerState, model_id: str, after: dict | None = None) -> str:
    """The card of the model as it is at ``state.step``; ``after``: its held-out metrics, when
    it was evaluated at this step."""
    outcome = TrainingOutcome(
        step=state.step, total_steps=setup.settings.total_steps, train_seconds=state.train_seconds,
        hardware=hardware(setup.accelerator.device, setup.accelerator.num_processes, setup.settings.mixed_precision),
        before=state.before, after=after,
    )  # fmt: skip
    return training_card(model_id, setup.unwrapped_model().description(), setup.card, outcome)


def hardware(device: torch.device, processes: int, mixed_precision: str) -> str:
    """``1 x NVIDIA H100 80GB HBM3 (bf16)`` or ``1 process on a CPU (x86_64, 2 cores)``."""
    precision = "" if mixed_precision == "no" else f" ({mixed_precision} mixed precision)"
    if device.type == "cuda":
        return f"{processes} x {torch.cuda.get_device_name(device)}{precision}"
    return f"{processes} process{'es' if processes > 1 else ''} on a {device.type.upper()} ({platform.machine()}, {os.cpu_count()} cores){precision}"
