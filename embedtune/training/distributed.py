"""Cross-device negatives: every process's embeddings become negatives for every query.

The only module that touches ``torch.distributed``.

With N processes of b pairs each, a query normally competes against its own process's b
positives (and hard negatives). Gathering the embeddings of all processes before the loss makes
every query compete against all N * b documents: the contrastive batch grows with the number of
devices at the cost of one all-gather of (small) embedding matrices, which is why large-batch
embedding recipes (E5, GTE, Nomic, Qwen3-Embedding) all train this way.

Global layout (what every loss expects, see `embedtune.losses`): all ranks' queries in rank
order; then ALL positives in rank order; then ALL hard negatives, rank by rank and query by
query. Concatenating each rank's [positives, negatives] block instead would put rank 0's hard
negatives where rank 1's positives belong, and the loss would pull queries toward hard negatives.

Gradient convention (pinned by ``tests/test_distributed.py``):

- every rank computes the *same* loss: the loss of the global batch (all queries against all
  documents), exactly the loss one process would compute on the whole batch;
- `gather_with_grad`'s backward sums the incoming gradients of all ranks (all_reduce SUM) and
  returns this rank's rows. Every rank holds the same full gradient g = dL/d(all embeddings),
  so rank r receives N * g_r for its own embeddings;
- DDP then *averages* parameter gradients over the N ranks:
  (1/N) sum_r N * g_r . de_r/dtheta = sum_r g_r . de_r/dtheta = dL/dtheta,
  the single-process gradient of the full-batch loss. So the loss is NOT multiplied by the
  world size (the factor is 1);
- learnable loss scalars (temperature, sigmoid bias) are used after the gather: every rank
  computes the full dL/dtau and DDP's average leaves it unchanged, so they are right with the
  same factor 1. (The other common convention, gathering without gradient, putting the local
  tensor back in its slot and multiplying the loss by N as tevatron does, gives the encoder the
  same gradient but would scale a learnable temperature's gradient by N.)

The loss itself is computed redundantly on every rank; it is O((N b)^2 dim), negligible next to
the encoder. GradCache composes unchanged: its loss-on-embeddings step calls the same wrapped
loss, and the summed embedding gradients are replayed through the encoder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields

import torch
import torch.distributed as dist
from torch import Tensor

from embedtune.errors import ConfigError, DataError
from embedtune.losses.batch import BatchInfo


def is_distributed() -> bool:
    """True inside an initialised process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_launch(num_processes: int) -> None:
    """Refuse to run as one of several launched processes that each train alone.

    ``accelerate launch --multi_gpu --num_processes 2`` on a machine without GPUs starts two
    processes, but unless ``ACCELERATE_USE_CPU=true`` Accelerate runs each one as a separate
    single-process job: two independent trainings writing the same output folder.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and num_processes == 1:
        raise ConfigError(
            f"this process is one of WORLD_SIZE={launched} launched processes, but Accelerate runs it alone (no GPU and "
            "ACCELERATE_USE_CPU is not set): on CPUs launch with `ACCELERATE_USE_CPU=true accelerate launch --multi_gpu "
            f"--num_processes {launched} -m embedtune train ...` (see recipes/multi_gpu.md)"
        )


def join_submitit_tasks() -> None:
    """Inside a job of Hydra's submitit launcher with several tasks (``tasks_per_node: 4``, e.g.
    ``hydra/launcher=slurm_gpu``), make each task one process of the run, as ``accelerate
    launch`` would: export ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` from the job's SLURM (or local) environment. Every task keeps all the node's
    GPUs visible; Accelerate picks ``cuda:LOCAL_RANK``. Nothing changes elsewhere."""
    if "SUBMITIT_EXECUTOR" not in os.environ or "RANK" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def freeze_unused_pooler(model: torch.nn.Module) -> None:
    """Freeze the backbone's pooler head (BERT, RoBERTa, MPNet, ...), which embeddings never use.

    Embeddings are pooled from the last hidden states, so the pooler gets no gradient. One
    process does not mind (AdamW skips it), but DDP waits for every trainable parameter: the
    first step's gradients are never averaged (ranks silently diverge) and the second step fails
    with "Expected to have finished reduction in the prior iteration". Frozen, it is left out of
    DDP and saved unchanged, exactly as a single-process run leaves it. (DDP's
    ``find_unused_parameters=True`` is no way out: it breaks on the learnable temperature, which
    the loss uses outside the model's forward.)
    """
    pooler = getattr(getattr(model, "backbone", None), "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)


def _all_gather(tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (same shape on all ranks) concatenated along dim 0, in rank order."""
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient over ranks and returns this rank's rows."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        return _all_gather(tensor)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # all_reduce works in place; autograd's buffer is not ours
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(tensor: Tensor) -> Tensor:
    """All ranks' ``tensor`` concatenated along dim 0 (rank order), differentiable.

    Backward: the gradients of all ranks are summed (all_reduce SUM) and each rank keeps the
    rows of its own tensor. Every rank must pass the same shape. Identity in one process.
    """
    return _GatherWithGrad.apply(tensor) if is_distributed() else tensor


def _positives_then_negatives(gathered: Tensor, world: int, size: int) -> Tensor:
    """Reorder gathered per-rank document blocks [pos_r, neg_r] into [pos_0..pos_N, neg_0..neg_N]."""
    blocks = gathered.reshape(world, -1, *gathered.shape[1:])  # (world, size * (1 + k), ...)
    return torch.cat([blocks[:, :size].flatten(0, 1), blocks[:, size:].flatten(0, 1)])


def _check_same_shapes(queries: Tensor, documents: Tensor, info: BatchInfo) -> None:
    """One tiny all_gather so a mismatch is a clear error on every rank instead of a hang or a
    garbled gather: same batch size, hard negatives, dim and optional columns everywhere."""
    optional = [getattr(info, name) is not None for name in ("labels", "scores", "teacher_scores")]
    shape = torch.tensor(
        [queries.shape[0], documents.shape[0], info.negatives_per_query, queries.shape[1], *optional], device=queries.device
    )
    table = _all_gather(shape.unsqueeze(0))  # (world, 7)
    if not (table == table[0]).all():
        raise DataError(
            "negatives.cross_device: every process needs batches of the same shape and the same optional columns "
            f"(labels, scores, teacher scores); got per process [queries, documents, negatives/query, dim, labels?, scores?, teacher?] = {table.tolist()}"
        )


def gather_batch(queries: Tensor, documents: Tensor, info: BatchInfo) -> tuple[Tensor, Tensor, BatchInfo]:
    """The global batch of all processes, in the layout every loss expects.

    ``queries`` (b, dim) and ``documents`` (b * (1 + k), dim) are this rank's, positives first.
    Returns queries (N b, dim) in rank order, documents (N b (1 + k), dim) as all positives (rank
    order) then all hard negatives (rank order, query by query), and the `BatchInfo` gathered in
    the same layout (ids, labels and scores carry no gradient). Embeddings keep their gradient
    through `gather_with_grad`. Unchanged in one process.
    """
    if not is_distributed():
        return queries, documents, info
    _check_same_shapes(queries, documents, info)
    world, size = dist.get_world_size(), queries.shape[0]
    all_queries = gather_with_grad(queries)  # (world * size, dim)
    all_documents = _positives_then_negatives(gather_with_grad(documents), world, size)  # (world * size * (1 + k), dim)
    gathered = {}
    for field in fields(BatchInfo):
        value = getattr(info, field.name)
        if not isinstance(value, Tensor):
            gathered[field.name] = value  # negatives_per_query: the same on every rank
        elif field.name == "document_ids":
            gathered[field.name] = _positives_then_negatives(_all_gather(value), world, size)
        else:  # one row per query: rank order is global query order
            gathered[field.name] = _all_gather(value)
    return all_queries, all_documents, BatchInfo(**gathered)


@dataclass
class CrossDevice:
    """Wrap a loss so it is computed over the batches of all processes (cross-device negatives).

    Called like any loss, ``loss(queries, documents, info, params)``, with this process's
    embeddings; gathers them with `gather_batch` and returns the wrapped loss of the global
    batch, the same value on every rank. No rescaling: see the module docstring for why the
    factor is 1 under DDP's gradient averaging. Wrap outside Matryoshka, so the full embedding
    is gathered once.
    """

    loss: Callable

    def __call__(self, queries: Tensor, documents: Tensor, info: BatchInfo, params: Mapping[str, Tensor] = {}) -> Tensor:
        queries, documents, info = gather_batch(queries, documents, info)
        return self.loss(queries, documents, info, params)
