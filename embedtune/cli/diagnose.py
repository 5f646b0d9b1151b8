"""`embedtune diagnose`: the geometry of models' embedding spaces on data sets (alignment,
uniformity, collapse, anisotropy), with verdicts in plain words and optional pictures."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from embedtune.cli.common import (
    add_data_set_flags,
    add_dtype_flag,
    add_overwrite_flag,
    check_outputs,
    command_parser,
    fail,
    load_model,
    plots_module,
    quiet_transformers,
    require_at_least_one,
)
from embedtune.errors import DataError, EmbedtuneError

DESCRIPTION = (
    "Geometry of each model's embedding space on each data set: alignment and uniformity (Wang & Isola "
    "2020), the spread of the dimensions (collapse), the average cosine of random pairs (anisotropy) and the gap "
    "between positive and random pairs, with a verdict in plain words. Positive pairs: a pairs file's rows, a BEIR "
    "folder's judged pairs, an STS file's top-quarter pairs by gold score."
)
DIAGNOSE_EXAMPLES = """examples:
  embedtune diagnose --model all-MiniLM-L6-v2 runs/sft/final --data stsb/sts-dev.csv --plots
  embedtune diagnose --model runs/sft/final --data train.jsonl beir/scifact --split train --out-dir diag/

verdicts (thresholds in embedtune/eval/diagnostics.py):
  collapsed      embedding std x sqrt(dim) < {COLLAPSED_STD}, or random pairs average cosine > {COLLAPSED_RANDOM_COSINE}
  anisotropic    random pairs average cosine > {ANISOTROPIC_RANDOM_COSINE} (a narrow cone)
  not separated  positive pairs score < {SEPARATION_GAP} cosine above mismatched pairs on average
  healthy        none of the above
"""


def parse_args(args: list[str]) -> argparse.Namespace:
    from embedtune.eval import diagnostics

    parser = command_parser("diagnose", DESCRIPTION, DIAGNOSE_EXAMPLES.format(**vars(diagnostics)))
    parser.add_argument(
        "--model", required=True, nargs="+", help="model folder(s) or packaged name; the first is drawn as the base in plots"
    )
    parser.add_argument("--data", required=True, nargs="+", help="pairs file(s), BEIR folder(s) or STS file(s)")
    add_data_set_flags(parser)
    parser.add_argument("--label-column", default=None, help="colour the PCA plot by this column of a pairs file")
    parser.add_argument("--max-pairs", type=int, default=1000, help="positive pairs per data set, sampled (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="for sampling the pairs")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's max tokens")
    parser.add_argument("--batch-size", type=int, default=64)
    add_dtype_flag(parser)
    parser.add_argument("--out-dir", default=None, help="write diagnostics.json (and the plots) here (default with --plots: diagnostics/)")
    parser.add_argument("--plots", action="store_true", help="also draw similarity histograms per data set and a PCA scatter")
    add_overwrite_flag(parser)
    return parser.parse_args(args)


def main(args: list[str]) -> None:
    options = parse_args(args)
    require_at_least_one("diagnose", options, "--batch-size", "--max-length")
    if options.max_pairs < 2:
        fail("diagnose", f"--max-pairs must be >= 2 (random pairs need two positives), got {options.max_pairs}")
    plots = plots_module("diagnose") if options.plots else None  # before the slow part: a missing matplotlib fails now
    out_dir = Path(options.out_dir or "diagnostics") if (options.out_dir or options.plots) else None
    check_outputs("diagnose", [("--out-dir", out_dir, True)], True, tuple(options.data))
    quiet_transformers()
    try:
        inputs = load_inputs(options)
        if out_dir is not None:  # the files it will write, now that the data sets' names are known
            files = ["diagnostics.json", *([f"similarity_{_file_stem(b.name)}.png" for b, _, _ in inputs] + ["pca.png"] if plots else [])]
            check_outputs("diagnose", [("--out-dir", out_dir / name, False) for name in files], options.overwrite)
        rows, similarities, points = diagnose_models(options, inputs, with_plot_data=plots is not None)
    except EmbedtuneError as error:
        fail("diagnose", str(error))
    print_geometry(inputs, rows)
    if out_dir is None:
        return
    from embedtune.fileio import json_text, write_text_atomic

    write_text_atomic(out_dir / "diagnostics.json", json_text({"max_pairs": options.max_pairs, "seed": options.seed, "rows": rows}))
    written = [out_dir / "diagnostics.json"]
    if plots:
        written += draw(plots, options, inputs, similarities, points, out_dir)
    print("wrote " + ", ".join(str(path) for path in written))


def load_inputs(options: argparse.Namespace) -> list[tuple]:
    """Per data set: ``(benchmark, its sampled positive pairs, (items to embed, first rows, second rows))``."""
    from embedtune.data.rows import Columns
    from embedtune.eval.benchmarks import load_benchmark, positive_pairs

    columns = Columns(options.query_column, options.positive_column, None, label=options.label_column)
    inputs = []
    for source in options.data:
        benchmark = load_benchmark(source, options.split, columns)
        chosen = positive_pairs(benchmark, options.max_pairs, options.seed)
        if len(chosen) < 2:
            raise DataError(
                f"{source}: {len(chosen)} positive pair(s); the geometry of an embedding space needs at least 2 (random pairs are drawn between them)"
            )
        inputs.append((benchmark, chosen, _pair_items(benchmark, chosen)))
    return inputs


def diagnose_models(options: argparse.Namespace, inputs: list[tuple], with_plot_data: bool) -> tuple[list[dict], dict, dict]:
    """One geometry row per model and data set; with plots, also ``similarities[data][model]``
    (positive and random cosines) and ``points[model]`` (the normalised embeddings)."""
    import torch

    from embedtune.eval import diagnostics

    rows, similarities, points = [], {}, {}
    for name in options.model:
        model = load_model(name, options)
        for benchmark, chosen, (texts, first_rows, second_rows) in inputs:
            embeddings = _encode_items(model, texts, options.batch_size, benchmark.name)
            numbers = diagnostics.diagnose(embeddings[first_rows], embeddings[second_rows], embeddings)
            rows.append({"data": benchmark.source, "name": benchmark.name, "task": benchmark.task, "model": name,
                         "pairs": len(chosen), "texts": len(texts), **numbers, "verdict": diagnostics.verdict(numbers)})  # fmt: skip
            if with_plot_data:
                normalised = torch.nn.functional.normalize(embeddings, dim=-1)
                positive, mismatched = diagnostics.pair_similarities(normalised[first_rows], normalised[second_rows])
                similarities.setdefault(benchmark.source, {})[name] = (positive.numpy(), mismatched.numpy())
                points.setdefault(name, []).append(normalised.numpy())
        del model  # freed before the next model loads
    return rows, similarities, points


def print_geometry(inputs: list[tuple], rows: list[dict]) -> None:
    """A geometry table per data set, then each model's verdict."""
    from rich.table import Table

    from embedtune.console import stdout

    shown = {"alignment": "align ↓", "uniformity": "uniform ↓", "embedding_std": "std·√dim", "random_cosine": "rand cos",
             "positive_cosine": "pos cos", "similarity_gap": "gap"}  # fmt: skip
    for benchmark, chosen, _ in inputs:
        here = [row for row in rows if row["data"] == benchmark.source]
        table = Table(title=f"geometry: {benchmark.name} ({len(chosen)} positive pairs)")
        table.add_column("model")
        for label in shown.values():
            table.add_column(label, justify="right")
        for row in here:
            table.add_row(row["model"], *(f"{row[key]:.3f}" for key in shown))
        stdout.print(table)
        for row in here:
            color = "green" if row["verdict"] == "healthy" else "yellow"
            stdout.print(f"{row['model']}: [{color}]{row['verdict']}[/]", highlight=False)


def draw(plots, options: argparse.Namespace, inputs: list[tuple], similarities: dict, points: dict, out_dir: Path) -> list[Path]:
    """Similarity histograms per data set and one PCA scatter of every model's embeddings."""
    import numpy as np

    benchmarks = [benchmark for benchmark, _, _ in inputs]
    written = []
    for benchmark in benchmarks:
        file = out_dir / f"similarity_{_file_stem(benchmark.name)}.png"
        written.append(plots.similarity_histograms(similarities[benchmark.source], file, f"positive vs random pairs: {benchmark.name}"))
    labels = _point_labels(
        benchmarks, [chosen for _, chosen, _ in inputs], [items for _, _, items in inputs], options.label_column is not None
    )
    stacked = {name: np.concatenate(parts) for name, parts in points.items()}
    written.append(
        plots.pca_scatter(stacked, labels, out_dir / "pca.png", f"PCA of the embeddings ({', '.join(b.name for b in benchmarks)})")
    )
    return written


def _pair_items(benchmark, pairs) -> tuple[list[tuple[str | None, str]], list[int], list[int]]:
    """The distinct (prompt name, text) items to embed for ``pairs`` and, per pair, the rows of
    its two sides. Retrieval embeds queries with the query prompt and documents with the
    document prompt; STS sentences get no prompt, so a sentence on both sides is embedded once."""
    sides = (None, None) if benchmark.task == "sts" else ("query", "document")
    texts = list(dict.fromkeys([(sides[0], pair.query) for pair in pairs] + [(sides[1], pair.positive) for pair in pairs]))
    row = {item: index for index, item in enumerate(texts)}
    return texts, [row[(sides[0], pair.query)] for pair in pairs], [row[(sides[1], pair.positive)] for pair in pairs]


def _encode_items(model, items: list[tuple[str | None, str]], batch_size: int, name: str):
    """Embeddings of (prompt name, text) items, in their order: one encode call per prompt."""
    import torch

    from embedtune.console import progress_bar

    out = torch.empty(len(items), model.dim)
    with progress_bar(f"embedding {name}", len(items)) as advance:
        for prompt in dict.fromkeys(prompt for prompt, _ in items):
            index = [i for i, (p, _) in enumerate(items) if p == prompt]
            out[index] = model.encode([items[i][1] for i in index], prompt, batch_size, advance)
    return out


def _point_labels(benchmarks, pairs, items, by_column: bool) -> list[str]:
    """A label per embedded item, for the PCA colours: the label column when asked for; else the
    data set of origin when there are several; else a pair's own label (STS-B's genre); else
    the side of the pair (query or document, sentence for STS)."""
    labels = []
    for benchmark, chosen, (texts, first_rows, second_rows) in zip(benchmarks, pairs, items):
        own = [None] * len(texts)
        for pair, first, second in zip(chosen, first_rows, second_rows):
            own[first] = own[first] or pair.label
            own[second] = own[second] or pair.label
        for (prompt, _), label in zip(texts, own):
            if (by_column or len(benchmarks) == 1) and label is not None:
                labels.append(label)
            elif len(benchmarks) > 1:
                labels.append(benchmark.name)
            else:
                labels.append(prompt or "sentence")
    return labels


def _file_stem(name: str) -> str:
    """A data set name as a file name: scifact/train -> scifact-train, sts-dev.csv -> sts-dev."""
    return re.sub(r"[^\w.-]+", "-", re.sub(r"\.(jsonl|json|csv|tsv|parquet)$", "", name)).strip("-") or "data"
