"""`embedtune` command line: one module per command, imported only when that command runs, so
`embedtune --help` stays fast. `train` is a Hydra app over conf/; the others use plain flags."""

from __future__ import annotations

import importlib
import os
import sys

from embedtune import __version__
from embedtune.cli.common import fail

USAGE = f"""embedtune {__version__}: fine-tune text-embedding models with contrastive learning.

Usage: embedtune COMMAND [ARGS]

Commands:
  train     fine-tune a model (Hydra overrides: embedtune train stage=pretrain loss.temperature=0.02)
            sweep with -m: embedtune train -m loss.temperature=0.02,0.05,0.1
  eval      quality of models on data sets: retrieval (BEIR folder, pairs file) or STS (scored pairs),
            per Matryoshka size with --dims 384 256 128 64
  diagnose  embedding-space geometry (collapse, anisotropy, alignment/uniformity); --plots draws it
  report    training curves of a run folder; a sweep folder's runs ranked, quality vs the swept value
  merge     merge checkpoints (or their task vectors with --base) by SLERP, lerp, TIES, DARE, Model Stock
  mine      hard negatives for a pairs file, mined with a model, filtered for false negatives
  synth     training pairs for your documents written by a local LM (queries, paraphrases), consistency-filtered
  data      write the embedded default data set (Python stdlib pairs) as files for mine / train

Run `embedtune COMMAND --help` for a command's options.
"""

COMMANDS = ("train", "eval", "diagnose", "report", "mine", "merge", "synth", "data")  # each is embedtune.cli.<name>.main


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    # Spinning OpenMP waits stall every op on a busy CPU (scripts/bench.py); set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenisation runs inside DataLoader
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return
    if args[0] in ("-V", "--version"):
        print(__version__)
        return
    if args[0] not in COMMANDS:
        fail(args[0], f"unknown command (choose from {', '.join(COMMANDS)})")
    try:
        importlib.import_module(f"embedtune.cli.{args[0]}").main(args[1:])
    except OSError as error:  # what no check could foresee: a read-only file system, a full disk
        fail(args[0], f"{error.filename + ': ' if error.filename else ''}{error.strerror or error}")


if __name__ == "__main__":
    main()
