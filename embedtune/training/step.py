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
from embedtune.training.build import Settings, TrainingSetup
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
    accelerator, model, settings = setup.accelerator, setup.model, setup.settings
    loss_params = accelerator.unwrap_model(model).loss_params
    batch = send_to_device(batch, accelerator.device)
    with accelerator.accumulate(model):
        if settings.gradcache:
            no_sync = lambda: accelerator.no_sync(model)  # noqa: E731
            loss, queries, documents = gradcache_step(
                model, batch, setup.loss_fn, loss_params, settings.mini_batch_size, accelerator.backward, no_sync
            )
        else:
            queries = model(batch["queries"])  # (batch, dim)
            documents = model(batch["documents"])  # (batch * (1 + k), dim)
            loss = setup.loss_fn(queries, documents, batch["info"], loss_params)
            accelerator.backward(loss)
        finite = True
        if accelerator.sync_gradients:
            names, norms = gradient_norms(model)  # before clipping, which spreads one NaN to every gradient
            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm))
            finite = math.isfinite(loss.item()) and (
                math.isfinite(grad_norm) or settings.mixed_precision == "fp16"
            )  # fp16: the grad scaler skips inf steps itself
            if finite:
                state.nonfinite_in_a_row = 0
            else:
                handle_nonfinite(settings, state, loss.item(), grad_norm, nonfinite_gradients(names, norms), setup.is_main)
        if finite:
            setup.optimizer.step()
        setup.optimizer.zero_grad()
        clamp_temperature(loss_params, settings)
    return MicroStep(loss.item(), queries.detach(), documents.detach(), finite, accelerator.sync_gradients)


def handle_nonfinite(settings: Settings, state: TrainerState, loss: float, grad_norm: float, gradients: str, is_main: bool) -> None:
    """A NaN/inf loss or gradient: stop before it reaches the weights (``stop``), or drop the
    step's gradients and go on (``skip``) — but only ``max_nonfinite_in_a_row`` times in a row:
    skipped steps are not steps, so a run whose every step is non-finite would never end.
    Nothing non-finite is ever saved."""
    where = f"step {state.step + 1}: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} (loss {loss}, gradient norm {grad_norm}; {gradients})"
    if settings.on_nonfinite == "stop":
        raise EmbedtuneError(
            f"{where}; stopped before updating the weights. Lower train.lr, check the data, or set train.on_nonfinite=skip"
        )
    state.skipped_nonfinite += 1
    state.nonfinite_in_a_row += 1
    if state.nonfinite_in_a_row >= settings.max_nonfinite_in_a_row:
        raise EmbedtuneError(
            f"{where}; {state.nonfinite_in_a_row} steps in a row were non-finite (train.max_nonfinite_in_a_row={settings.max_nonfinite_in_a_row}), "
            "stopped: this run is not recovering. Lower train.lr, check the data, or try train.mixed_precision=no"
        )
    if is_main:
        console.print(f"[bold yellow]warning:[/] {where}; step skipped ({state.skipped_nonfinite} so far)")


def gradient_norms(model: torch.nn.Module) -> tuple[list[str], Tensor]:
    """The names of the parameters that have a gradient, in the model's order, and each
    gradient's norm (one fused kernel, left on the device: nothing waits for it)."""
    named = [(name.removeprefix("module."), parameter.grad) for name, parameter in model.named_parameters() if parameter.grad is not None]
    if not named:
        return [], torch.empty(0)
    return [name for name, _ in named], torch.stack(torch._foreach_norm([grad for _, grad in named]))


def nonfinite_gradients(names: list[str], norms: Tensor) -> str:
    """Which gradients are NaN/inf, in words: how many, and the one nearest the output (backward
    reaches it first, so it is where the non-finite values began, or closest to it)."""
    bad = [name for name, finite in zip(names, torch.isfinite(norms).tolist()) if not finite]
    if not bad:
        return "every gradient finite"
    return f"non-finite gradient in {len(bad)} of {len(names)} parameter tensors, nearest the output: {bad[-1]}"


@torch.no_grad()
def clamp_temperature(loss_params: torch.nn.ParameterDict, settings: Settings) -> None:
    """Keep a learnable tau within [min, max] (open_clip clamps its logit scale the same way)."""
    if "logit_scale" in loss_params and settings.temperature_range is not None:
        low, high = settings.temperature_range
        loss_params["logit_scale"].clamp_(math.log(1 / high), math.log(1 / low))
