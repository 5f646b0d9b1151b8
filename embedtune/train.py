"""The training recipe, top to bottom: build from config, evaluate the start, train, save, evaluate.

One Accelerate loop serves one CPU, one GPU or many processes (``accelerate launch``); only the
main process writes logs and models.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch.utils.data import DataLoader
from transformers import get_scheduler

from embedtune.config import instantiate_group, validate
from embedtune.data.collate import PairCollator
from embedtune.data.sampler import NoDuplicatesBatchSampler
from embedtune.data.types import TrainEvalData
from embedtune.errors import ConfigError, DataError
from embedtune.eval.retrieval import evaluate_retrieval
from embedtune.gradcache import gradcache_step
from embedtune.io import write_text_atomic
from embedtune.losses.matryoshka import Matryoshka
from embedtune.model import Embedder, load_embedder
from embedtune.progress import console, progress_bar, stdout


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Train as ``cfg`` says and write everything under ``output_dir``.

    Returns ``{"before": metrics | None, "after": metrics | None, "steps": n}``.
    """
    validate(cfg)
    output_dir = Path(output_dir)
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
    )
    set_seed(cfg.seed)
    is_main = accelerator.is_main_process

    # --- build: data, model, loss, optimiser -----------------------------------------------
    data: TrainEvalData = instantiate_group(cfg.data, "data")
    model = load_embedder(
        cfg.backbone.path,
        pooling=cfg.pooling.mode,
        max_length=cfg.backbone.max_length,
        prompts={"query": data.query_prompt, "document": data.document_prompt},
        dtype=cfg.backbone.dtype,
    )
    loss_fn = build_loss(cfg, model)
    if data.stream is None:
        check_data(data, cfg.batch.size * accelerator.num_processes, cfg.negatives.per_query)
    elif cfg.train.max_steps is None:
        raise ConfigError("data=stream: a stream has no end, set train.max_steps")
    collate = PairCollator(
        model.tokenizer,
        query_max_length=cfg.train.query_max_length,
        document_max_length=cfg.backbone.max_length,
        negatives_per_query=cfg.negatives.per_query,
        query_prompt=data.query_prompt,
        document_prompt=data.document_prompt,
    )
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.train.weight_decay), lr=cfg.train.lr)
    if data.stream is not None:  # already one batch per item, sharded by rank: not for Accelerate to split
        stream = dataclasses.replace(data.stream, batch_size=cfg.batch.size, seed=cfg.seed, rank=accelerator.process_index, world_size=accelerator.num_processes, negatives_per_query=cfg.negatives.per_query)
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = DataLoader(stream, batch_size=None, collate_fn=collate, num_workers=0)
    else:
        if cfg.batch.no_duplicates:  # a repeated text in a batch is a false negative
            sampler = NoDuplicatesBatchSampler(data.train, cfg.batch.size, cfg.seed, cfg.negatives.per_query)
            loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers)
        else:  # full batches only: every step sees the same number of negatives
            generator = torch.Generator().manual_seed(cfg.seed)
            loader = DataLoader(data.train, batch_size=cfg.batch.size, shuffle=True, drop_last=True, collate_fn=collate, num_workers=cfg.train.num_workers, generator=generator)
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // cfg.train.gradient_accumulation_steps) if data.stream is None else cfg.train.max_steps
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Stepped once per optimizer step by us (not prepared: Accelerate would step it per process).
    scheduler = get_scheduler(cfg.train.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.train.warmup_ratio * total_steps), num_training_steps=total_steps)

    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        console.print(
            f"[bold]embedtune train[/]: {f'{len(data.train)} pairs' if data.stream is None else 'streaming'} from {data.source or 'data'}, "
            f"{total_steps} steps x {cfg.batch.size} pairs x {accelerator.num_processes} process(es), "
            f"{cfg.negatives.per_query} hard negative(s)/query -> {output_dir}"
        )

    def evaluate() -> dict | None:
        if data.eval is None or not is_main:
            return None
        return evaluate_retrieval(accelerator.unwrap_model(model), data.eval, cfg.eval.batch_size)

    before = evaluate() if cfg.eval.before else None

    # --- train ---------------------------------------------------------------------------
    model.train()
    loss_params = accelerator.unwrap_model(model).loss_params
    step, window_loss, window_pairs, window_start, window_geometry = 0, 0.0, 0, time.perf_counter(), []
    warned_collapse = False
    log_path = output_dir / "train_log.jsonl"
    log = log_path.open("w", encoding="utf-8") if is_main else None
    with progress_bar("training", total_steps, enabled=is_main, status=True) as advance:
        while step < total_steps:
            for batch in loader:
                batch = send_to_device(batch, accelerator.device)
                with accelerator.accumulate(model):
                    if cfg.batch.gradcache:
                        no_sync = lambda: accelerator.no_sync(model)  # noqa: E731
                        loss, queries, documents = gradcache_step(model, batch, loss_fn, loss_params, cfg.batch.mini_batch_size, accelerator.backward, no_sync)
                    else:
                        queries = model(batch["queries"])  # (batch, dim)
                        documents = model(batch["documents"])  # (batch * (1 + k), dim)
                        loss = loss_fn(queries, documents, batch["info"], loss_params)
                        accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                    clamp_temperature(loss_params, cfg.temperature)
                window_loss += loss.item() / cfg.train.gradient_accumulation_steps
                window_geometry.append(geometry(queries.detach(), documents.detach()))
                window_pairs += queries.shape[0] * accelerator.num_processes
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                if step % cfg.train.log_every == 0 or step == total_steps:
                    elapsed = time.perf_counter() - window_start
                    steps_in_window = (step - 1) % cfg.train.log_every + 1
                    record = {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 4),
                        "loss": window_loss / steps_in_window,
                        "lr": scheduler.get_last_lr()[0],
                        "pairs_per_s": window_pairs / elapsed,
                        **{name: sum(g[name] for g in window_geometry) / len(window_geometry) for name in window_geometry[0]},
                    }
                    if "logit_scale" in loss_params:
                        record["temperature"] = 1 / loss_params["logit_scale"].exp().item()
                    if is_main and not warned_collapse and record["embedding_std"] < cfg.collapse.warn_below:
                        warned_collapse = True
                        console.print(
                            f"[bold yellow]warning:[/] embeddings are collapsing at step {step}: the mean std of a dimension is "
                            f"{record['embedding_std']:.4f} x 1/sqrt(dim) (healthy spaces sit near 1). Lower the learning rate, "
                            "raise the temperature or check the data for near-identical pairs."
                        )
                    if log:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    advance(steps_in_window, status=f"loss {record['loss']:.4f} · lr {record['lr']:.2e} · {record['pairs_per_s']:.1f} pairs/s")
                    window_loss, window_pairs, window_start, window_geometry = 0.0, 0, time.perf_counter(), []
                if is_main and cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
                    accelerator.unwrap_model(model).save(output_dir / "checkpoints" / f"step-{step:05d}")  # for merging
                if step >= total_steps:
                    break
    if log:
        log.close()

    # --- save and evaluate ----------------------------------------------------------------
    accelerator.wait_for_everyone()
    if is_main:
        accelerator.unwrap_model(model).save(output_dir / "final")
    after = evaluate()
    result = {"before": before, "after": after, "steps": total_steps}
    if is_main and data.eval is not None:
        write_text_atomic(output_dir / "eval.json", json.dumps({"data": data.eval.name, **result}, indent=2) + "\n")
        stdout.print(comparison_table(f"held-out retrieval: {data.eval.name}", before, after))
        console.print(f"model saved to [bold]{output_dir / 'final'}[/]")
    return result


def build_loss(cfg: DictConfig, model: Embedder):
    """The configured loss, wrapped in Matryoshka when ``mrl.dims`` is set; registers the
    learnable scalars it needs (temperature, sigmoid bias) on the model."""
    loss_fn = instantiate_group(cfg.loss, "loss")
    model.add_loss_params(getattr(loss_fn, "initial_params", dict)())
    if cfg.temperature.learnable:
        if not hasattr(loss_fn, "temperature"):
            raise ConfigError(f"temperature=learnable: loss {type(loss_fn).__name__} has no temperature")
        model.add_loss_params({"logit_scale": math.log(1 / loss_fn.temperature)})
    if cfg.mrl.dims:
        too_large = [dim for dim in cfg.mrl.dims if dim > model.dim]
        if too_large:
            raise ConfigError(f"mrl.dims: {too_large[0]} is larger than the embedding ({model.dim} dims)")
        try:
            loss_fn = Matryoshka(loss_fn, list(cfg.mrl.dims), list(cfg.mrl.weights or []))
        except ValueError as error:
            raise ConfigError(f"mrl: {error}") from None
        model.matryoshka_dims = sorted(cfg.mrl.dims, reverse=True)
    return loss_fn


def check_data(data: TrainEvalData, global_batch: int, negatives_per_query: int) -> None:
    """Enough pairs for one full batch, and enough hard negatives on every pair."""
    if len(data.train) < global_batch:
        raise ConfigError(f"batch.size needs {global_batch} training pairs per step; {data.source or 'the data'} has {len(data.train)}")
    short = [index for index, pair in enumerate(data.train) if len(pair.negatives) < negatives_per_query]
    if short:
        first = data.train[short[0]]
        raise DataError(
            f"{data.source or 'data'}: {len(short)} pair(s) have fewer than negatives.per_query={negatives_per_query} "
            f"hard negatives (first: query {first.query!r:.60} has {len(first.negatives)}); lower negatives.per_query or mine more"
        )


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices only, never biases, norms or the loss's scalars."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@torch.no_grad()
def clamp_temperature(loss_params: torch.nn.ParameterDict, temperature: DictConfig) -> None:
    """Keep a learnable tau within [min, max] (open_clip clamps its logit scale the same way)."""
    if "logit_scale" in loss_params:
        loss_params["logit_scale"].clamp_(math.log(1 / temperature.max), math.log(1 / temperature.min))


@torch.no_grad()
def geometry(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, float]:
    """Collapse indicators of one batch.

    ``embedding_std``: mean over dimensions of the std of the documents' embeddings, times
    sqrt(dim) so that an isotropic space scores about 1 and a collapsed one (every text on the
    same point) scores 0. ``similarity_gap``: mean cosine of each query with its positive minus
    the mean cosine with the other in-batch positives.
    """
    size = queries.shape[0]
    std = documents.float().std(dim=0).mean().item() * documents.shape[1] ** 0.5
    scores = queries.float() @ documents[:size].float().T  # (batch, batch)
    positive = scores.diagonal().mean().item()
    negative = (scores.sum() - scores.diagonal().sum()).item() / max(size * (size - 1), 1)
    return {"embedding_std": std, "similarity_gap": positive - negative}


def comparison_table(title: str, before: dict | None, after: dict) -> Table:
    """Metrics of the starting model and the trained one, side by side."""
    table = Table(title=title)
    table.add_column("metric")
    if before is not None:
        table.add_column("base", justify="right")
    table.add_column("fine-tuned", justify="right")
    if before is not None:
        table.add_column("change", justify="right")
    for name, value in after.items():
        if before is None:
            table.add_row(name, f"{value:.4f}")
        else:
            change = value - before[name]
            color = "green" if change > 0 else "red" if change < 0 else ""
            table.add_row(name, f"{before[name]:.4f}", f"{value:.4f}", f"[{color}]{change:+.4f}[/]" if color else f"{change:+.4f}")
    return table
