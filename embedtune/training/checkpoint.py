"""Resumable training state: save it atomically every N steps, find the latest, load it back.

A state folder (``<output_dir>/state/step-NNNNN/``) holds what Accelerate saves — model weights
(with the loss's learnable scalars), optimizer, scheduler, every process's RNG states — plus
``trainer_state.json``: the step, the data position (epoch and batches consumed in it) and the
unfinished logging window, so a resumed run continues with the very batches, dropout masks and
logged averages an uninterrupted run would have produced.

Folders are written under a temporary name and renamed into place: a kill at any moment leaves
the previous complete state or the new complete one, never a half-written folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from embedtune.errors import ConfigError, EmbedtuneError

STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where training stands after ``step`` optimizer steps."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0  # loader batches of ``epoch`` already consumed (per process)
    window_loss: float = 0.0
    window_geometry: list[dict] = field(default_factory=list)
    before: dict | None = None  # the starting model's eval metrics, kept for the final table
    skipped_nonfinite: int = 0  # steps dropped for a NaN/inf loss or gradient (train.on_nonfinite=skip)
    nonfinite_in_a_row: int = 0  # of those, how many just now, one after another
    train_seconds: float = 0.0  # wall time of the training loop so far, over every session of a resumed run


def state_dir(output_dir: Path, step: int) -> Path:
    return output_dir / "state" / f"step-{step:05d}"


def save(accelerator, output_dir: Path, state: TrainerState, keep_last: int | None) -> Path:
    """Save model, optimizer, scheduler, RNG and ``state`` to ``state/step-N`` atomically, then
    drop the oldest states beyond ``keep_last``. Called on every process (each saves its RNG)."""
    folder = state_dir(output_dir, state.step)
    tmp = folder.with_name(f".{folder.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # the state becomes visible complete, or not at all
        if keep_last:
            for old in sorted(complete_states(output_dir))[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return folder


def complete_states(output_dir: Path) -> list[Path]:
    """State folders that finished writing (temporary ones start with a dot), oldest first."""
    root = output_dir / "state"
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []


def find(resume: str | None, output_dir: Path) -> list[Path]:
    """The states to resume from, the one to try first first: ``auto`` = the complete ones in
    ``output_dir``, latest first (none: a fresh start), or an explicit folder."""
    if resume is None:
        return []
    if resume == "auto":
        return complete_states(output_dir)[::-1]
    folder = Path(resume)
    if not (folder / STATE_FILE).is_file():
        raise ConfigError(f"resume={resume}: not a training state folder (no {STATE_FILE}); use resume=auto or a state/step-NNNNN folder")
    return [folder]


def load(accelerator, candidates: list[Path], warn) -> tuple[TrainerState, Path]:
    """Restore everything `save` wrote, from the first of ``candidates`` that loads whole: a
    damaged one (a file cut short by a full disk, say) is named through ``warn`` and the next,
    older one tried; when none loads, an `EmbedtuneError` names them. Each attempt restores
    every part again, so a half-loaded damaged state leaves nothing behind."""
    damaged = []
    for folder in candidates:
        try:
            state = TrainerState(**json.loads((folder / STATE_FILE).read_text(encoding="utf-8")))
            accelerator.load_state(str(folder))
        except Exception as error:  # safetensors, torch.load, json and OS errors all mean: damaged
            reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
            damaged.append(f"{folder} ({reason})")
            if folder is not candidates[-1]:
                warn(f"the saved state {folder} is damaged ({reason}); trying the one before it")
            continue
        return state, folder
    raise EmbedtuneError(
        f"no saved state could be loaded: {'; '.join(damaged)}. Remove the damaged folder(s), or start over with overwrite=true"
    )
