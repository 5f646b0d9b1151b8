"""What every command shares: the one-line error exit, the device, quiet transformers, plots."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


def fail(command: str, message: str) -> NoReturn:
    """Print ``embedtune COMMAND: error: MESSAGE`` on stderr and exit with status 2."""
    print(f"embedtune {command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require_at_least_one(command: str, options: argparse.Namespace, *flags: str) -> None:
    """Fail with one line on the first of ``flags`` (such as ``--batch-size``) set below 1; an
    unset one (None) passes."""
    for flag in flags:
        value = getattr(options, flag.removeprefix("--").replace("-", "_"))
        if value is not None and value < 1:
            fail(command, f"{flag} must be >= 1, got {value}")


def best_device() -> str:
    """Where a command runs its model: the GPU when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(name: str, options: argparse.Namespace, **settings):
    """The `Embedder` a command encodes with: on `best_device`, its weights in the command's
    ``--dtype``, cut at its ``--max-length`` (None: the model's own); ``settings`` go on to
    `load_embedder` (pooling, prompts)."""
    from embedtune.model import load_embedder, resolved_dtype

    device = best_device()
    return load_embedder(name, max_length=options.max_length, dtype=resolved_dtype(options.dtype, device), **settings).to(device)


def quiet_transformers() -> None:
    """Our own progress bars replace transformers' per-file ones (weights loading, saving)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def plots_module(command: str):
    """`embedtune.eval.plots`, or a one-line error naming the missing package (matplotlib is
    needed only for pictures, so it is not a core dependency)."""
    try:
        from embedtune.eval import plots
    except ImportError as error:
        fail(command, f"pictures need matplotlib ({error}): pip install matplotlib")
    return plots


def command_parser(command: str, description: str, examples: str | None = None) -> argparse.ArgumentParser:
    """The flag parser of ``embedtune COMMAND``, with its examples shown as written after the flags."""
    return argparse.ArgumentParser(
        prog=f"embedtune {command}", description=description, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_data_set_flags(parser: argparse.ArgumentParser) -> None:
    """How `eval` and `diagnose` read a data set: the qrels split of a BEIR folder, the columns
    of a pairs file."""
    parser.add_argument("--split", default="test", help="qrels split of a BEIR folder (default: test)")
    parser.add_argument("--query-column", default="query", help="column of the queries in a pairs file (default: query)")
    parser.add_argument("--positive-column", default="positive", help="column of the positives in a pairs file (default: positive)")


def add_dtype_flag(parser: argparse.ArgumentParser, whose: str = "the model's", default: str = "float32") -> None:
    """``--dtype``: the weights' dtype, resolved by `embedtune.model.resolved_dtype`."""
    parser.add_argument(
        "--dtype",
        choices=["float32", "auto", "bfloat16", "float16"],
        default=default,
        help=f"{whose} weights; auto: bfloat16 where the device has bfloat16 units (recent GPUs, CPUs with AVX512-BF16 or AMX), "
        f"else float32 (default: {default})",
    )


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace outputs that exist already (without it, an existing output stops the command before it starts)",
    )


def check_outputs(command: str, outputs: list[tuple[str, str | None, bool]], overwrite: bool, inputs: tuple = ()) -> None:
    """Each ``(option, path, is_folder)`` output that is set can be written without losing
    anything (`embedtune.fileio.check_output`), or the command stops with one line."""
    from embedtune.errors import EmbedtuneError
    from embedtune.fileio import check_output

    try:
        for option, path, is_folder in outputs:
            if path:
                check_output(path, option, folder=is_folder, overwrite=overwrite, inputs=inputs)
    except EmbedtuneError as error:
        fail(command, str(error))
