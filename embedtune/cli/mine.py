"""`embedtune mine`: hard negatives for a pairs file, mined with a model, written as a training file.

The output is jsonl with ``query``, ``positive``, ``negatives`` and the model's cosine scores
(``positive_score``, ``negative_scores``, one per negative), ready for
``embedtune train data=files data.train=FILE``; distillation losses read the scores as a
teacher's. The filters and their order are described in `embedtune.mine.negatives`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from embedtune.cli.common import (
    add_dtype_flag,
    add_overwrite_flag,
    check_outputs,
    command_parser,
    fail,
    load_model,
    quiet_transformers,
    require_at_least_one,
)
from embedtune.console import stdout
from embedtune.errors import EmbedtuneError

OUTPUT_SUFFIXES = (".jsonl", ".json")
MINING_OPTIONS = (
    "num_negatives",
    "range_min",
    "range_max",
    "sampling",
    "max_score",
    "margin",
    "relative_margin",
    "seed",
)  # flags named as MiningConfig fields


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = command_parser(
        "mine",
        "Mine hard negatives for each (query, positive) pair with a model: exact cosine search over a corpus "
        "(or BM25, or both fused), candidates from a rank window, false negatives filtered (the query's positives, a score cap, anything scoring "
        "near or above the positive), then the best or a random sample kept. Writes jsonl for `embedtune train data=files`.",
        "Example: embedtune mine --model runs/sft/final --data train.jsonl --corpus beir/scifact/corpus.jsonl "
        "--range-min 5 --relative-margin 0.05 --out train-mined.jsonl",
    )
    parser.add_argument("--model", required=True, help="model folder or packaged name (all-MiniLM-L6-v2)")
    parser.add_argument("--data", required=True, help="pairs file (jsonl/csv/parquet or hf:NAME[:SPLIT])")
    parser.add_argument(
        "--corpus", default=None, help="documents to mine from (jsonl/csv/parquet, or a BEIR corpus.jsonl); default: all positives"
    )
    parser.add_argument("--out", required=True, help="output .jsonl file (written atomically; never one of the inputs)")
    add_overwrite_flag(parser)
    parser.add_argument("--query-column", default="query")
    parser.add_argument("--positive-column", default="positive")
    parser.add_argument("--corpus-column", default="text")
    parser.add_argument(
        "--method",
        choices=("dense", "bm25", "hybrid"),
        default="dense",
        help="what ranks the candidates: the model's cosine, BM25 (pip install 'embedtune[bm25]'), or both by reciprocal rank "
        "fusion; the filters use the model's cosines for all (default: dense)",
    )
    parser.add_argument("--num-negatives", type=int, default=7, help="negatives per query (default: 7)")
    parser.add_argument("--range-min", type=int, default=0, help="first rank a negative may come from (default: 0 = the best)")
    parser.add_argument("--range-max", type=int, default=100, help="rank after the last one a negative may come from (default: 100)")
    parser.add_argument(
        "--sampling", choices=("top", "random"), default="top", help="best eligible first, or a random sample (default: top)"
    )
    parser.add_argument("--seed", type=int, default=0, help="for --sampling random")
    parser.add_argument("--max-score", type=float, default=None, help="drop candidates with a cosine above this")
    parser.add_argument(
        "--margin", type=float, default=0.0, help="drop candidates above positive_score - MARGIN (default: 0; --margin=-inf: off)"
    )
    parser.add_argument(
        "--relative-margin", type=float, default=None, metavar="R", help="also drop candidates above positive_score * (1 - R), e.g. 0.05"
    )
    parser.add_argument("--drop-short", action="store_true", help="leave out queries with fewer than --num-negatives negatives")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--max-length", type=int, default=None, help="override the model's max tokens (e.g. the training run's backbone.max_length)"
    )
    add_dtype_flag(parser)
    return parser.parse_args(args)


def main(args: list[str]) -> None:
    options = parse_args(args)
    started = time.perf_counter()
    require_at_least_one("mine", options, "--batch-size", "--max-length")
    if Path(options.out).suffix.lower() not in OUTPUT_SUFFIXES:
        fail("mine", f"--out must be a .jsonl file, got {options.out}")
    check_outputs("mine", [("--out", options.out, False)], options.overwrite, (options.data, options.corpus))
    if options.method != "dense":
        from embedtune.mine.rankings import require_bm25s

        try:
            require_bm25s()
        except EmbedtuneError as error:
            fail("mine", str(error))

    from embedtune.data.rows import Columns, load_pairs
    from embedtune.fileio import write_text_atomic
    from embedtune.mine.negatives import MiningConfig
    from embedtune.mine.pairs import load_corpus, mine_pairs

    quiet_transformers()
    try:
        config = MiningConfig(**{name: getattr(options, name) for name in MINING_OPTIONS})
        pairs = load_pairs(options.data, Columns(options.query_column, options.positive_column, None))
        corpus = load_corpus(options.corpus, options.corpus_column) if options.corpus else list(dict.fromkeys(p.positive for p in pairs))
        model = load_model(options.model, options)
    except EmbedtuneError as error:
        fail("mine", str(error))
    loaded = time.perf_counter()
    rows, counts = mine_pairs(model, pairs, corpus, config, options.batch_size, options.method)
    short = sum(len(row["negatives"]) < config.num_negatives for row in rows)
    if options.drop_short:
        rows = [row for row in rows if len(row["negatives"]) >= config.num_negatives]
    if not rows:
        fail(
            "mine",
            f"every query has < {config.num_negatives} negatives after filtering, nothing written (widen the window or loosen the filters)",
        )
    write_text_atomic(options.out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    timings = {"load": loaded - started, "embed + mine": time.perf_counter() - loaded}
    stdout.print(_report(options, config, len(pairs), len(corpus), rows, counts, short, timings))


def _report(options, config, queries: int, documents: int, rows: list[dict], counts: dict[str, int], short: int, timings: dict[str, float]):
    """What the filters removed, what was written, and how long it took, as one table."""
    from rich.table import Table

    per_query = [len(row["negatives"]) for row in rows]
    table = Table(title=f"hard negatives: {queries} queries, {documents} documents -> {options.out}")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row(f"candidates (ranks {config.range_min}-{config.range_max - 1} by {options.method})", str(counts["candidates"]))
    table.add_row("  removed: a positive of the query", str(counts["exact_positive"]))
    table.add_row("  removed: score > --max-score", str(counts["above_max_score"]))
    table.add_row("  removed: score > positive - margin", str(counts["above_positive_margin"]))
    table.add_row("  removed: duplicate text", str(counts["duplicate"]))
    table.add_row("eligible", str(counts["eligible"]))
    table.add_row(f"queries with < {config.num_negatives} negatives", f"{short} ({'dropped' if options.drop_short else 'kept'})")
    table.add_row("rows written", str(len(rows)))
    table.add_row("negatives per query: mean / min", f"{sum(per_query) / len(per_query):.2f} / {min(per_query)}")
    table.add_row("time: " + " / ".join(timings), " / ".join(f"{seconds:.1f}s" for seconds in timings.values()))
    return table
