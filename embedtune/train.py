"""The training recipe, top to bottom: build from config, evaluate the start, train, save, evaluate.

One Accelerate loop serves one CPU, one GPU or many processes (``accelerate launch``); only the
main process writes logs and models.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device, set_seed
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch.utils.data import DataLoader
from transformers import get_scheduler

from embedtune import checkpoint, tracking
from embedtune.checkpoint import TrainerState
from embedtune.config import instantiate_group, validate
from embedtune.data.collate import PairCollator
from embedtune.data.sampler import ShuffledBatchSampler
from embedtune.data.types import TrainEvalData
from embedtune.distributed import CrossDevice, check_launch, freeze_unused_pooler
from embedtune.errors import ConfigError, DataError, EmbedtuneError
from embedtune.eval.diagnostics import geometry
from embedtune.eval.held_out import evaluate_held_out, task_name
from embedtune.gradcache import gradcache_step
from embedtune.io import write_text_atomic
from embedtune.losses.matryoshka import Matryoshka
from embedtune.lora import apply_lora
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
        log_with=None if cfg.logger == "none" else cfg.logger,  # a second sink beside train_log.jsonl
        project_dir=output_dir,
    )
    set_seed(cfg.seed)
    check_launch(accelerator.num_processes)
    is_main = accelerator.is_main_process

    # --- build: data, model, loss, optimiser -----------------------------------------------
    data: TrainEvalData = instantiate_group(cfg.data, "data")
    # A prompt preset (prompt=qwen3, prompt=e5) fills the prompts the data does not set itself.
    data = dataclasses.replace(data, query_prompt=data.query_prompt or cfg.prompt.query, document_prompt=data.document_prompt or cfg.prompt.document)
    model = load_embedder(
        cfg.backbone.path,
        pooling=cfg.pooling.mode,
        max_length=cfg.backbone.max_length,
        prompts={"query": data.query_prompt, "document": data.document_prompt},
        dtype=cfg.backbone.dtype,
        padding_side=cfg.backbone.padding_side,
        attn_implementation=cfg.backbone.attn_implementation,
        bidirectional=cfg.backbone.bidirectional,
    )
    if cfg.backbone.gradient_checkpointing:  # recompute activations in backward: less memory, ~30% more compute
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:  # train low-rank adapters only; final/ is saved merged
        model.backbone = apply_lora(model.backbone, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, list(cfg.lora.target_modules))
    freeze_unused_pooler(model)  # never gets a gradient; DDP would wait for it forever
    loss_fn = build_loss(cfg, model)
    if cfg.negatives.cross_device and accelerator.num_processes > 1:  # every process's batch becomes negatives
        loss_fn = CrossDevice(loss_fn)
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
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = checkpoint.find(cfg.resume, output_dir)
    if data.stream is not None:  # already one batch per item, sharded by rank: not for Accelerate to split
        stream = dataclasses.replace(data.stream, batch_size=cfg.batch.size, seed=cfg.seed, rank=accelerator.process_index, world_size=accelerator.num_processes, negatives_per_query=cfg.negatives.per_query)
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = DataLoader(stream, batch_size=None, collate_fn=collate, num_workers=0, generator=torch.Generator().manual_seed(cfg.seed))
        steps_per_epoch = cfg.train.max_steps
    else:
        sampler = ShuffledBatchSampler(data.train, cfg.batch.size, cfg.seed, cfg.negatives.per_query, cfg.batch.no_duplicates)
        # Its own generator: starting an epoch's iterator then draws no number from the global RNG,
        # so dropout masks do not depend on where a run was resumed.
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers, generator=generator)
        if len(sampler) < accelerator.num_processes * cfg.train.gradient_accumulation_steps:
            raise DataError(
                f"{data.source or 'data'}: cannot form a full step of batches of {cfg.batch.size} pairs without repeating a text "
                f"({sampler.skipped_last_epoch} of {len(data.train)} pairs left over; hard negatives that are other pairs' positives do this). "
                "Lower batch.size, use fewer negatives.per_query, or set batch.no_duplicates=false"
            )
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        steps_per_epoch = max(1, len(loader) // cfg.train.gradient_accumulation_steps)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Stepped once per optimizer step by us (not prepared: Accelerate would step it per process).
    scheduler = get_scheduler(cfg.train.scheduler, optimizer, num_warmup_steps=math.ceil(cfg.train.warmup_ratio * total_steps), num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)

    def evaluate(show_progress: bool = True) -> dict | None:
        if data.eval is None or not is_main:
            return None
        return evaluate_held_out(accelerator.unwrap_model(model), data.eval, cfg.eval.batch_size, show_progress=show_progress)  # retrieval or STS

    log_path, eval_log_path = output_dir / "train_log.jsonl", output_dir / "eval_log.jsonl"

    def log_eval(step: int, metrics: dict | None) -> None:
        """A held-out evaluation as an eval_log.jsonl record and a tracker point: the eval curve."""
        if metrics is None:
            return
        with eval_log_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **metrics}) + "\n")
        accelerator.log(tracking.scalars(metrics, "eval/"), step=step)

    if cfg.logger != "none":
        accelerator.init_trackers("embedtune", config=tracking.hyperparameters(cfg))
    if resume_from is None:
        state = TrainerState(before=evaluate() if cfg.eval.before else None)
        if is_main:
            for path in (log_path, eval_log_path):
                path.write_text("", encoding="utf-8")
            log_eval(0, state.before)
    else:  # continue exactly where the saved state stopped: weights, optimizer, RNG, data position, log
        state = checkpoint.load(accelerator, resume_from)
        if data.stream is not None:
            loader.dataset.start_batch = state.batches_in_epoch  # each stream item is one global batch
        else:
            sampler.set_epoch(state.epoch)
            sampler.skip(state.batches_in_epoch * accelerator.num_processes)  # the plan counts every process's batches
            loader.set_epoch(state.epoch)
        if is_main:
            for path in (log_path, eval_log_path):
                keep_records_until(path, state.step)
    if is_main:
        write_text_atomic(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        console.print(
            f"[bold]embedtune train[/]: {f'{len(data.train)} pairs' if data.stream is None else 'streaming'} from {data.source or 'data'}, "
            f"{total_steps} steps x {cfg.batch.size} pairs x {accelerator.num_processes} process(es), "
            f"{cfg.negatives.per_query} hard negative(s)/query -> {output_dir}"
            + (f" (resumed at step {state.step} from {resume_from})" if resume_from else "")
        )

    # --- train ---------------------------------------------------------------------------
    model.train()
    loss_params = accelerator.unwrap_model(model).loss_params
    window_pairs, window_start, warned_collapse = 0, time.perf_counter(), False
    log = log_path.open("a", encoding="utf-8") if is_main else None
    try:
        with progress_bar("training", total_steps, enabled=is_main, status=True) as advance, stop_requests() as stop_requested:
            advance(state.step)
            while state.step < total_steps:
                for batch in loader:
                    state.batches_in_epoch += 1
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
                        finite = True
                        if accelerator.sync_gradients:
                            grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm))
                            finite = math.isfinite(loss.item()) and (math.isfinite(grad_norm) or cfg.train.mixed_precision == "fp16")  # fp16: the grad scaler skips inf steps itself
                            if not finite:
                                handle_nonfinite(cfg.train.on_nonfinite, state, loss.item(), grad_norm, is_main)
                        if finite:
                            optimizer.step()
                        optimizer.zero_grad()
                        clamp_temperature(loss_params, cfg.temperature)
                    if not finite:
                        continue
                    state.window_loss += loss.item() / cfg.train.gradient_accumulation_steps
                    state.window_geometry.append(geometry(queries.detach(), documents.detach()))
                    window_pairs += queries.shape[0] * accelerator.num_processes
                    if not accelerator.sync_gradients:
                        continue
                    scheduler.step()
                    state.step += 1
                    step = state.step
                    if step % cfg.train.log_every == 0 or step == total_steps:
                        steps_in_window = (step - 1) % cfg.train.log_every + 1
                        geometry_means = {name: sum(g[name] for g in state.window_geometry) / len(state.window_geometry) for name in state.window_geometry[0]}
                        record = {
                            "step": step,
                            "epoch": round(step / steps_per_epoch, 4),
                            "loss": state.window_loss / steps_in_window,
                            "lr": scheduler.get_last_lr()[0],
                            "pairs_per_s": window_pairs / (time.perf_counter() - window_start),
                            **geometry_means,
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
                        accelerator.log(tracking.scalars(record, "train/"), step=step)
                        advance(steps_in_window, status=f"loss {record['loss']:.4f} · lr {record['lr']:.2e} · {record['pairs_per_s']:.1f} pairs/s")
                        state.window_loss, state.window_geometry = 0.0, []
                        window_pairs, window_start = 0, time.perf_counter()
                    if cfg.eval.every_n_steps and step % cfg.eval.every_n_steps == 0 and step < total_steps:
                        log_eval(step, evaluate(show_progress=False))  # the held-out curve; the final model is evaluated below
                    if is_main and cfg.train.save_every and step % cfg.train.save_every == 0 and step < total_steps:
                        accelerator.unwrap_model(model).save(output_dir / "checkpoints" / f"step-{step:05d}")  # for merging
                    if cfg.checkpoint.every_n_steps and step % cfg.checkpoint.every_n_steps == 0 and step < total_steps:
                        checkpoint.save(accelerator, output_dir, state, cfg.checkpoint.keep_last)
                    if stop_requested() and step < total_steps:
                        folder = checkpoint.save(accelerator, output_dir, state, cfg.checkpoint.keep_last)
                        console.print(f"[bold]interrupted[/] after step {step}: state saved to {folder}; continue with resume=auto")
                        raise KeyboardInterrupt
                    if step >= total_steps:
                        break
                else:  # the loader is exhausted: the next pass is a new epoch
                    state.epoch += 1
                    state.batches_in_epoch = 0
    finally:
        if log:
            log.close()
    before = state.before

    # --- save and evaluate ----------------------------------------------------------------
    accelerator.wait_for_everyone()
    if is_main:
        accelerator.unwrap_model(model).save(output_dir / "final")
    after = evaluate()
    log_eval(total_steps, after)
    accelerator.end_training()
    result = {"before": before, "after": after, "steps": total_steps}
    if is_main and data.eval is not None:
        write_text_atomic(output_dir / "eval.json", json.dumps({"data": data.eval.name, **result}, indent=2) + "\n")
        stdout.print(comparison_table(f"held-out {task_name(data.eval)}: {data.eval.name}", before, after))
        console.print(f"model saved to [bold]{output_dir / 'final'}[/]")
    return result


def keep_records_until(path: Path, step: int) -> None:
    """Drop a jsonl log's records after ``step`` (a resumed run writes them again)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step] if path.is_file() else []
    write_text_atomic(path, "".join(line + "\n" for line in kept))


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


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Ctrl-C during training: the first one asks the loop to stop after the current step (then
    a consistent, resumable state is saved); a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    requested = []

    def on_sigint(signum, frame) -> None:
        if requested:
            raise KeyboardInterrupt
        requested.append(signum)
        console.print("[bold]Ctrl-C[/]: stopping after this step to save a resumable state (Ctrl-C again aborts now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: bool(requested)
    finally:
        signal.signal(signal.SIGINT, previous)


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
def clamp_temperature(loss_params: torch.nn.ParameterDict, temperature: DictConfig) -> None:
    """Keep a learnable tau within [min, max] (open_clip clamps its logit scale the same way)."""
    if "logit_scale" in loss_params:
        loss_params["logit_scale"].clamp_(math.log(1 / temperature.max), math.log(1 / temperature.min))


@torch.no_grad()
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
