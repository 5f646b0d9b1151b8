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
import ctypes
import ctypes.util
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

try:  # glibc's malloc_trim, to hand freed memory back to the OS (absent on macOS, musl: nothing to do)
    _malloc_trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
except (OSError, AttributeError):
    _malloc_trim = None


def _release_freed_memory(device: torch.device) -> None:
    """After a mini-batch on the CPU, return the memory its activations held to the OS.

    Every length-sorted mini-batch has activations of another shape, and glibc's per-thread
    arenas reuse such freed blocks poorly: over the mini-batches of one large batch, the
    process's resident memory creeps up, which is the very memory GradCache exists to save
    (``scripts/bench.py --only gradcache`` measures peak memory against batch size).
    ``malloc_trim`` costs little beside a mini-batch's forward pass. GPUs have their own caching
    allocator, which does not fragment so.
    """
    if _malloc_trim is not None and device.type == "cpu":
        _malloc_trim(0)


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


def _mini_batches(features: dict[str, Tensor], size: int) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """Split a tokenised batch into mini-batches of up to ``size`` texts of similar length:
    ``(rows, mini_batch)`` pairs, ``rows`` indexing the batch.

    The texts are taken longest first, so each mini-batch holds texts of nearly one length and
    the model pads it only to its own longest (`Embedder.forward` cuts the rest); in batch order,
    almost every mini-batch of a large mixed batch would hold one long text and pay its full
    length for all. Which rows share a mini-batch changes nothing else: the loss sees the whole
    batch's embeddings, put back in batch order. Without an attention mask the batch order is kept."""
    mask = features.get("attention_mask")
    order = torch.argsort(mask.sum(dim=1), descending=True, stable=True) if mask is not None else torch.arange(len(features["input_ids"]))
    return [(rows, {name: value[rows] for name, value in features.items()}) for rows in order.split(size)]


def _embed_without_graph(model: Callable, mini_batches: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[tuple]]:
    """Embeddings of all mini-batches, in batch order, and the RNG state before each one."""
    embeddings, states = None, []
    for rows, mini_batch in mini_batches:
        states.append(_rng_state())
        with torch.no_grad():
            mini = model(mini_batch)  # (rows, dim)
        if embeddings is None:
            embeddings = mini.new_empty(sum(len(r) for r, _ in mini_batches), mini.shape[1])
        embeddings[rows] = mini
        _release_freed_memory(mini.device)
    return embeddings, states


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
    query_batches = _mini_batches(batch["queries"], mini_batch_size)
    document_batches = _mini_batches(batch["documents"], mini_batch_size)
    queries, query_states = _embed_without_graph(model, query_batches)
    documents, document_states = _embed_without_graph(model, document_batches)
    queries.requires_grad_()
    documents.requires_grad_()
    loss = loss_fn(queries, documents, batch["info"], loss_params)
    backward(loss)  # dL/d(embeddings), and dL/d(loss params) directly

    groups = [(query_batches, query_states, queries.grad), (document_batches, document_states, documents.grad)]
    remaining = len(query_states) + len(document_states)
    for mini_batches, states, grads in groups:
        for (rows, mini_batch), state in zip(mini_batches, states):
            remaining -= 1
            with no_sync() if remaining else contextlib.nullcontext(), _replayed_rng(state):
                surrogate = (model(mini_batch) * grads[rows]).sum()  # backward of this = e.backward(dL/de)
                if not remaining:
                    # The loss's own scalars got their gradient in step 2, outside any forward of the
                    # (possibly DDP-wrapped) model; a zero-valued term puts them in the synced backward
                    # so DDP reduces them along with everything else.
                    surrogate = surrogate + sum(param.sum() * 0 for param in loss_params.values())
                surrogate.backward()
            _release_freed_memory(grads.device)
    return loss.detach(), queries.detach(), documents.detach()
