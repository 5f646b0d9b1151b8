"""The resumable generation loop and its files.

A run writes three files next to each other: ``OUT`` (the kept pairs: ``query``, ``positive``,
``template``, ``doc_id`` and, when filtered, ``rank``, the columns `embedtune train data=files`
and ``data=stream`` read), ``OUT.rejected`` (JSON lines: every generation not kept and why, so
nothing is dropped unseen) and ``OUT.meta.json`` (the generator, templates, sampling and filter
settings, and at the end the counts).

The jobs (document x template) are cut into fixed batches. Each batch is generated under its own
seed (`embedtune.synth.generate.batch_seed`), judged, and appended to the two row files, flushed.
A killed run leaves whole batches plus at most one torn line; ``--resume`` cuts the torn line off,
reads which (template, document) pairs are in either file, and regenerates only the batches that
still have a job to do, writing only those jobs' rows. A batch regenerated whole comes out as it
did the first time, so a resumed file ends with the same rows as an uninterrupted run.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from embedtune.errors import DataError, EmbedtuneError
from embedtune.fileio import json_text, read_json, write_text_atomic
from embedtune.synth.consistency import ConsistencyFilter
from embedtune.synth.corpus import Document
from embedtune.synth.generate import Generator, Sampling
from embedtune.synth.templates import REJECTIONS, Template, clean

OUTCOMES = (*REJECTIONS, "filtered", "kept")  # what becomes of a job; the report's columns


@dataclass(frozen=True)
class Job:
    """One generation: a template applied to one document's source text."""

    document_id: str
    template: Template
    source: str

    @property
    def key(self) -> tuple[str, str]:
        return self.template.name, self.document_id


@dataclass(frozen=True)
class OutputFiles:
    """``OUT`` and its two side files, ``OUT.rejected`` and ``OUT.meta.json``."""

    pairs: Path
    rejected: Path
    meta: Path

    @classmethod
    def of(cls, out: str | Path) -> OutputFiles:
        pairs = Path(out)
        return cls(pairs, pairs.with_name(pairs.name + ".rejected"), pairs.with_name(pairs.name + ".meta.json"))


def plan(documents: list[Document], templates: list[Template]) -> list[Job]:
    """Every (template, document) job, template by template, documents in corpus order."""
    return [Job(document.id, template, template.source(document.text)) for template in templates for document in documents]


def read_rows(path: Path) -> list[dict]:
    """The rows of an appended jsonl file; a torn last line (the run was killed while writing
    it) is cut off the file, since its batch is redone."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as handle:
            handle.truncate(end)
    rows = []
    for number, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: invalid JSON ({error.msg}); not a file `embedtune synth` wrote, cannot resume") from None
    return rows


def check_resume(files: OutputFiles, settings: dict) -> None:
    """A `EmbedtuneError` naming the first setting that differs from those ``OUT.meta.json``
    holds: a run continues only under the settings it started with (if there is one to continue)."""
    if not files.meta.exists():
        return
    previous = read_json(files.meta, "meta file").get("settings", {})
    normalised = json.loads(json.dumps(settings))
    changed = [key for key in normalised if previous.get(key) != normalised[key]]
    if changed:
        key = changed[0]
        raise EmbedtuneError(
            f"--resume: {files.meta} was written with other settings ({key}: {previous.get(key)} there, {normalised[key]} now); "
            "run the same command, or pass --overwrite to start again"
        )


def start(files: OutputFiles, settings: dict, resume: bool) -> set[tuple[str, str]]:
    """Prepare the outputs; returns the (template, document id) jobs already done. A resumed run
    (its settings checked by `check_resume`) reads them from both row files; a fresh one removes
    old row files and writes the meta file."""
    if resume and files.meta.exists():
        return {(row["template"], row["doc_id"]) for path in (files.pairs, files.rejected) for row in read_rows(path)}
    files.pairs.unlink(missing_ok=True)
    files.rejected.unlink(missing_ok=True)
    write_text_atomic(files.meta, json_text({"settings": settings, "finished": False}))
    return set()


def judge(generator: Generator, batch: list[Job], sampling: Sampling, index: int, consistency: ConsistencyFilter | None) -> list[dict]:
    """Generate batch ``index`` and turn each job into a row: a pair (``reason`` None) or a
    rejection (``reason`` in `OUTCOMES`), with the consistency filter's rank where it ran."""
    prompts = [generator.prompt(job.template, job.source, sampling.max_source_tokens) for job in batch]
    rows = []
    for job, (raw, finished) in zip(batch, generator.generate(prompts, sampling, index)):
        text, reason = clean(raw, job.template, job.source, finished)
        rows.append({"template": job.template.name, "doc_id": job.document_id, "text": text, "raw": raw, "reason": reason})
    if consistency is not None:
        for template in {job.template.name: job.template for job in batch}.values():
            judged = [(job, row) for job, row in zip(batch, rows) if row["reason"] is None and job.template.name == template.name]
            if judged:
                kept, ranks = consistency.apply(
                    template.name, [row["text"] for _, row in judged], [job.source for job, _ in judged], template.symmetric
                )
                for (_, row), keep, rank in zip(judged, kept, ranks):
                    row["rank"], row["reason"] = int(rank), None if keep else "filtered"
    return rows


def pair_row(row: dict, job: Job) -> dict:
    """A kept generation as a training pair."""
    pair = {"query": row["text"], "positive": job.source, "template": row["template"], "doc_id": row["doc_id"]}
    return {**pair, "rank": row["rank"]} if "rank" in row else pair


def synthesize(
    generator: Generator,
    jobs: list[Job],
    sampling: Sampling,
    batch_size: int,
    files: OutputFiles,
    done: set[tuple[str, str]],
    consistency: ConsistencyFilter | None = None,
    advance: Callable[[int], None] | None = None,
) -> None:
    """Run every batch with a job not in ``done``, appending its rows (rejections first, then
    pairs) and flushing after each batch; ``advance`` is called with the jobs each batch did."""
    with files.pairs.open("a", encoding="utf-8") as pairs, files.rejected.open("a", encoding="utf-8") as rejected:
        for index, start_at in enumerate(range(0, len(jobs), batch_size)):
            batch = jobs[start_at : start_at + batch_size]
            if all(job.key in done for job in batch):
                continue
            todo = [(job, row) for job, row in zip(batch, judge(generator, batch, sampling, index, consistency)) if job.key not in done]
            rejected.write("".join(json.dumps(row, ensure_ascii=False) + "\n" for _, row in todo if row["reason"]))
            rejected.flush()
            pairs.write("".join(json.dumps(pair_row(row, job), ensure_ascii=False) + "\n" for job, row in todo if not row["reason"]))
            pairs.flush()
            if advance:
                advance(len(todo))


def count(files: OutputFiles) -> dict[str, dict[str, int]]:
    """Per template, how many jobs ended in each of `OUTCOMES`, read back from the files (so a
    resumed run counts its earlier batches too)."""
    counts: dict[str, Counter] = {}
    for row in read_rows(files.rejected):
        counts.setdefault(row["template"], Counter())[row["reason"]] += 1
    for row in read_rows(files.pairs):
        counts.setdefault(row["template"], Counter())["kept"] += 1
    return {template: {outcome: counter[outcome] for outcome in OUTCOMES} for template, counter in counts.items()}


def finish(files: OutputFiles, settings: dict, counts: dict[str, dict[str, int]], seconds: float) -> None:
    """Rewrite the meta file with the final counts (and how long this last invocation took)."""
    write_text_atomic(
        files.meta, json_text({"settings": settings, "finished": True, "counts": counts, "last_run_seconds": round(seconds, 1)})
    )
