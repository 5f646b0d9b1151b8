"""GradCache: contrastive batches far larger than memory, with the same loss and gradients.

Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory
Limited Setup". A contrastive loss couples every embedding of the batch, so the batch cannot be
split into independent micro-batches the usual way. But the loss only depends on the model
through the embeddings, so the gradient factorises:

    dL/dtheta = sum_i (dL/de_i) . (de_i/dtheta)

1. embed the whole batch in mini-batches *without* a graph (memory: one mini-batch of
   activations), recording the RNG state before each mini-batch;
2. compute the loss on the detached embeddings and backpropagate to them: dL/de_i (tiny);
3. re-embed each mini-batch *with* a graph, replaying its recorded RNG state so dropout draws
   the very same masks as in step 1, and backpropagate dL/de_i through it.

The result is the gradient of the full-batch loss at the cost of one extra forward pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def _rng_state() -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None


@contextlib.contextmanager
def _replayed_rng(state: tuple) -> Iterator[None]:
    """Run the block with a recorded RNG state; the caller's RNG stream is left untouched."""
    cpu, cuda = state
    devices = list(range(torch.cuda.device_count())) if cuda is not None else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        yield


def _mini_batches(features: dict[str, Tensor], size: int) -> list[dict[str, Tensor]]:
    """Split a tokenised batch along its first dimension. Padding is kept as is, so every
    mini-batch computes exactly what the full batch would."""
    total = features["input_ids"].shape[0]
    return [{name: value[start : start + size] for name, value in features.items()} for start in range(0, total, size)]


def _embed_without_graph(model: Callable, features: dict[str, Tensor], size: int) -> tuple[Tensor, list[tuple]]:
    embeddings, states = [], []
    for mini_batch in _mini_batches(features, size):
        states.append(_rng_state())
        with torch.no_grad():
            embeddings.append(model(mini_batch))
    return torch.cat(embeddings), states


def gradcache_step(
    model: Callable,
    batch: dict,
    loss_fn: Callable,
    loss_params,
    mini_batch_size: int,
    backward: Callable[[Tensor], None],
    no_sync: Callable[[], contextlib.AbstractContextManager],
) -> tuple[Tensor, Tensor, Tensor]:
    """One cached step; gradients are accumulated into the model's parameters.

    ``backward`` is ``accelerator.backward`` (applies loss scaling and accumulation averaging),
    ``no_sync`` is ``lambda: accelerator.no_sync(model)`` so distributed gradients are reduced
    once, on the last replayed mini-batch. Returns the loss and the (detached) embeddings.
    """
    queries, query_states = _embed_without_graph(model, batch["queries"], mini_batch_size)
    documents, document_states = _embed_without_graph(model, batch["documents"], mini_batch_size)
    queries.requires_grad_()
    documents.requires_grad_()
    loss = loss_fn(queries, documents, batch["info"], loss_params)
    backward(loss)  # dL/d(embeddings), and dL/d(loss params) directly

    groups = [(batch["queries"], query_states, queries.grad), (batch["documents"], document_states, documents.grad)]
    remaining = len(query_states) + len(document_states)
    for features, states, grads in groups:
        start = 0
        for mini_batch, state in zip(_mini_batches(features, mini_batch_size), states):
            remaining -= 1
            rows = mini_batch["input_ids"].shape[0]
            with no_sync() if remaining else contextlib.nullcontext(), _replayed_rng(state):
                surrogate = (model(mini_batch) * grads[start : start + rows]).sum()  # backward of this = e.backward(dL/de)
                if not remaining:
                    # The loss's own scalars got their gradient in step 2, outside any forward of the
                    # (possibly DDP-wrapped) model; a zero-valued term puts them in the synced backward
                    # so DDP reduces them along with everything else.
                    surrogate = surrogate + sum(param.sum() * 0 for param in loss_params.values())
                surrogate.backward()
            start += rows
    return loss.detach(), queries.detach(), documents.detach()
