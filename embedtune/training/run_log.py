"""What a run reports as it goes: ``train_log.jsonl`` (one record per logging window of
``log_every`` steps: loss, lr, throughput, collapse indicators), ``eval_log.jsonl`` (the held-out
curve), the same numbers to an Accelerate tracker, and a one-time collapse warning.

The window's loss and geometry sums live in the `TrainerState`, so a resumed run logs the very
averages an uninterrupted one would have.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from embedtune.console import console
from embedtune.eval.diagnostics import geometry
from embedtune.fileio import write_text_atomic
from embedtune.training import tracking
from embedtune.training.build import TrainingSetup
from embedtune.training.checkpoint import TrainerState
from embedtune.training.step import MicroStep


class RunLog:
    """The run's log files and tracker; only the main process writes files."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.accelerator = setup.accelerator
        self.write_files = setup.is_main
        self.train_path = setup.output_dir / "train_log.jsonl"
        self.eval_path = setup.output_dir / "eval_log.jsonl"
        self.log_every = setup.settings.log_every
        self.steps_per_epoch = setup.settings.steps_per_epoch
        self.accumulation_steps = setup.settings.accumulation_steps
        self.collapse_warn_below = setup.settings.collapse_warn_below
        self.warned_collapse = False
        self.window_pairs, self.window_start = 0, time.perf_counter()
        self.handle = None

    def begin(self, step: int, resumed: bool) -> None:
        """A fresh run starts both logs empty; a resumed one drops the records after ``step``
        (it writes them again). Then the training log is opened for appending."""
        if self.write_files:
            for path in (self.train_path, self.eval_path):
                if resumed:
                    keep_records_until(path, step)
                else:
                    path.write_text("", encoding="utf-8")
            self.handle = self.train_path.open("a", encoding="utf-8")

    def add(self, state: TrainerState, micro: MicroStep) -> None:
        """Count a finite micro-step into the current window."""
        state.window_loss += micro.loss / self.accumulation_steps
        state.window_geometry.append(geometry(micro.queries, micro.documents))
        self.window_pairs += micro.queries.shape[0] * self.accelerator.num_processes

    def step_done(self, state: TrainerState, lr: float, loss_params, total_steps: int) -> str | None:
        """After optimizer step ``state.step``: at the end of a window, write its record and
        return a status line for the progress bar (None inside a window)."""
        step = state.step
        if step % self.log_every and step != total_steps:
            return None
        steps_in_window = (step - 1) % self.log_every + 1
        record = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": state.window_loss / steps_in_window,
            "lr": lr,
            "pairs_per_s": self.window_pairs / (time.perf_counter() - self.window_start),
            **{name: sum(g[name] for g in state.window_geometry) / len(state.window_geometry) for name in state.window_geometry[0]},
        }
        if "logit_scale" in loss_params:
            record["temperature"] = 1 / loss_params["logit_scale"].exp().item()
        self._warn_if_collapsing(record)
        if self.handle:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        self.accelerator.log(tracking.scalars(record, "train/"), step=step)
        state.window_loss, state.window_geometry = 0.0, []
        self.window_pairs, self.window_start = 0, time.perf_counter()
        return f"loss {record['loss']:.4f} · lr {record['lr']:.2e} · {record['pairs_per_s']:.1f} pairs/s"

    def eval_point(self, step: int, metrics: dict | None) -> None:
        """A held-out evaluation as an eval_log.jsonl record and a tracker point: the eval curve."""
        if metrics is None:
            return
        if self.write_files:
            with self.eval_path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self.accelerator.log(tracking.scalars(metrics, "eval/"), step=step)

    def close(self) -> None:
        if self.handle:
            self.handle.close()
            self.handle = None

    def _warn_if_collapsing(self, record: dict) -> None:
        if self.write_files and not self.warned_collapse and record["embedding_std"] < self.collapse_warn_below:
            self.warned_collapse = True
            console.print(
                f"[bold yellow]warning:[/] embeddings are collapsing at step {record['step']}: the mean std of a dimension is "
                f"{record['embedding_std']:.4f} x 1/sqrt(dim) (healthy spaces sit near 1). Lower the learning rate, "
                "raise the temperature or check the data for near-identical pairs."
            )


def keep_records_until(path: Path, step: int) -> None:
    """Drop a jsonl log's records after ``step`` (a resumed run writes them again)."""
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if json.loads(line)["step"] <= step] if path.is_file() else []
    write_text_atomic(path, "".join(line + "\n" for line in kept))
