"""The training recipe, top to bottom: build from config, evaluate the start, train, save, evaluate.

One Accelerate loop serves one CPU, one GPU or many processes (``accelerate launch``); only the
main process writes logs and models.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch.utils.data import DataLoader
from transformers import get_scheduler

from embedtune.config import instantiate_group, validate
from embedtune.data.collate import PairCollator
from embedtune.data.types import TrainEvalData
from embedtune.errors import ConfigError
from embedtune.eval.retrieval import evaluate_retrieval
from embedtune.io import write_text_atomic
from embedtune.model import load_embedder
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
    loss_fn = instantiate_group(cfg.loss, "loss")
    model = load_embedder(
        cfg.backbone.path,
        pooling=cfg.pooling.mode,
        max_length=cfg.backbone.max_length,
        prompts={"query": data.query_prompt, "document": data.document_prompt},
        dtype=cfg.backbone.dtype,
    )
    if len(data.train) < cfg.train.batch_size * accelerator.num_processes:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} needs at least that many training pairs per process; {data.source or 'the data'} has {len(data.train)}")
    collate = PairCollator(
        model.tokenizer,
        query_max_length=cfg.train.query_max_length,
        document_max_length=cfg.backbone.max_length,
        negatives_per_query=cfg.negatives.per_query,
        query_prompt=data.query_prompt,
        document_prompt=data.document_prompt,
    )
    loader = DataLoader(
        data.train,
        batch_size=cfg.train.batch_size,
        shuffle=True,
        drop_last=True,  # every step sees a full batch of negatives
        collate_fn=collate,
        num_workers=cfg.train.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = max(1, len(loader) // cfg.train.gradient_accumulation_steps)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Stepped once per optimizer step by us (not prepared: Accelerate would step it per process).
    scheduler = get_scheduler(cfg.train.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.train.warmup_ratio * total_steps), num_training_steps=total_steps)

    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        console.print(
            f"[bold]embedtune train[/]: {len(data.train)} pairs from {data.source or 'data'}, "
            f"{total_steps} steps x {cfg.train.batch_size} pairs x {accelerator.num_processes} process(es), "
            f"{cfg.negatives.per_query} hard negative(s)/query -> {output_dir}"
        )

    def evaluate() -> dict | None:
        if data.eval is None or not is_main:
            return None
        return evaluate_retrieval(accelerator.unwrap_model(model), data.eval, cfg.eval.batch_size)

    before = evaluate() if cfg.eval.before else None

    # --- train ---------------------------------------------------------------------------
    model.train()
    step, window_loss, window_pairs, window_start = 0, 0.0, 0, time.perf_counter()
    log_path = output_dir / "train_log.jsonl"
    log = log_path.open("w", encoding="utf-8") if is_main else None
    with progress_bar("training", total_steps, enabled=is_main, status=True) as advance:
        while step < total_steps:
            for batch in loader:
                with accelerator.accumulate(model):
                    queries = model(batch["queries"])  # (batch, dim)
                    documents = model(batch["documents"])  # (batch * (1 + k), dim)
                    loss = loss_fn(queries, documents)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                window_loss += loss.item() / cfg.train.gradient_accumulation_steps
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
                    }
                    if log:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    advance(steps_in_window, status=f"loss {record['loss']:.4f} · lr {record['lr']:.2e} · {record['pairs_per_s']:.1f} pairs/s")
                    window_loss, window_pairs, window_start = 0.0, 0, time.perf_counter()
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
