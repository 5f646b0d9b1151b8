"""`embedtune synth`: training pairs for the user's own documents, written by a local LM.

For each document (of a sample) each template asks the LM for a text: ``query`` a search query
the document answers (an asymmetric pair: query, document), ``paraphrase`` a rewording of the
document's leading sentences (a symmetric pair). With ``--filter-model`` a query is kept only if
that embedding model retrieves its source document within the top ``--filter-k`` of the corpus
(`embedtune.synth.consistency`). The pairs file is appended batch by batch; ``--resume`` continues
a killed run (`embedtune.synth.run`).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from embedtune import __version__
from embedtune.cli.common import (
    add_dtype_flag,
    add_overwrite_flag,
    best_device,
    check_outputs,
    command_parser,
    fail,
    quiet_transformers,
    require_at_least_one,
)
from embedtune.console import progress_bar, stdout
from embedtune.errors import EmbedtuneError

if TYPE_CHECKING:  # the synth package loads torch: imported where it runs
    from embedtune.synth.corpus import Document
    from embedtune.synth.generate import Sampling
    from embedtune.synth.run import Job, OutputFiles
    from embedtune.synth.templates import Template

DESCRIPTION = (
    "Write training pairs for a corpus with a local causal LM (a Hugging Face folder or a .gguf file; chat template used "
    "when the tokenizer has one): per document a search query it answers (--templates query) and/or a paraphrase of its "
    "leading sentences (paraphrase). Optionally keep only the queries whose document an embedding model retrieves within "
    "the top --filter-k (Promptagator's consistency filter). Output: jsonl (query, positive, template, doc_id, rank) for "
    "`embedtune train data=files`, with OUT.meta.json (settings, counts) and OUT.rejected (what was not kept, and why)."
)
EXAMPLES = """examples:
  embedtune synth --corpus beir/scifact --max-docs 500 --filter-model all-MiniLM-L6-v2 --out synth/scifact.jsonl
  embedtune synth --corpus notes/ --templates query paraphrase --model Qwen2.5-0.5B-Instruct/ --out synth/notes.jsonl
  embedtune synth ... --resume      (after a kill: the same command continues where it stopped)
"""


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = command_parser("synth", DESCRIPTION, EXAMPLES)
    parser.add_argument(
        "--corpus", required=True, help="a BEIR folder or corpus.jsonl, a rows file with a text column, or a folder of .txt/.md"
    )
    parser.add_argument("--out", required=True, help="output .jsonl (appended per batch; side files OUT.meta.json and OUT.rejected)")
    parser.add_argument(
        "--model", default="SmolLM2-135M-Instruct", help="the LM: folder, .gguf file or packaged name (default: SmolLM2-135M-Instruct)"
    )
    parser.add_argument("--templates", nargs="+", default=["query"], metavar="NAME", help="query and/or paraphrase (default: query)")
    parser.add_argument("--text-column", default="text", help="column of the texts in a rows file (default: text)")
    parser.add_argument("--max-docs", type=int, default=None, help="a seeded random sample of this many documents (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="picks the sample and seeds sampling: same seed, same file (default: 0)")
    parser.add_argument("--temperature", type=float, default=0.7, help="0: greedy (default: 0.7)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default: 0.95)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="longest answer; cut-off ones are rejected (default: 48)")
    parser.add_argument("--max-source-tokens", type=int, default=256, help="source text cut to this in the prompt (default: 256)")
    add_dtype_flag(parser, "the LM's", default="auto")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts generated together, left-padded (default: 16)")
    parser.add_argument(
        "--filter-model", default=None, help="embedding model of the consistency filter (e.g. all-MiniLM-L6-v2); none: no filter"
    )
    parser.add_argument("--filter-k", type=int, default=10, help="keep a query whose document ranks within this top k (default: 10)")
    add_overwrite_flag(parser)
    parser.add_argument("--resume", action="store_true", help="continue a killed run of the same command, appending to OUT")
    return parser.parse_args(args)


def check_options(options: argparse.Namespace) -> None:
    """Every flag's value, before anything is read or written."""
    from embedtune.synth.templates import TEMPLATES

    unknown = [name for name in options.templates if name not in TEMPLATES]
    if unknown:
        fail("synth", f"--templates: unknown template '{unknown[0]}' (choose from {', '.join(TEMPLATES)})")
    if len(set(options.templates)) < len(options.templates):
        fail("synth", "--templates: a template is named twice")
    require_at_least_one("synth", options, "--max-docs", "--batch-size", "--filter-k")
    if Path(options.out).suffix.lower() != ".jsonl":
        fail("synth", f"--out must be a .jsonl file, got {options.out}")
    if options.resume and options.overwrite:
        fail("synth", "--resume continues OUT and --overwrite replaces it: pass one of them")


def check_output_files(options: argparse.Namespace, files, inputs: tuple) -> None:
    """OUT and its side files may be written: new, replaced with --overwrite, or continued with
    --resume (which needs the meta file a started run wrote first)."""
    outputs = [("--out", str(files.pairs), False), ("--out", str(files.meta), False), ("--out", str(files.rejected), False)]
    check_outputs("synth", outputs, options.overwrite or options.resume, inputs)
    if options.resume and (files.pairs.exists() or files.rejected.exists()) and not files.meta.exists():
        fail("synth", f"--resume: {files.meta} is missing, so {files.pairs} cannot be continued; pass --overwrite to start again")


@dataclasses.dataclass
class Plan:
    """What a run does, read and checked before anything loads or is written."""

    files: OutputFiles
    corpus: list[Document]  # every document (the filter searches them all)
    jobs: list[Job]  # (template, document) generations of the sample
    templates: list[Template]
    sampling: Sampling
    generator_path: str
    filter_path: str | None
    device: str
    dtype: str
    settings: dict  # what OUT.meta.json records


def main(args: list[str]) -> None:
    options = parse_args(args)
    started = time.perf_counter()
    check_options(options)
    run = plan_run(options)
    generator, consistency, done = load(options, run)
    remaining = sum(job.key not in done for job in run.jobs)
    if consistency and remaining:
        embed_filter_corpus(consistency, run)
    loaded = time.perf_counter()

    from embedtune.synth.run import count, finish, synthesize

    try:
        with progress_bar(f"generating ({len(run.jobs) - remaining} done before)" if done else "generating", remaining) as advance:
            synthesize(generator, run.jobs, run.sampling, options.batch_size, run.files, done, consistency, advance)
    except KeyboardInterrupt:
        fail("synth", f"interrupted; the finished batches are in {run.files.pairs}: run the same command with --resume to continue")
    generated = time.perf_counter()
    counts = count(run.files)
    finish(run.files, run.settings, counts, generated - started)
    timings = {"load" + (" + embed corpus" if consistency else ""): loaded - started, "generate": generated - loaded}
    stdout.print(_report(options, run.settings["documents"], counts, remaining, timings))


def plan_run(options: argparse.Namespace) -> Plan:
    """The corpus, its sample, the models' paths and the outputs, checked (a --resume against the
    settings it started with); nothing is loaded or written yet."""
    from embedtune.model import resolved_dtype
    from embedtune.synth.corpus import corpus_file, load_documents, sample_documents
    from embedtune.synth.generate import Sampling
    from embedtune.synth.run import OutputFiles, check_resume, plan
    from embedtune.synth.templates import TEMPLATES

    files = OutputFiles.of(options.out)
    try:
        sampling = Sampling(options.temperature, options.top_p, options.max_new_tokens, options.max_source_tokens, options.seed)
        generator_path = _generator_path(options.model)
        check_output_files(options, files, (options.corpus, corpus_file(options.corpus), generator_path))
        corpus = load_documents(options.corpus, options.text_column)
        filter_path = _filter_path(options.filter_model)
    except EmbedtuneError as error:
        fail("synth", str(error))
    templates = [TEMPLATES[name] for name in options.templates]
    documents = sample_documents(corpus, options.max_docs, options.seed)
    device = best_device()
    dtype = resolved_dtype(options.dtype, device)
    settings = _settings(options, generator_path, len(corpus), len(documents), templates, sampling, dtype)
    if options.resume:
        try:
            check_resume(files, settings)
        except EmbedtuneError as error:
            fail("synth", str(error))
    return Plan(files, corpus, plan(documents, templates), templates, sampling, generator_path, filter_path, device, dtype, settings)


def load(options: argparse.Namespace, run: Plan):
    """The generator, the consistency filter (None without --filter-model), and the jobs done
    before (a --resume), once the outputs are started."""
    from embedtune.synth.consistency import ConsistencyFilter
    from embedtune.synth.generate import load_generator
    from embedtune.synth.run import start

    quiet_transformers()
    try:
        generator = load_generator(run.generator_path, run.device, run.dtype)
        consistency = ConsistencyFilter(_load_filter(run.filter_path).to(run.device), options.filter_k) if run.filter_path else None
        done = start(run.files, run.settings, options.resume)
    except EmbedtuneError as error:
        fail("synth", str(error))
    return generator, consistency, done


def embed_filter_corpus(consistency, run: Plan) -> None:
    """Embed every document's source text once per template, for the filter to rank against."""
    sources = {template: list(dict.fromkeys(template.source(d.text) for d in run.corpus)) for template in run.templates}
    with progress_bar("embedding the filter's corpus", sum(map(len, sources.values()))) as advance:
        for template, texts in sources.items():
            consistency.add_corpus(template.name, texts, template.symmetric, advance)


def _settings(options: argparse.Namespace, generator_path: str, corpus: int, documents: int, templates: list, sampling, dtype: str) -> dict:
    """What OUT.meta.json records and a --resume must match: the generator, the corpus and its
    sample, the templates (with their examples), sampling, batching and the filter."""
    return {
        "generator": options.model,
        "generator_file": generator_path,
        "dtype": dtype,
        "corpus": options.corpus,
        "corpus_documents": corpus,
        "documents": documents,
        "max_docs": options.max_docs,
        "templates": {template.name: dataclasses.asdict(template) for template in templates},
        "sampling": dataclasses.asdict(sampling),
        "batch_size": options.batch_size,
        "filter": {"model": options.filter_model, "k": options.filter_k} if options.filter_model else None,
        "embedtune": __version__,
    }


def _generator_path(name: str) -> str:
    """The LM's folder or .gguf file, checked before anything loads."""
    from embedtune.synth.generate import resolve_generator

    try:
        return resolve_generator(name)
    except EmbedtuneError as error:
        raise EmbedtuneError(f"--model: {error}") from None


def _filter_path(name: str | None) -> str | None:
    """The filter model's folder, checked before anything loads (None: no filter)."""
    if name is None:
        return None
    from embedtune.model import resolve_model_path

    try:
        return resolve_model_path(name)
    except EmbedtuneError as error:
        raise EmbedtuneError(f"--filter-model: {error}") from None


def _load_filter(path: str):
    from embedtune.model import load_embedder

    try:
        return load_embedder(path)
    except EmbedtuneError as error:
        raise EmbedtuneError(f"--filter-model: {error}") from None


def _report(options, documents: int, counts: dict[str, dict[str, int]], generated: int, timings: dict[str, float]):
    """Per template what became of the generations, the kept share, and the speed, as one table."""
    from rich.table import Table

    from embedtune.synth.run import OUTCOMES

    shown = [outcome for outcome in OUTCOMES if options.filter_model or outcome != "filtered"]
    table = Table(title=f"synthetic pairs: {documents} documents -> {options.out}")
    table.add_column("template")
    for outcome in shown:
        table.add_column(f"filtered (rank > {options.filter_k})" if outcome == "filtered" else outcome.replace("_", " "), justify="right")
    table.add_column("kept share", justify="right")
    for template, outcome_counts in counts.items():
        total = sum(outcome_counts.values())
        table.add_row(template, *(str(outcome_counts[o]) for o in shown), f"{outcome_counts['kept'] / total:.1%}" if total else "-")
    seconds = timings["generate"]
    speed = f"{generated / seconds:.2f} generations/s" if seconds > 0 and generated else "nothing left to generate"
    table.caption = f"this run: {generated} generations, {speed}; time: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
    return table
