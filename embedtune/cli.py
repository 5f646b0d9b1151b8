"""`embedtune` command line: `train` is a Hydra app over conf/; other commands use plain flags."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

from embedtune import __version__
from embedtune.errors import EmbedtuneError

USAGE = f"""embedtune {__version__}: fine-tune text-embedding models with contrastive learning.

Usage: embedtune COMMAND [ARGS]

Commands:
  train   fine-tune a model (Hydra overrides: embedtune train stage=pretrain loss.temperature=0.02)
          sweep with -m: embedtune train -m loss.temperature=0.02,0.05,0.1
  eval    retrieval metrics of a model on a BEIR folder or a pairs file
  merge   merge checkpoints by SLERP or linear interpolation: embedtune merge --slerp A B --out merged
  mine    hard negatives for a pairs file, mined with a model, filtered for false negatives
  data    write the embedded default data set (Python stdlib pairs) as files for mine / train

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
        from embedtune.train import run

        try:
            result = run(cfg, HydraConfig.get().runtime.output_dir)
        except EmbedtuneError as error:
            fail("train", str(error))
        except KeyboardInterrupt:  # train.run saved a resumable state and said where
            raise SystemExit(130) from None
        return (result["after"] or {}).get("ndcg@10")  # the sweep objective

    quiet_transformers()
    sys.argv = ["embedtune train", *args]
    hydra_train()


# --- eval --------------------------------------------------------------------------------


def eval_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="embedtune eval",
        description="Retrieval quality (nDCG@10, MRR@10, Recall@1/10/100) of a model on a BEIR folder "
        "(corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a pairs file (jsonl/csv/parquet).",
    )
    parser.add_argument("--model", required=True, nargs="+", help="model folder(s) or packaged name (all-MiniLM-L6-v2)")
    parser.add_argument("--data", required=True, help="BEIR folder or pairs file")
    parser.add_argument("--split", default="test", help="qrels split of a BEIR folder (default: test)")
    parser.add_argument("--query-column", default="query")
    parser.add_argument("--positive-column", default="positive")
    parser.add_argument("--query-prompt", default=None, help="text prepended to queries (default: the model's saved prompt)")
    parser.add_argument("--pooling", default=None, help="override the model's pooling (mean, cls, max, last_token)")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's max tokens")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")
    options = parser.parse_args(args)

    from rich.table import Table

    from embedtune.data.files import Columns, load_retrieval_set
    from embedtune.eval.retrieval import evaluate_retrieval
    from embedtune.io import write_text_atomic
    from embedtune.model import load_embedder
    from embedtune.progress import stdout

    quiet_transformers()
    if options.batch_size < 1:
        fail("eval", f"--batch-size must be >= 1, got {options.batch_size}")
    try:
        benchmark = load_retrieval_set(options.data, options.split, Columns(options.query_column, options.positive_column, None))
        results = {}
        for name in options.model:
            prompts = {"query": options.query_prompt} if options.query_prompt is not None else None
            model = load_embedder(name, pooling=options.pooling, max_length=options.max_length, prompts=prompts)
            results[name] = evaluate_retrieval(model, benchmark, options.batch_size)
    except EmbedtuneError as error:
        fail("eval", str(error))
    table = Table(title=f"retrieval: {benchmark.name} ({len(benchmark.queries)} queries, {len(benchmark.corpus)} documents)")
    table.add_column("model")
    metric_names = list(next(iter(results.values())))
    for metric in metric_names:
        table.add_column(metric, justify="right")
    for name, metrics in results.items():
        table.add_row(name, *(f"{metrics[m]:.4f}" for m in metric_names))
    stdout.print(table)
    if options.out:
        payload = {"data": options.data, "split": options.split, "results": results}
        write_text_atomic(options.out, json.dumps(payload if len(results) > 1 else {**payload, **results[options.model[0]]}, indent=2) + "\n")


# --- mine --------------------------------------------------------------------------------


def mine_command(args: list[str]) -> None:
    from embedtune.mine_cli import main  # imported on use, as the other commands do, so `embedtune --help` stays fast

    main(args)


# --- merge -------------------------------------------------------------------------------


def merge_command(args: list[str]) -> None:
    from embedtune.merge.cli import merge_command as merge  # imported on use, so `embedtune --help` stays fast

    merge(args)


# --- data --------------------------------------------------------------------------------


def data_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="embedtune data",
        description="Write the embedded default data set (Python standard library: docstring summary -> "
        "function source) as files: OUT/train.jsonl (query, positive, negatives) and OUT/eval/ (a BEIR "
        "folder of held-out packages, split 'test'), for `embedtune mine` and `embedtune train data=files`.",
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--max-train-pairs", type=int, default=None, help="cap the training pairs (default: all)")
    parser.add_argument("--max-eval-queries", type=int, default=None, help="cap the held-out queries (default: all)")
    parser.add_argument("--eval-fraction", type=float, default=0.2, help="share of pairs held out, by package (default: 0.2)")
    options = parser.parse_args(args)

    from embedtune.data.files import write_beir, write_pairs
    from embedtune.data.stdlib import load

    if not 0 < options.eval_fraction < 1:
        fail("data", f"--eval-fraction must be in (0, 1), got {options.eval_fraction}")
    data = load(options.eval_fraction, max_train_pairs=options.max_train_pairs, max_eval_queries=options.max_eval_queries)
    write_pairs(data.train, f"{options.out}/train.jsonl")
    write_beir(data.eval, f"{options.out}/eval")
    print(f"wrote {len(data.train)} training pairs to {options.out}/train.jsonl and {len(data.eval.queries)} held-out queries "
          f"over {len(data.eval.corpus)} documents to {options.out}/eval/")


# --- dispatch ----------------------------------------------------------------------------

COMMANDS = {"train": train_command, "eval": eval_command, "mine": mine_command, "merge": merge_command, "data": data_command}


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
