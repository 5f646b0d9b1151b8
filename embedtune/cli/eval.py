"""`embedtune eval`: quality of models on data sets (retrieval, STS) and linear probes, per
Matryoshka size; tables, JSON, CSV and an optional plot."""

from __future__ import annotations

import argparse

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
from embedtune.errors import EmbedtuneError

DESCRIPTION = (
    "Quality of one or several models on one or several data sets, each evaluated as what it is. A BEIR "
    "folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a pairs file (query, positive) is a retrieval task: "
    "nDCG@10, MRR@10, MAP@100, Recall@1/10/100. Scored sentence pairs (the STS-B .csv/.tsv layout, or columns "
    "sentence1, sentence2, score) are an STS task: Spearman and Pearson correlation of cosine with the gold score. "
    "--probe FILE (labelled texts) trains a logistic regression on each model's frozen embeddings and reports its test "
    "accuracy, clean and with Gaussian noise of each --probe-noise sigma added to the embeddings: how robustly the "
    "classes are linearly separable."
)
EVAL_EXAMPLES = """examples:
  embedtune eval --model all-MiniLM-L6-v2 runs/sft/final --data beir/scifact --split train
  embedtune eval --model runs/mrl/final --data stsb/sts-dev.csv held-out.jsonl --dims 384 256 128 64 --plot dims.png
  embedtune eval --model all-MiniLM-L6-v2 --data stsb/sts-dev.csv --out sts.json --csv sts.csv
  embedtune eval --model all-MiniLM-L6-v2 runs/sft/final --data stsb/sts-dev.csv beir/scifact --split train --diagnose diag/
  embedtune eval --model all-MiniLM-L6-v2 runs/sft/final --probe labelled.jsonl --probe-noise 0.05 0.1 0.2 --out probe.json
"""
ROW_KEYS = ("data", "name", "task", "model", "dim")  # what identifies an eval result row; the rest are metrics


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = command_parser("eval", DESCRIPTION, EVAL_EXAMPLES)
    parser.add_argument("--model", required=True, nargs="+", help="model folder(s) or packaged name (all-MiniLM-L6-v2)")
    parser.add_argument("--data", nargs="+", default=[], help="BEIR folder(s), pairs file(s), STS file(s)")
    add_data_set_flags(parser)
    parser.add_argument("--query-prompt", default=None, help="text prepended to queries (default: the model's saved prompt)")
    parser.add_argument("--pooling", default=None, help="override the model's pooling (mean, cls, max, last_token)")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's max tokens")
    parser.add_argument("--batch-size", type=int, default=64)
    add_dtype_flag(parser)
    parser.add_argument("--dims", type=int, nargs="+", default=None, metavar="D",
                        help="Matryoshka sizes to score, e.g. 384 256 128 64: embeddings truncated to the first D dimensions and "
                        "re-normalised (default: the model's saved matryoshka dims and its full size, else its full size)")  # fmt: skip
    probe = parser.add_argument_group("linear probe (embedtune/eval/probe.py)")
    probe.add_argument(
        "--probe",
        default=None,
        metavar="FILE",
        help="labelled texts (jsonl, csv, tsv, parquet, hf:NAME): score a logistic regression on the frozen embeddings",
    )
    probe.add_argument(
        "--probe-test", default=None, metavar="FILE", help="labelled texts to score the probe on (default: a stratified split of --probe)"
    )
    probe.add_argument("--text-column", default="text", help="column of the texts in --probe files (default: text)")
    probe.add_argument("--label-column", default="label", help="column of the labels in --probe files (default: label)")
    probe.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of each class held out for testing when there is no --probe-test (default: 0.2)",
    )
    probe.add_argument("--probe-noise", type=float, nargs="*", default=None, metavar="SIGMA",
                       help="std of the Gaussian noise added to the unit-normalised test embeddings, per dimension "
                       "(default: 0.05 0.1 0.2; the flag alone: clean accuracy only)")  # fmt: skip
    probe.add_argument("--probe-draws", type=int, default=None, help="noise draws averaged per sigma (default: 10)")
    probe.add_argument("--probe-l2", type=float, default=1.0, help="L2 penalty of the probe's weights, as scikit-learn's 1/C (default: 1)")
    probe.add_argument("--seed", type=int, default=0, help="for the probe's train/test split and noise (default: 0)")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the results as JSON here")
    add_overwrite_flag(parser)
    parser.add_argument(
        "--csv", default=None, metavar="FILE.csv", help="write the results as CSV here, one row per data set, model and size"
    )
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="draw quality vs Matryoshka size here")
    parser.add_argument("--diagnose", default=None, metavar="DIR",
                        help="also run `embedtune diagnose --plots` on the same models and --data: the geometry table and verdicts, "
                        "DIR/diagnostics.json and the PNGs (positive vs random similarity histograms, PCA scatter)")  # fmt: skip
    return parser.parse_args(args)


def check_options(options: argparse.Namespace) -> None:
    """Every flag's value, before anything loads."""
    require_at_least_one("eval", options, "--batch-size", "--probe-draws", "--max-length")
    if options.dims and min(options.dims) < 1:
        fail("eval", f"--dims must be positive, got {min(options.dims)}")
    if not options.data and not options.probe:
        fail("eval", "nothing to evaluate: give --data and/or --probe")
    if options.probe_test and not options.probe:
        fail("eval", "--probe-test needs --probe (the labelled texts to train the probe on)")
    if not 0 < options.test_fraction < 1:
        fail("eval", f"--test-fraction must be in (0, 1), got {options.test_fraction}")
    if any(sigma < 0 for sigma in options.probe_noise or []):
        fail("eval", f"--probe-noise must be >= 0, got {min(options.probe_noise)}")
    if options.probe_l2 <= 0:
        fail("eval", f"--probe-l2 must be > 0, got {options.probe_l2}")
    if options.diagnose and not options.data:
        fail("eval", "--diagnose needs --data (the pairs whose geometry to look at)")
    inputs = (*options.data, options.probe, options.probe_test)
    check_outputs(
        "eval", [("--out", options.out, False), ("--csv", options.csv, False), ("--plot", options.plot, False)], options.overwrite, inputs
    )
    if options.diagnose:
        check_outputs("eval", [("--diagnose", options.diagnose, True)], True, inputs)  # a folder to write into
        check_outputs(
            "eval",
            [("--diagnose", f"{options.diagnose}/diagnostics.json", False), ("--diagnose", f"{options.diagnose}/pca.png", False)],
            options.overwrite,
        )


def main(args: list[str]) -> None:
    options = parse_args(args)
    check_options(options)
    if options.diagnose or options.plot:
        plots_module("eval")  # before the slow part: a missing matplotlib fails now

    from embedtune.eval.probe import DEFAULT_DRAWS, DEFAULT_NOISE

    options.probe_noise = list(DEFAULT_NOISE) if options.probe_noise is None else options.probe_noise  # imported late: --help stays fast
    options.probe_draws = options.probe_draws or DEFAULT_DRAWS
    quiet_transformers()
    try:
        benchmarks, probe_set, rows = evaluate_models(options)
    except EmbedtuneError as error:
        fail("eval", str(error))
    print_tables(options, benchmarks, probe_set, rows)
    write_results(options, probe_set, rows)
    if options.diagnose:
        from embedtune.cli import diagnose

        same_inputs = [
            "--split",
            options.split,
            "--query-column",
            options.query_column,
            "--positive-column",
            options.positive_column,
            "--batch-size",
            str(options.batch_size),
            "--dtype",
            options.dtype,
        ]
        if options.max_length:
            same_inputs += ["--max-length", str(options.max_length)]
        diagnose.main(
            [
                "--model",
                *options.model,
                "--data",
                *options.data,
                *same_inputs,
                "--plots",
                "--out-dir",
                options.diagnose,
                *(["--overwrite"] if options.overwrite else []),
            ]
        )


def evaluate_models(options: argparse.Namespace) -> tuple[list, object, list[dict]]:
    """``(benchmarks, probe set or None, rows)``: one row per data set, model and size."""
    from embedtune.data.rows import Columns
    from embedtune.eval.benchmarks import load_benchmark
    from embedtune.eval.probe import load_probe_set

    rows = []
    benchmarks = [
        load_benchmark(source, options.split, Columns(options.query_column, options.positive_column, None)) for source in options.data
    ]
    probe_set = (
        load_probe_set(options.probe, options.probe_test, options.text_column, options.label_column, options.test_fraction, options.seed)
        if options.probe
        else None
    )
    for name in options.model:
        prompts = {"query": options.query_prompt} if options.query_prompt is not None else None
        model = load_model(name, options, pooling=options.pooling, prompts=prompts)
        dims = sorted(set(options.dims or [*model.matryoshka_dims, model.dim]), reverse=True)
        if dims[0] > model.dim:
            fail("eval", f"--dims {dims[0]} is more than the {model.dim} dimensions of {name}")
        for benchmark in benchmarks:
            for dim, metrics in _evaluate_dims(model, benchmark, dims, options.batch_size).items():
                rows.append(
                    {"data": benchmark.source, "name": benchmark.name, "task": benchmark.task, "model": name, "dim": dim, **metrics}
                )
        if probe_set:
            for dim, metrics in _probe_dims(model, probe_set, dims, options).items():
                rows.append({"data": probe_set.source, "name": probe_set.name, "task": "probe", "model": name, "dim": dim, **metrics})
        del model  # freed before the next model loads
    return benchmarks, probe_set, rows


def print_tables(options: argparse.Namespace, benchmarks: list, probe_set, rows: list[dict]) -> None:
    """A table per data set (models and sizes as rows), and the probe's table."""
    from rich.table import Table

    from embedtune.console import stdout

    for benchmark in benchmarks:
        here = [row for row in rows if row["data"] == benchmark.source]
        table = Table(title=f"{benchmark.task}: {benchmark.name} ({benchmark.describe()})")
        table.add_column("model")
        table.add_column("dim", justify="right")
        metric_names = [key for key in here[0] if key not in ROW_KEYS]
        for metric in metric_names:
            table.add_column(metric, justify="right")
        for row in here:
            table.add_row(row["model"], str(row["dim"]), *(f"{row[m]:.4f}" for m in metric_names))
        stdout.print(table)
    if probe_set:
        stdout.print(_probe_table(probe_set, [row for row in rows if row["task"] == "probe"], options.probe_noise, options.probe_draws))


def write_results(options: argparse.Namespace, probe_set, rows: list[dict]) -> None:
    """--out (JSON), --csv and --plot."""
    from embedtune.fileio import json_text, write_text_atomic

    if options.out:  # a single result is also spread at the top level, so json["ndcg@10"] reads it
        payload = {**(rows[0] if len(rows) == 1 else {}), "split": options.split, "rows": rows}
        if probe_set:
            payload["probe"] = {"train": options.probe, "test": options.probe_test, "test_fraction": None if options.probe_test else options.test_fraction,
                                "noise": options.probe_noise, "draws": options.probe_draws, "l2": options.probe_l2, "seed": options.seed}  # fmt: skip
        write_text_atomic(options.out, json_text(payload))
    if options.csv:
        write_text_atomic(options.csv, _rows_as_csv(rows))
    if options.plot:
        plots_module("eval").quality_vs_dims(rows, options.plot)


def _evaluate_dims(model, benchmark, dims: list[int], batch_size: int) -> dict[int, dict[str, float]]:
    """Metrics of ``model`` on ``benchmark`` at each Matryoshka size: the texts are embedded once,
    then every size scores the truncated, re-normalised embeddings."""
    from embedtune.eval.retrieval import embed_retrieval_set, score_retrieval, truncate
    from embedtune.eval.sts import embed_sts, score_sts

    if benchmark.task == "sts":
        first, second = embed_sts(model, benchmark.pairs, batch_size, name=benchmark.name)
        gold = [pair.score for pair in benchmark.pairs]
        return {dim: score_sts(truncate(first, dim), truncate(second, dim), gold) for dim in dims}
    queries, corpus = embed_retrieval_set(model, benchmark.retrieval, batch_size)
    return {dim: score_retrieval(truncate(queries, dim), truncate(corpus, dim), benchmark.retrieval) for dim in dims}


def _probe_dims(model, probe_set, dims: list[int], options) -> dict[int, dict[str, float]]:
    """Linear-probe accuracies of ``model`` at each Matryoshka size: the texts are embedded
    once, then a probe is trained and scored on the truncated embeddings of each size."""
    from embedtune.eval.probe import embed_probe_set, probe
    from embedtune.eval.retrieval import truncate

    train, test = embed_probe_set(model, probe_set, options.batch_size)
    return {dim: probe(truncate(train, dim), probe_set.train_labels, truncate(test, dim), probe_set.test_labels, tuple(options.probe_noise),
                       options.probe_draws, options.probe_l2, options.seed) for dim in dims}  # fmt: skip


def _probe_table(probe_set, rows: list[dict], noise: list[float], draws: int):
    """The probe's accuracies with the models side by side (a column per model, and per size when
    there are several); with exactly two columns, a third gives the second's change from the first."""
    from rich.table import Table

    from embedtune.eval.probe import noise_key
    from embedtune.eval.tables import change_cell

    dims = list(dict.fromkeys(row["dim"] for row in rows))
    models = list(dict.fromkeys(row["model"] for row in rows))
    first = rows[0]
    caption = f"majority class {first['majority']:.4f}, chance {first['chance']:.4f}"
    if noise:
        caption += f"; noise N(0, σ²) per dimension of the unit-normalised test embeddings, mean of {draws} draws"
    table = Table(title=f"linear probe: {probe_set.name} ({probe_set.describe()})", caption=caption)
    if len(dims) > 1:
        table.add_column("dim", justify="right")
    table.add_column("test accuracy")
    for model in models:
        table.add_column(model, justify="right")
    if len(models) == 2:
        table.add_column("change", justify="right")
    metrics = {"accuracy": "clean", **{noise_key(sigma): f"noise σ={sigma:g}" for sigma in noise}}
    for dim in dims:
        by_model = {row["model"]: row for row in rows if row["dim"] == dim}
        for key, label in metrics.items():
            values = [by_model[model][key] for model in models]
            cells = [f"{value:.4f}" for value in values]
            if len(models) == 2:
                cells.append(change_cell(values[1] - values[0]))
            table.add_row(*([str(dim)] if len(dims) > 1 else []), label, *cells)
    return table


def _rows_as_csv(rows: list[dict]) -> str:
    """Eval rows as CSV text: the identifying columns, then every metric any row has (retrieval
    and STS rows share a file; a metric a task lacks is an empty cell)."""
    import csv
    import io

    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
