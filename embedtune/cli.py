"""`embedtune` command line: `train` is a Hydra app over conf/; other commands use plain flags."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

# OpenMP threads that spin while waiting make every op wait for descheduled threads on a busy
# CPU (a training step 4-6x slower on 2 shared cores, scripts/bench.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from embedtune import __version__
from embedtune.errors import EmbedtuneError

USAGE = f"""embedtune {__version__}: fine-tune text-embedding models with contrastive learning.

Usage: embedtune COMMAND [ARGS]

Commands:
  train     fine-tune a model (Hydra overrides: embedtune train stage=pretrain loss.temperature=0.02)
            sweep with -m: embedtune train -m loss.temperature=0.02,0.05,0.1
  eval      quality of models on data sets: retrieval (BEIR folder, pairs file) or STS (scored pairs),
            per Matryoshka size with --dims 384 256 128 64
  diagnose  embedding-space geometry (collapse, anisotropy, alignment/uniformity); --plots draws it
  report    training curves of a run folder; a sweep folder's runs ranked, quality vs the swept value
  merge     merge checkpoints by SLERP or linear interpolation: embedtune merge --slerp A B --out merged
  mine      hard negatives for a pairs file, mined with a model, filtered for false negatives
  data      write the embedded default data set (Python stdlib pairs) as files for mine / train

Run `embedtune COMMAND --help` for a command's options.
"""

HYDRA_FLAGS_WITHOUT_VALUE = {"-m", "--multirun"}
MAX_PREVALIDATED_SWEEP = 64


def quiet_transformers() -> None:
    """Our own progress bars replace transformers' per-file ones (weights loading, saving)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def fail(command: str, message: str) -> None:
    print(f"embedtune {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


# --- train -------------------------------------------------------------------------------


def _parse_overrides(args: list[str]):
    """Hydra's parsed overrides, or None when the arguments hold Hydra flags we do not
    interpret (--cfg, --info, ...), which Hydra then handles alone."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [arg for arg in args if arg not in HYDRA_FLAGS_WITHOUT_VALUE]
    if any(arg.startswith("-") for arg in overrides):
        return None
    return OverridesParser.create().parse_overrides(overrides)


def _single_runs(parsed) -> list[list[str]]:
    """Each combination of the sweeps' values as plain overrides (the first 64)."""
    choices = []
    for override in parsed:
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        choices.append([f"{override.get_key_element()}={value}" for value in values])
    combinations = itertools.islice(itertools.product(*choices), MAX_PREVALIDATED_SWEEP)
    return [list(combination) for combination in combinations]


def _name_sweep_runs_by_swept_keys(parsed) -> str:
    """A Hydra override that leaves only the swept keys in each sweep run's folder name
    (``0_loss.temperature=0.02``), not every path and setting given on the command line."""
    fixed = ["output_dir", "run_name"] + [o.key_or_group for o in parsed if not o.is_sweep_override()]
    return f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(set(fixed)))}]"


def _check_train_overrides(parsed) -> None:
    """Compose and validate the config for every run the arguments ask for, before Hydra
    creates any folder, so a typo or a bad value costs one clear line and writes nothing."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from embedtune.config import config_dir, validate

    for overrides in _single_runs(parsed):
        try:
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                cfg = compose("train", overrides=overrides)
        except Exception as error:  # ConfigCompositionException and friends
            fail("train", _hydra_message(error))
        finally:
            GlobalHydra.instance().clear()
        try:
            validate(cfg)
        except EmbedtuneError as error:
            fail("train", str(error))


def _hydra_message(error: Exception) -> str:
    """Hydra's multi-line composition errors, folded to one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line]
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        reason = str(cause).splitlines()[0].strip()
        if not any(reason in line for line in lines):
            lines.append(f"({reason})")
    message = " ".join(lines).split(" Config search path:")[0]  # drop Hydra's search-path dump
    return message or type(error).__name__


def train_command(args: list[str]) -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    from embedtune.config import config_dir

    try:
        parsed = _parse_overrides(args)
    except Exception as error:  # hydra's OverrideParseException
        fail("train", f"cannot parse overrides: {str(error).splitlines()[0]}")
    if parsed is not None:
        _check_train_overrides(parsed)
        if HYDRA_FLAGS_WITHOUT_VALUE.intersection(args):
            args = [*args, _name_sweep_runs_by_swept_keys(parsed)]

    from embedtune.distributed import launch_rank

    if launch_rank() > 0:  # under `accelerate launch` every rank runs Hydra on the same output_dir:
        args = [*args, "hydra.output_subdir=null", "hydra/job_logging=none"]  # only rank 0 writes .hydra/ and train.log

    @hydra.main(config_path=str(config_dir()), config_name="train", version_base="1.3")
    def hydra_train(cfg) -> float | None:
        from embedtune.eval.cli import SWEEP_METRICS
        from embedtune.train import run

        try:
            result = run(cfg, HydraConfig.get().runtime.output_dir)
        except EmbedtuneError as error:
            fail("train", str(error))
        except KeyboardInterrupt:  # train.run saved a resumable state and said where
            raise SystemExit(130) from None
        after = result["after"] or {}
        return next((after[metric] for metric in SWEEP_METRICS if metric in after), None)  # the sweep objective, as `report` ranks

    quiet_transformers()
    sys.argv = ["embedtune train", *args]
    hydra_train()


# --- eval --------------------------------------------------------------------------------

EVAL_EXAMPLES = """examples:
  embedtune eval --model all-MiniLM-L6-v2 runs/sft/final --data beir/scifact --split train
  embedtune eval --model runs/mrl/final --data stsb/sts-dev.csv held-out.jsonl --dims 384 256 128 64 --plot dims.png
  embedtune eval --model all-MiniLM-L6-v2 --data stsb/sts-dev.csv --out sts.json --csv sts.csv
  embedtune eval --model all-MiniLM-L6-v2 runs/sft/final --data stsb/sts-dev.csv beir/scifact --split train --diagnose diag/
  embedtune eval --model all-MiniLM-L6-v2 runs/sft/final --probe labelled.jsonl --probe-noise 0.05 0.1 0.2 --out probe.json
"""
ROW_KEYS = ("data", "name", "task", "model", "dim")  # what identifies an eval result row; the rest are metrics


def eval_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="embedtune eval",
        description="Quality of one or several models on one or several data sets, each evaluated as what it is. A BEIR "
        "folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a pairs file (query, positive) is a retrieval task: "
        "nDCG@10, MRR@10, MAP@100, Recall@1/10/100. Scored sentence pairs (the STS-B .csv/.tsv layout, or columns "
        "sentence1, sentence2, score) are an STS task: Spearman and Pearson correlation of cosine with the gold score. "
        "--probe FILE (labelled texts) trains a logistic regression on each model's frozen embeddings and reports its test "
        "accuracy, clean and with Gaussian noise of each --probe-noise sigma added to the embeddings: how robustly the "
        "classes are linearly separable.",
        epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, nargs="+", help="model folder(s) or packaged name (all-MiniLM-L6-v2)")
    parser.add_argument("--data", nargs="+", default=[], help="BEIR folder(s), pairs file(s), STS file(s)")
    parser.add_argument("--split", default="test", help="qrels split of a BEIR folder (default: test)")
    parser.add_argument("--query-column", default="query")
    parser.add_argument("--positive-column", default="positive")
    parser.add_argument("--query-prompt", default=None, help="text prepended to queries (default: the model's saved prompt)")
    parser.add_argument("--pooling", default=None, help="override the model's pooling (mean, cls, max, last_token)")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's max tokens")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dims", type=int, nargs="+", default=None, metavar="D",
                        help="Matryoshka sizes to score, e.g. 384 256 128 64: embeddings truncated to the first D dimensions and "
                        "re-normalised (default: the model's saved matryoshka dims and its full size, else its full size)")  # fmt: skip
    probe = parser.add_argument_group("linear probe (embedtune/eval/probe.py)")
    probe.add_argument("--probe", default=None, metavar="FILE", help="labelled texts (jsonl, csv, tsv, parquet, hf:NAME): score a logistic regression on the frozen embeddings")
    probe.add_argument("--probe-test", default=None, metavar="FILE", help="labelled texts to score the probe on (default: a stratified split of --probe)")
    probe.add_argument("--text-column", default="text", help="column of the texts in --probe files (default: text)")
    probe.add_argument("--label-column", default="label", help="column of the labels in --probe files (default: label)")
    probe.add_argument("--test-fraction", type=float, default=0.2, help="share of each class held out for testing when there is no --probe-test (default: 0.2)")
    probe.add_argument("--probe-noise", type=float, nargs="*", default=None, metavar="SIGMA",
                       help="std of the Gaussian noise added to the unit-normalised test embeddings, per dimension "
                       "(default: 0.05 0.1 0.2; the flag alone: clean accuracy only)")  # fmt: skip
    probe.add_argument("--probe-draws", type=int, default=None, help="noise draws averaged per sigma (default: 10)")
    probe.add_argument("--probe-l2", type=float, default=1.0, help="L2 penalty of the probe's weights, as scikit-learn's 1/C (default: 1)")
    probe.add_argument("--seed", type=int, default=0, help="for the probe's train/test split and noise (default: 0)")
    parser.add_argument("--out", default=None, metavar="FILE.json", help="write the results as JSON here")
    parser.add_argument("--csv", default=None, metavar="FILE.csv", help="write the results as CSV here, one row per data set, model and size")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="draw quality vs Matryoshka size here")
    parser.add_argument("--diagnose", default=None, metavar="DIR",
                        help="also run `embedtune diagnose --plots` on the same models and --data: the geometry table and verdicts, "
                        "DIR/diagnostics.json and the PNGs (positive vs random similarity histograms, PCA scatter)")  # fmt: skip
    options = parser.parse_args(args)
    if options.batch_size < 1:
        fail("eval", f"--batch-size must be >= 1, got {options.batch_size}")
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
    if options.probe_draws is not None and options.probe_draws < 1:
        fail("eval", f"--probe-draws must be >= 1, got {options.probe_draws}")
    if options.probe_l2 <= 0:
        fail("eval", f"--probe-l2 must be > 0, got {options.probe_l2}")
    if options.diagnose and not options.data:
        fail("eval", "--diagnose needs --data (the pairs whose geometry to look at)")
    if options.diagnose or options.plot:
        plots_module("eval")  # before the slow part: a missing matplotlib fails now

    import torch
    from rich.table import Table

    from embedtune.data.files import Columns
    from embedtune.eval.benchmarks import load_benchmark
    from embedtune.eval.probe import DEFAULT_DRAWS, DEFAULT_NOISE, load_probe_set
    from embedtune.io import write_text_atomic
    from embedtune.model import load_embedder
    from embedtune.progress import stdout

    options.probe_noise = list(DEFAULT_NOISE) if options.probe_noise is None else options.probe_noise  # imported late: --help stays fast
    options.probe_draws = options.probe_draws or DEFAULT_DRAWS
    quiet_transformers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = []
    try:
        benchmarks = [load_benchmark(source, options.split, Columns(options.query_column, options.positive_column, None)) for source in options.data]
        probe_set = load_probe_set(options.probe, options.probe_test, options.text_column, options.label_column, options.test_fraction, options.seed) if options.probe else None
        for name in options.model:
            prompts = {"query": options.query_prompt} if options.query_prompt is not None else None
            model = load_embedder(name, pooling=options.pooling, max_length=options.max_length, prompts=prompts).to(device)
            dims = sorted(set(options.dims or [*model.matryoshka_dims, model.dim]), reverse=True)
            if dims[0] > model.dim:
                fail("eval", f"--dims {dims[0]} is more than the {model.dim} dimensions of {name}")
            for benchmark in benchmarks:
                for dim, metrics in _evaluate_dims(model, benchmark, dims, options.batch_size).items():
                    rows.append({"data": benchmark.source, "name": benchmark.name, "task": benchmark.task, "model": name, "dim": dim, **metrics})
            if probe_set:
                for dim, metrics in _probe_dims(model, probe_set, dims, options).items():
                    rows.append({"data": probe_set.source, "name": probe_set.name, "task": "probe", "model": name, "dim": dim, **metrics})
            del model  # freed before the next model loads
    except EmbedtuneError as error:
        fail("eval", str(error))

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
    if options.out:  # a single result is also spread at the top level, so json["ndcg@10"] reads it
        payload = {**(rows[0] if len(rows) == 1 else {}), "split": options.split, "rows": rows}
        if probe_set:
            payload["probe"] = {"train": options.probe, "test": options.probe_test, "test_fraction": None if options.probe_test else options.test_fraction,
                                "noise": options.probe_noise, "draws": options.probe_draws, "l2": options.probe_l2, "seed": options.seed}  # fmt: skip
        write_text_atomic(options.out, json.dumps(payload, indent=2) + "\n")
    if options.csv:
        write_text_atomic(options.csv, _rows_as_csv(rows))
    if options.plot:
        plots_module("eval").quality_vs_dims(rows, options.plot)
    if options.diagnose:
        same_inputs = ["--split", options.split, "--query-column", options.query_column, "--positive-column", options.positive_column, "--batch-size", str(options.batch_size)]
        if options.max_length:
            same_inputs += ["--max-length", str(options.max_length)]
        diagnose_command(["--model", *options.model, "--data", *options.data, *same_inputs, "--plots", "--out-dir", options.diagnose])


def plots_module(command: str):
    """`embedtune.eval.plots`, or a one-line error naming the missing package (matplotlib is
    needed only for pictures, so it is not a core dependency)."""
    try:
        from embedtune.eval import plots
    except ImportError as error:
        fail(command, f"pictures need matplotlib ({error}): pip install matplotlib")
    return plots


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
                change = values[1] - values[0]
                color = "green" if change > 0 else "red" if change < 0 else ""
                cells.append(f"[{color}]{change:+.4f}[/]" if color else f"{change:+.4f}")
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


# --- mine --------------------------------------------------------------------------------


def mine_command(args: list[str]) -> None:
    from embedtune.mine_cli import main  # imported on use, as the other commands do, so `embedtune --help` stays fast

    main(args)


# --- merge -------------------------------------------------------------------------------


def merge_command(args: list[str]) -> None:
    from embedtune.merge.cli import merge_command as merge  # imported on use, so `embedtune --help` stays fast

    merge(args)


# --- diagnose, report ----------------------------------------------------------------------


def diagnose_command(args: list[str]) -> None:
    from embedtune.eval.cli import diagnose_command as diagnose  # imported on use, so `embedtune --help` stays fast

    diagnose(args)


def report_command(args: list[str]) -> None:
    from embedtune.eval.cli import report_command as report  # imported on use, so `embedtune --help` stays fast

    report(args)


# --- data --------------------------------------------------------------------------------


def data_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="embedtune data",
        description="Write a training set and a held-out set as files for `embedtune mine` and `embedtune train "
        "data=files`: OUT/train.jsonl (query, positive, negatives) and OUT/eval/ (a BEIR folder, split 'test'). "
        "By default from the embedded data set (Python standard library: docstring summary -> function source, "
        "held out by package); with --beir, from your own retrieval set, held out by query.",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--beir", default=None, metavar="FOLDER", help="split this BEIR folder's judged queries instead of the stdlib set")
    parser.add_argument("--split", default="test", help="with --beir: the qrels split to read (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="with --beir: which queries are held out")
    parser.add_argument("--max-train-pairs", type=int, default=None, help="stdlib: cap the training pairs (default: all)")
    parser.add_argument("--max-eval-queries", type=int, default=None, help="stdlib: cap the held-out queries (default: all)")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="share held out: of packages (stdlib) or queries (--beir) (default: 0.2)")
    options = parser.parse_args(args)

    from embedtune.data.files import load_beir, write_beir, write_pairs

    if not 0 < options.eval_fraction < 1:
        fail("data", f"--eval-fraction must be in (0, 1), got {options.eval_fraction}")
    try:
        if options.beir:
            from embedtune.data.split import split_queries

            train, evaluation = split_queries(load_beir(options.beir, options.split), options.eval_fraction, options.seed)
        else:
            from embedtune.data.stdlib import load

            data = load(options.eval_fraction, max_train_pairs=options.max_train_pairs, max_eval_queries=options.max_eval_queries)
            train, evaluation = data.train, data.eval
    except EmbedtuneError as error:
        fail("data", str(error))
    write_pairs(train, f"{options.out}/train.jsonl")
    write_beir(evaluation, f"{options.out}/eval")
    print(f"wrote {len(train)} training pairs to {options.out}/train.jsonl and {len(evaluation.queries)} held-out queries "
          f"over {len(evaluation.corpus)} documents to {options.out}/eval/")


# --- dispatch ----------------------------------------------------------------------------

COMMANDS = {
    "train": train_command,
    "eval": eval_command,
    "diagnose": diagnose_command,
    "report": report_command,
    "mine": mine_command,
    "merge": merge_command,
    "data": data_command,
}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs inside DataLoader
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] in ("-V", "--version"):
        print(__version__)
        return
    command = COMMANDS.get(args[0])
    if command is None:
        fail(args[0], f"unknown command (choose from {', '.join(COMMANDS)})")
    command(args[1:])


if __name__ == "__main__":
    main()
