"""Set-up of a training run, in named phases: data, model, loss, loader, optimiser, lr schedule.

This is the only place that reads the composed config; what it builds (`TrainingSetup`) holds
plain objects and numbers, so the loop, the step and the log never see a `DictConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import parse_flag_from_env, set_seed
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from transformers import get_scheduler

from embedtune.console import announce
from embedtune.data.collate import PairCollator
from embedtune.data.lengths import Lengths, measure, sample_pairs
from embedtune.data.sampler import ShuffledBatchSampler
from embedtune.data.types import ScoredPairSet, TrainEvalData
from embedtune.errors import ConfigError, DataError
from embedtune.hub import check_upload
from embedtune.lora import apply_lora
from embedtune.losses.matryoshka import Matryoshka
from embedtune.model import Embedder, has_fast_bfloat16, hub_id, load_embedder
from embedtune.model_card import TrainingRecipe
from embedtune.training import checkpoint, tracking
from embedtune.training.config import instantiate_group
from embedtune.training.distributed import CrossDevice, check_launch, freeze_unused_pooler


@dataclass(frozen=True)
class Settings:
    """The numbers and switches that the loop, the step and the log read from the config."""

    total_steps: int
    steps_per_epoch: int
    # one optimizer step (embedtune.training.step)
    gradcache: bool
    mini_batch_size: int
    accumulation_steps: int
    max_grad_norm: float
    mixed_precision: str
    on_nonfinite: str  # stop | skip
    max_nonfinite_in_a_row: int  # skip: stop after this many non-finite steps in a row
    temperature_range: tuple[float, float] | None  # a learnable tau is clamped into [min, max]
    # between steps (embedtune.training.run, embedtune.training.run_log)
    log_every: int
    collapse_warn_below: float
    eval_before: bool
    eval_every: int | None  # held-out curve in eval_log.jsonl
    eval_batch_size: int
    model_every: int | None  # a loadable model in models/step-N (for merging)
    state_every: int | None  # the resumable state in state/step-N
    keep_last_states: int | None


@dataclass
class TrainingSetup:
    """Everything a run needs, built and prepared for the accelerator."""

    accelerator: Accelerator
    data: TrainEvalData
    model: torch.nn.Module  # the prepared (possibly DDP-wrapped) Embedder
    loss_fn: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: DataLoader
    sampler: ShuffledBatchSampler | None  # None for a stream
    settings: Settings
    output_dir: Path
    resume_from: list[Path]  # saved states to continue from, the first that loads (empty: a fresh start)
    resume: str | None  # what the config asked for (auto, a folder, or nothing)
    overwrite: bool  # a fresh start replaces an earlier run's outputs
    resolved_config: str  # config.yaml
    tracker: str | None  # an Accelerate tracker name, None for none
    tracker_config: dict
    batch_size: int
    negatives_per_query: int
    lengths: list[Lengths]  # token lengths of a sample of the pairs, against max_length
    card: TrainingRecipe  # what the saved models' cards say about the run
    hub_repo_id: str | None  # upload final/ there after training
    hub_private: bool

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def unwrapped_model(self) -> Embedder:
        return self.accelerator.unwrap_model(self.model)


def build(cfg: DictConfig, output_dir: Path) -> TrainingSetup:
    """Every phase of the set-up, in order; raises `ConfigError` / `DataError` before training."""
    if cfg.hub.repo_id is not None:  # first: a run that cannot publish stops before it loads or trains anything
        check_upload(cfg.hub.repo_id, cfg.hub.exist_ok)
    forget_previous_accelerator()
    cfg.train.mixed_precision = resolved_mixed_precision(cfg.train.mixed_precision)  # config.yaml and the card record what runs
    accelerator = Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=None if cfg.logger == "none" else cfg.logger,  # a second sink beside train_log.jsonl
        project_dir=output_dir,
    )
    set_seed(cfg.seed)
    check_launch(accelerator.num_processes)
    data = build_data(cfg)
    model = build_model(cfg, data)
    lengths = measure_lengths(cfg, data, model)
    loss_fn = build_loss(cfg, model)
    if cfg.negatives.cross_device and accelerator.num_processes > 1:  # every process's batch becomes negatives
        loss_fn = CrossDevice(loss_fn)
    check_data(data, cfg, accelerator.num_processes)
    optimizer = adamw(model, cfg.train.lr, cfg.train.weight_decay)
    model, optimizer, loader, sampler, steps_per_epoch = build_loader(cfg, data, model, optimizer, accelerator)
    output_dir.mkdir(parents=True, exist_ok=True)
    total_steps = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    # Stepped once per optimizer step by the loop (not prepared: Accelerate would step it per process).
    warmup_steps = math.ceil(cfg.train.warmup_ratio * total_steps)
    scheduler = get_scheduler(cfg.train.scheduler, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    if not any(factor(step) > 0 for step in range(total_steps) for factor in scheduler.lr_lambdas):
        raise ConfigError(
            f"train.scheduler={cfg.train.scheduler} with {total_steps} step(s) and {warmup_steps} warm-up step(s) (train.warmup_ratio={cfg.train.warmup_ratio}) "
            "gives every step a learning rate of 0: nothing would train. Use more steps or train.warmup_ratio=0"
        )
    accelerator.register_for_checkpointing(scheduler)
    resolved_config = OmegaConf.to_yaml(cfg, resolve=True)
    return TrainingSetup(
        accelerator=accelerator, data=data, model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
        loader=loader, sampler=sampler, settings=settings(cfg, total_steps, steps_per_epoch),
        output_dir=output_dir, resume_from=checkpoint.find(cfg.resume, output_dir), resume=cfg.resume, overwrite=cfg.overwrite,
        resolved_config=resolved_config, tracker=None if cfg.logger == "none" else cfg.logger,
        tracker_config=tracking.hyperparameters(cfg) if cfg.logger != "none" else {},
        batch_size=cfg.batch.size, negatives_per_query=cfg.negatives.per_query, lengths=lengths,
        card=card_recipe(cfg, data, loss_fn.loss if isinstance(loss_fn, CrossDevice) else loss_fn, resolved_config),
        hub_repo_id=cfg.hub.repo_id, hub_private=cfg.hub.private,
    )  # fmt: skip


def forget_previous_accelerator() -> None:
    """Clear the settings an earlier run of this process gave Accelerate (mixed precision, plugins),
    keeping its processes: a sweep (``-m``) runs its jobs one after another in one process, and
    Accelerate refuses an Accelerator whose mixed precision differs from the first one's."""
    AcceleratorState._reset_state(reset_partial_state=False)


def resolved_mixed_precision(asked: str) -> str:
    """train.mixed_precision as it will run on this process's device. ``auto`` is bf16 where the
    device computes in bfloat16 in hardware (`has_fast_bfloat16`: a recent GPU, a CPU with
    AVX512-BF16 or AMX) and no elsewhere; a bf16 asked for where it is emulated runs, with a
    warning, because it is many times slower there than float32."""
    if asked not in ("auto", "bf16"):
        return asked
    # The device Accelerate will pick: its process state, set up as the Accelerator to come sets it
    # up (ACCELERATE_USE_CPU as AcceleratorState reads it), and kept for it.
    device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
    if asked == "auto":
        return "bf16" if has_fast_bfloat16(device) else "no"
    if not has_fast_bfloat16(device):
        announce(
            f"warning: train.mixed_precision=bf16 on this {device.type}, which has no bfloat16 units (AVX512-BF16, AMX or a GPU "
            "from Ampere on): bfloat16 is emulated here and slower than float32; train.mixed_precision=auto picks what is fast"
        )
    return asked


def build_data(cfg: DictConfig) -> TrainEvalData:
    """The data preset's pairs and held-out set; a prompt preset (prompt=qwen3, prompt=e5) fills
    the prompts the data does not set itself."""
    data: TrainEvalData = instantiate_group(cfg.data, "data")
    return dataclasses.replace(
        data, query_prompt=data.query_prompt or cfg.prompt.query, document_prompt=data.document_prompt or cfg.prompt.document
    )


def build_model(cfg: DictConfig, data: TrainEvalData) -> Embedder:
    """The backbone with its pooling and prompts, and the memory and adapter options."""
    backbone = cfg.backbone
    model = load_embedder(
        backbone.path,
        pooling=cfg.pooling.mode,
        max_length=backbone.max_length,
        prompts={"query": data.query_prompt, "document": data.document_prompt},
        dtype=backbone.dtype,
        padding_side=backbone.padding_side,
        attn_implementation=backbone.attn_implementation,
        bidirectional=backbone.bidirectional,
    )
    if backbone.gradient_checkpointing:  # recompute activations in backward: less memory, more compute
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:  # train low-rank adapters only; final/ is saved merged
        model.backbone = apply_lora(model.backbone, cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, list(cfg.lora.target_modules))
    freeze_unused_pooler(model)  # never gets a gradient; DDP would wait for it forever
    return model


def measure_lengths(cfg: DictConfig, data: TrainEvalData, model: Embedder) -> list[Lengths]:
    """Token lengths of a sample of the training pairs (a stream: its first pairs, in the batches
    training will draw), so the run can say how much ``max_length`` cuts."""
    if data.stream is None:
        pairs = sample_pairs(data.train, cfg.seed)
    else:  # a copy drawing the batches training will draw; its batch counts are its own
        copy = dataclasses.replace(
            data.stream, batch_size=cfg.batch.size, seed=cfg.seed, negatives_per_query=cfg.negatives.per_query, batches_per_source={}
        )
        pairs = sample_pairs(copy, cfg.seed)
    return measure(
        model.tokenizer,
        pairs,
        (data.query_prompt, data.document_prompt),
        (cfg.train.query_max_length, cfg.backbone.max_length),
        cfg.negatives.per_query,
    )


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


def check_data(data: TrainEvalData, cfg: DictConfig, num_processes: int) -> None:
    """A stream needs a step count; a list needs enough pairs for one full batch of every
    process, and enough hard negatives on every pair."""
    if data.stream is not None:
        if cfg.train.max_steps is None:
            raise ConfigError("data=stream: a stream has no end, set train.max_steps")
        return
    global_batch, negatives_per_query = cfg.batch.size * num_processes, cfg.negatives.per_query
    if len(data.train) < global_batch:
        raise ConfigError(f"batch.size needs {global_batch} training pairs per step; {data.source or 'the data'} has {len(data.train)}")
    short = [index for index, pair in enumerate(data.train) if len(pair.negatives) < negatives_per_query]
    if short:
        first = data.train[short[0]]
        raise DataError(
            f"{data.source or 'data'}: {len(short)} pair(s) have fewer than negatives.per_query={negatives_per_query} "
            f"hard negatives (first: query {first.query!r:.60} has {len(first.negatives)}); lower negatives.per_query or mine more"
        )


def build_loader(cfg: DictConfig, data: TrainEvalData, model: Embedder, optimizer, accelerator: Accelerator):
    """The batches, and the model and optimizer prepared with them: ``(model, optimizer, loader,
    sampler, steps_per_epoch)``. A stream already yields one global batch per item, sharded by
    rank, so Accelerate does not split it; a list goes through the no-duplicates sampler."""
    collate = PairCollator(
        model.tokenizer,
        query_max_length=cfg.train.query_max_length,
        document_max_length=cfg.backbone.max_length,
        negatives_per_query=cfg.negatives.per_query,
        query_prompt=data.query_prompt,
        document_prompt=data.document_prompt,
    )
    # Its own generator: starting an epoch's iterator then draws no number from the global RNG,
    # so dropout masks do not depend on where a run was resumed.
    generator = torch.Generator().manual_seed(cfg.seed)
    if data.stream is not None:
        stream = dataclasses.replace(data.stream, batch_size=cfg.batch.size, seed=cfg.seed, rank=accelerator.process_index,
                                     world_size=accelerator.num_processes, negatives_per_query=cfg.negatives.per_query)  # fmt: skip
        model, optimizer = accelerator.prepare(model, optimizer)
        loader = DataLoader(stream, batch_size=None, collate_fn=collate, num_workers=0, generator=generator)
        return model, optimizer, loader, None, cfg.train.max_steps
    sampler = ShuffledBatchSampler(data.train, cfg.batch.size, cfg.seed, cfg.negatives.per_query, cfg.batch.no_duplicates)
    loader = DataLoader(data.train, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.train.num_workers, generator=generator)
    if len(sampler) < accelerator.num_processes * cfg.train.gradient_accumulation_steps:
        raise DataError(
            f"{data.source or 'data'}: cannot form a full step of batches of {cfg.batch.size} pairs without repeating a text "
            f"({sampler.skipped_last_epoch} of {len(data.train)} pairs left over; hard negatives that are other pairs' positives do this). "
            "Lower batch.size, use fewer negatives.per_query, or set batch.no_duplicates=false"
        )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    return model, optimizer, loader, sampler, max(1, len(loader) // cfg.train.gradient_accumulation_steps)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW over `parameter_groups`, fused (one kernel updates every parameter; the Hugging
    Face Trainer's default, adamw_torch_fused) where torch has that kernel for the parameters'
    device (GPUs; CPUs from torch 2.4), else its multi-tensor form. Both compute the same update."""
    try:
        return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, fused=True)
    except RuntimeError:  # no fused kernel for this device or torch
        return torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay matrices only, never biases, norms or the loss's scalars."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def card_recipe(cfg: DictConfig, data: TrainEvalData, loss_fn, resolved_config: str) -> TrainingRecipe:
    """What the model cards say about the run: the base model, the data and its Hub data sets
    (``hf:NAME`` sources), the loss with its docstrings (formula and papers), the settings that
    shape the result, and the whole resolved config."""
    losses = [loss_fn, loss_fn.loss] if isinstance(loss_fn, Matryoshka) else [loss_fn]
    loss_settings = {f"loss.{key}": value for key, value in cfg.loss.items() if key != "_target_"}
    chosen = {
        "stage": cfg.run_name, "batch.size": cfg.batch.size, "negatives.per_query": cfg.negatives.per_query,
        "train.lr": cfg.train.lr, "train.scheduler": cfg.train.scheduler, "train.warmup_ratio": cfg.train.warmup_ratio,
        "train.weight_decay": cfg.train.weight_decay, "train.max_grad_norm": cfg.train.max_grad_norm, "train.epochs": cfg.train.epochs,
        "train.max_steps": cfg.train.max_steps, "train.mixed_precision": cfg.train.mixed_precision,
        "train.query_max_length": cfg.train.query_max_length, "backbone.max_length": cfg.backbone.max_length, **loss_settings,
        "temperature.learnable": cfg.temperature.learnable, "mrl.dims": cfg.mrl.dims, "batch.gradcache": cfg.batch.gradcache,
        "batch.no_duplicates": cfg.batch.no_duplicates, "negatives.cross_device": cfg.negatives.cross_device,
        "lora.enabled": cfg.lora.enabled, "seed": cfg.seed,
    }  # fmt: skip
    sources = OmegaConf.to_container(cfg.data, resolve=True)
    return TrainingRecipe(
        base_model=cfg.backbone.path,
        base_model_id=hub_id(cfg.backbone.path),
        loss_name="(".join(type(loss).__name__ for loss in losses) + ")" * (len(losses) - 1),
        loss_descriptions=[type(loss).__doc__ or "" for loss in losses],
        data_source=data.source or "data",
        train_pairs=len(data.train) if data.stream is None else None,
        datasets=hub_datasets(sources),
        eval_name=data.eval.name if data.eval is not None else None,
        eval_task=None if data.eval is None else "sts" if isinstance(data.eval, ScoredPairSet) else "retrieval",
        hyperparameters={key: OmegaConf.to_container(value) if OmegaConf.is_config(value) else value for key, value in chosen.items()},
        config_yaml=resolved_config,
    )


def hub_datasets(node) -> list[str]:
    """The Hugging Face data sets a data config reads: every ``hf:NAME[:SPLIT]`` in it, as NAME."""
    if isinstance(node, dict):
        return list(dict.fromkeys(name for value in node.values() for name in hub_datasets(value)))
    if isinstance(node, list):
        return list(dict.fromkeys(name for value in node for name in hub_datasets(value)))
    return [node[3:].split(":")[0]] if isinstance(node, str) and node.startswith("hf:") else []


def settings(cfg: DictConfig, total_steps: int, steps_per_epoch: int) -> Settings:
    batch, train, evaluation, save = cfg.batch, cfg.train, cfg.eval, cfg.save
    return Settings(
        total_steps=total_steps, steps_per_epoch=steps_per_epoch,
        gradcache=batch.gradcache, mini_batch_size=batch.mini_batch_size, accumulation_steps=train.gradient_accumulation_steps,
        max_grad_norm=train.max_grad_norm, mixed_precision=train.mixed_precision,
        on_nonfinite=train.on_nonfinite, max_nonfinite_in_a_row=train.max_nonfinite_in_a_row,
        temperature_range=(cfg.temperature.min, cfg.temperature.max) if cfg.temperature.learnable else None,
        log_every=train.log_every, collapse_warn_below=cfg.collapse.warn_below,
        eval_before=evaluation.before, eval_every=evaluation.every_n_steps, eval_batch_size=evaluation.batch_size,
        model_every=save.model_every_n_steps, state_every=save.state_every_n_steps, keep_last_states=save.keep_last_states,
    )  # fmt: skip
