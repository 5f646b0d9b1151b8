"""The training recipe, top to bottom: build from config, start or resume, train, finish.

One Accelerate loop serves one CPU, one GPU or many processes (``accelerate launch``); only the
main process writes logs and models. The set-up lives in `embedtune.training.build`, one step in
`embedtune.training.step`, the logs in `embedtune.training.run_log`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig

from embedtune.console import console, progress_bar, stdout
from embedtune.data.lengths import MUCH_CUT
from embedtune.eval.held_out import evaluate_held_out
from embedtune.eval.tables import comparison_table
from embedtune.eval.tasks import TASK_TITLES, task_of
from embedtune.fileio import json_text, write_text_atomic
from embedtune.hub import upload_model
from embedtune.model_card import CARD_FILE
from embedtune.training import checkpoint
from embedtune.training.build import TrainingSetup, build
from embedtune.training.card import run_card
from embedtune.training.checkpoint import TrainerState
from embedtune.training.config import apply_renamed_keys, validate
from embedtune.training.outputs import clear_run_outputs
from embedtune.training.run_log import RunLog
from embedtune.training.step import train_step


def run(cfg: DictConfig, output_dir: str | Path) -> dict:
    """Train as ``cfg`` says and write everything under ``output_dir``.

    Returns ``{"before": metrics | None, "after": metrics | None, "steps": n}``.
    """
    for notice in apply_renamed_keys(cfg):
        console.print(f"[bold yellow]warning:[/] {notice}")
    validate(cfg)
    setup = build(cfg, Path(output_dir))
    log = RunLog(setup)
    state = start_or_resume(setup, log)
    total_steps = setup.settings.total_steps
    setup.model.train()
    try:
        with progress_bar("training", total_steps, enabled=setup.is_main, status=True) as advance, stop_requests() as stop_requested:
            advance(state.step)
            clock_start, seconds_before = time.perf_counter(), state.train_seconds
            for batch in batches_until_done(setup, state):
                micro = train_step(setup, batch, state)  # forward, backward; the update when gradients sync
                if not micro.finite:
                    continue
                log.add(state, micro)
                if not micro.stepped:
                    continue
                setup.scheduler.step()
                state.step += 1
                state.train_seconds = seconds_before + time.perf_counter() - clock_start
                advance(status=log.step_done(state, setup.scheduler.get_last_lr()[0], setup.unwrapped_model().loss_params, total_steps))
                between_steps(setup, state, log, stop_requested())  # the eval curve, saves, Ctrl-C
    finally:
        log.close()
    return finish(setup, state, log)


def start_or_resume(setup: TrainingSetup, log: RunLog) -> TrainerState:
    """A fresh state (after scoring the starting model), or exactly where a saved state stopped:
    weights, optimizer, RNG, data position and the open logging window. With ``overwrite``, a
    fresh start first removes an earlier run's outputs."""
    if setup.is_main and setup.resume == "auto" and not setup.resume_from:
        console.print(f"resume=auto: no saved state in {setup.output_dir / 'state'}, starting from the beginning")
    if setup.is_main and setup.overwrite and not setup.resume_from:
        clear_run_outputs(setup.output_dir)
    setup.accelerator.wait_for_everyone()
    if setup.tracker:
        setup.accelerator.init_trackers("embedtune", config=setup.tracker_config)
    if not setup.resume_from:
        state = TrainerState(before=evaluate(setup) if setup.settings.eval_before else None)
        log.begin(0, resumed=False)
        log.eval_point(0, state.before)
        resumed_from = None
    else:
        state, resumed_from = checkpoint.load(
            setup.accelerator, setup.resume_from, warn=lambda line: console.print(f"[bold yellow]warning:[/] {line}")
        )
        if setup.sampler is None:  # a stream: each item is one global batch
            setup.loader.dataset.start_batch = state.batches_in_epoch
        else:
            setup.sampler.set_epoch(state.epoch)
            setup.sampler.skip(state.batches_in_epoch * setup.accelerator.num_processes)  # the plan counts every process's batches
            setup.loader.set_epoch(state.epoch)
        log.begin(state.step, resumed=True)
    if setup.is_main:
        write_text_atomic(setup.output_dir / "config.yaml", setup.resolved_config)
        console.print(describe(setup) + (f" (resumed at step {state.step} from {resumed_from})" if resumed_from else ""))
        for lengths in setup.lengths:
            much = lengths.cut_texts > MUCH_CUT
            console.print(
                ("[bold yellow]warning:[/] " if much else "")
                + lengths.describe()
                + (f"; raise {lengths.option} to see more of them" if much else ""),
                highlight=False,
            )
    return state


def describe(setup: TrainingSetup) -> str:
    """The run in one line: data, steps, batch, processes, negatives, where it writes."""
    data = setup.data
    pairs = f"{len(data.train)} pairs" if data.stream is None else "streaming"
    return (
        f"[bold]embedtune train[/]: {pairs} from {data.source or 'data'}, {setup.settings.total_steps} steps x {setup.batch_size} pairs "
        f"x {setup.accelerator.num_processes} process(es), {setup.negatives_per_query} hard negative(s)/query -> {setup.output_dir}"
    )


def batches_until_done(setup: TrainingSetup, state: TrainerState) -> Iterator[dict]:
    """The loader's batches, epoch after epoch, until ``total_steps`` optimizer steps are done;
    ``state`` tracks the epoch and the batches consumed in it (the resume position)."""
    while state.step < setup.settings.total_steps:
        for batch in setup.loader:
            state.batches_in_epoch += 1
            yield batch
            if state.step >= setup.settings.total_steps:
                return
        state.epoch += 1  # the loader is exhausted: the next pass is a new epoch
        state.batches_in_epoch = 0


def between_steps(setup: TrainingSetup, state: TrainerState, log: RunLog, stop_requested: bool) -> None:
    """After an optimizer step and before the next: the held-out curve, model snapshots for
    merging, the resumable state, and a Ctrl-C's save-and-stop. The last step does none of
    these (`finish` saves and evaluates the final model)."""
    step, settings = state.step, setup.settings
    if step >= settings.total_steps:
        return
    metrics = None
    if settings.eval_every and step % settings.eval_every == 0:
        metrics = evaluate(setup, show_progress=False)
        log.eval_point(step, metrics)
    if setup.is_main and settings.model_every and step % settings.model_every == 0:
        folder = setup.output_dir / "models" / f"step-{step:05d}"
        setup.unwrapped_model().save(folder, card=run_card(setup, state, str(folder), after=metrics))
    if settings.state_every and step % settings.state_every == 0:
        checkpoint.save(setup.accelerator, setup.output_dir, state, settings.keep_last_states)
    if stop_requested:
        folder = checkpoint.save(setup.accelerator, setup.output_dir, state, settings.keep_last_states)
        console.print(f"[bold]interrupted[/] after step {step}: state saved to {folder}; continue with resume=auto")
        raise KeyboardInterrupt


def finish(setup: TrainingSetup, state: TrainerState, log: RunLog) -> dict:
    """Save the final model, score it on the held-out set, and write and show the comparison.
    The model is saved before it is scored (an evaluation that fails loses no training), with a
    card that gains the held-out numbers once they exist."""
    accelerator, total_steps = setup.accelerator, setup.settings.total_steps
    final = setup.output_dir / "final"
    model_id = setup.hub_repo_id or str(final)  # what the card's usage snippet loads
    accelerator.wait_for_everyone()
    if setup.is_main:
        setup.unwrapped_model().save(final, card=run_card(setup, state, model_id))
    after = evaluate(setup)
    log.eval_point(total_steps, after)
    accelerator.end_training()
    result = {"before": state.before, "after": after, "steps": total_steps}
    if setup.is_main and setup.data.eval is not None:
        write_text_atomic(final / CARD_FILE, run_card(setup, state, model_id, after=after))
        write_text_atomic(setup.output_dir / "eval.json", json_text({"data": setup.data.eval.name, **result}))
        stdout.print(comparison_table(f"held-out {TASK_TITLES[task_of(after)]}: {setup.data.eval.name}", state.before, after))
        console.print(f"model saved to [bold]{final}[/]")
    if setup.is_main and setup.hub_repo_id:
        url = upload_model(
            final,
            setup.hub_repo_id,
            setup.hub_private,
            f"embedtune: {setup.card.loss_name} fine-tune of {setup.card.base_model}, {total_steps} steps",
        )
        console.print(f"uploaded to [bold]{url}[/]")
    return result


def evaluate(setup: TrainingSetup, show_progress: bool = True) -> dict | None:
    """Held-out metrics of the current model (retrieval or STS), on the main process only."""
    if setup.data.eval is None or not setup.is_main:
        return None
    return evaluate_held_out(setup.unwrapped_model(), setup.data.eval, setup.settings.eval_batch_size, show_progress=show_progress)


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
