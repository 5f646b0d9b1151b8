"""`embedtune data`: a training set and a held-out set written as files, from the embedded stdlib
set or from a BEIR folder split by query."""

from __future__ import annotations

from embedtune.cli.common import add_overwrite_flag, check_outputs, command_parser, fail
from embedtune.errors import EmbedtuneError


def main(args: list[str]) -> None:
    parser = command_parser(
        "data",
        "Write a training set and a held-out set as files for `embedtune mine` and `embedtune train "
        "data=files`: OUT/train.jsonl (query, positive, negatives) and OUT/eval/ (a BEIR folder, split 'test'). "
        "By default from the embedded data set (Python standard library: docstring summary -> function source, "
        "held out by package); with --beir, from your own retrieval set, held out by query.",
    )
    parser.add_argument("--out", required=True, help="folder to write train.jsonl and eval/ into")
    add_overwrite_flag(parser)
    parser.add_argument("--beir", default=None, metavar="FOLDER", help="split this BEIR folder's judged queries instead of the stdlib set")
    parser.add_argument("--split", default="test", help="with --beir: the qrels split to read (default: test)")
    parser.add_argument("--seed", type=int, default=0, help="with --beir: which queries are held out")
    parser.add_argument("--max-train-pairs", type=int, default=None, help="stdlib: cap the training pairs (default: all)")
    parser.add_argument("--max-eval-queries", type=int, default=None, help="stdlib: cap the held-out queries (default: all)")
    parser.add_argument(
        "--eval-fraction", type=float, default=0.2, help="share held out: of packages (stdlib) or queries (--beir) (default: 0.2)"
    )
    options = parser.parse_args(args)

    from embedtune.data.held_out import load_beir, write_beir
    from embedtune.data.rows import write_pairs

    if not 0 < options.eval_fraction < 1:
        fail("data", f"--eval-fraction must be in (0, 1), got {options.eval_fraction}")
    check_outputs("data", [("--out", options.out, True)], True, (options.beir,))  # a folder to write into
    check_outputs(
        "data", [("--out", f"{options.out}/train.jsonl", False), ("--out", f"{options.out}/eval", True)], options.overwrite, (options.beir,)
    )
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
    print(
        f"wrote {len(train)} training pairs to {options.out}/train.jsonl and {len(evaluation.queries)} held-out queries "
        f"over {len(evaluation.corpus)} documents to {options.out}/eval/"
    )
