"""One micro-step of training: forward and backward (plain or GradCache), and, on the micro-step
that closes an optimizer step, gradient clipping, the non-finite check and the update."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate.utils import send_to_device
from torch import Tensor

from embedtune.console import console
from embedtune.errors import EmbedtuneError
from embedtune.training.build import StepSettings, TrainingSetup
from embedtune.training.checkpoint import TrainerState
from embedtune.training.gradcache import gradcache_step


@dataclass
class MicroStep:
    """What one micro-batch gave: its loss, its (detached) embeddings, and whether it closed an
    optimizer step (``stepped``) or was dropped for a non-finite loss or gradient (``finite``)."""

    loss: float
    queries: Tensor  # (batch, dim)
    documents: Tensor  # (batch * (1 + k), dim)
    finite: bool
    stepped: bool


def train_step(setup: TrainingSetup, batch: dict, state: TrainerState) -> MicroStep:
    """Forward, backward and, when gradients are synced, the optimizer update of one micro-batch."""
    accelerator, model, settings = setup.accelerator, setup.model, setup.step
    loss_params = accelerator.unwrap_model(model).loss_params
    batch = send_to_device(batch, accelerator.device)
    with accelerator.accumulate(model):
        if settings.gradcache:
            no_sync = lambda: accelerator.no_sync(model)  # noqa: E731
            loss, queries, documents = gradcache_step(model, batch, setup.loss_fn, loss_params, settings.mini_batch_size, accelerator.backward, no_sync)
        else:
            queries = model(batch["queries"])  # (batch, dim)
            documents = model(batch["documents"])  # (batch * (1 + k), dim)
            loss = setup.loss_fn(queries, documents, batch["info"], loss_params)
            accelerator.backward(loss)
        finite = True
        if accelerator.sync_gradients:
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm))
            finite = math.isfinite(loss.item()) and (math.isfinite(grad_norm) or settings.mixed_precision == "fp16")  # fp16: the grad scaler skips inf steps itself
            if not finite:
                handle_nonfinite(settings.on_nonfinite, state, loss.item(), grad_norm, setup.is_main)
        if finite:
            setup.optimizer.step()
        setup.optimizer.zero_grad()
        clamp_temperature(loss_params, settings)
    return MicroStep(loss.item(), queries.detach(), documents.detach(), finite, accelerator.sync_gradients)


def handle_nonfinite(policy: str, state: TrainerState, loss: float, grad_norm: float, is_main: bool) -> None:
    """A NaN/inf loss or gradient: stop before it reaches the weights (``stop``), or drop the
    step's gradients and go on (``skip``). Nothing non-finite is ever saved."""
    where = f"step {state.step + 1}: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} (loss {loss}, gradient norm {grad_norm})"
    if policy == "stop":
        raise EmbedtuneError(f"{where}; stopped before updating the weights. Lower train.lr, check the data, or set train.on_nonfinite=skip")
    state.skipped_nonfinite += 1
    if is_main:
        console.print(f"[bold yellow]warning:[/] {where}; step skipped ({state.skipped_nonfinite} so far)")


@torch.no_grad()
def clamp_temperature(loss_params: torch.nn.ParameterDict, settings: StepSettings) -> None:
    """Keep a learnable tau within [min, max] (open_clip clamps its logit scale the same way)."""
    if "logit_scale" in loss_params and settings.temperature_range is not None:
        low, high = settings.temperature_range
        loss_params["logit_scale"].clamp_(math.log(1 / high), math.log(1 / low))
