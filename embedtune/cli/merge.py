"""`embedtune merge`: merge checkpoints, or their task vectors against a common parent, by SLERP,
linear interpolation, TIES, DARE or Model Stock."""

from __future__ import annotations

import argparse
import resource
import sys
import time
import warnings

from embedtune.cli.common import add_overwrite_flag, command_parser, fail
from embedtune.errors import EmbedtuneError

DESCRIPTION = (
    "Merge checkpoints of one architecture tensor by tensor, by spherical (--slerp) or linear\n"
    "(--linear) interpolation; with --base PARENT, merge their task vectors (each checkpoint minus the\n"
    "parent) and add the result to the parent, also by TIES, DARE (--sparsify dare) or Model Stock.\n"
    "The output keeps the first checkpoint's config, tokenizer and pooling."
)
EXAMPLES = """examples:
  embedtune merge --slerp all-MiniLM-L6-v2 runs/sft/final --t 0.7 --out runs/merged
  embedtune merge --linear run1/final run2/final run3/final --weights 1 1 2 --out runs/soup
  embedtune merge --slerp base/ sft/ --layer-t 'attention=0.3' 'intermediate|output.dense=0.7' --out merged/
  embedtune merge --slerp base/ sft/ --only 'encoder.layer.[3-5].' --out merged/
  embedtune merge --slerp --base all-MiniLM-L6-v2 sft-nli/final sft-scifact/final --t 0.5 --out merged/
  embedtune merge --ties --base all-MiniLM-L6-v2 A B C --density 0.2 --out merged/
  embedtune merge --linear --base all-MiniLM-L6-v2 A B --sparsify dare --density 0.3 --seed 1 --out merged/
  embedtune merge --model-stock --base all-MiniLM-L6-v2 A B --out merged/
"""


# The merge methods, each a flag: method -> what it does.
METHOD_FLAGS = {
    "slerp": "spherical interpolation of each tensor's direction (with --base: of each task vector's), norms interpolated "
    "linearly; 3+ checkpoints: their spherical mean",
    "linear": "the weighted average of the weights (with --base and --sparsify: of the sparsified task vectors)",
    "ties": "TIES-Merging (needs --base): trim each task vector to its top --density magnitudes, elect each entry's sign by "
    "total mass, average the agreeing entries",
    "model_stock": "Model Stock (needs --base): the average task vector, scaled per tensor by a ratio from the angle between "
    "the task vectors",
}


def parse_args(args: list[str]) -> argparse.Namespace:
    parser = command_parser("merge", DESCRIPTION, EXAMPLES)
    method = parser.add_mutually_exclusive_group(required=True)
    for name, what in METHOD_FLAGS.items():
        method.add_argument(f"--{name.replace('_', '-')}", dest="method", action="store_const", const=name, help=what)
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="CKPT",
        help="model folders with safetensors weights (or a packaged name: all-MiniLM-L6-v2), two or more",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the merged model folder (written atomically)")
    parser.add_argument("--t", type=float, default=None, help="two checkpoints: 0 gives the first, 1 the second (default 0.5)")
    parser.add_argument("--weights", type=float, nargs="+", default=None, metavar="W", help="one weight per checkpoint (default: equal)")
    parser.add_argument(
        "--layer-t",
        action="extend",
        nargs="+",
        default=[],
        metavar="REGEX=T",
        help="two checkpoints: t for the tensors whose name matches REGEX; the first match wins",
    )
    parser.add_argument(
        "--only", default=None, metavar="REGEX", help="merge only the tensors whose name matches; the rest come from the first checkpoint"
    )
    parser.add_argument(
        "--base",
        default=None,
        metavar="PARENT",
        help="the model every checkpoint was fine-tuned from: merge task vectors (checkpoint minus PARENT) and add the result to it",
    )
    parser.add_argument(
        "--sparsify",
        choices=("magnitude", "dare"),
        default=None,
        help="with --base, for --linear and --ties: keep --density of each task vector, by magnitude (TIES's trim, the default of --ties) or at random, rescaled by 1/density (DARE)",
    )
    parser.add_argument(
        "--density", type=float, default=None, metavar="D", help="the share of each task vector --sparsify keeps, in (0, 1] (default 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0, help="the seed of --sparsify dare's random drop (default 0)")
    add_overwrite_flag(parser)
    return parser.parse_args(args)


def main(args: list[str]) -> None:
    options = parse_args(args)
    layer_t = _parse_layer_t(options.layer_t)

    from embedtune.console import console
    from embedtune.merge.soup import merge_models

    def print_warning(message, *_args, **_kwargs) -> None:
        console.print(f"embedtune merge: warning: {message}", style="yellow", markup=False, highlight=False)

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.showwarning = print_warning
        try:
            summary = merge_models(
                options.checkpoints, options.out, options.method, t=options.t, weights=options.weights,
                layer_t=layer_t, only=options.only, base=options.base, sparsify=options.sparsify, density=options.density,
                seed=options.seed, overwrite=options.overwrite, show_progress=True,
            )  # fmt: skip
        except EmbedtuneError as error:
            fail("merge", str(error))
    _print_summary(summary, time.perf_counter() - start)


def _parse_layer_t(items: list[str]) -> list[tuple[str, float]]:
    """'REGEX=T' strings as (regex, t); the regex may itself contain '='."""
    schedule = []
    for item in items:
        pattern, _, value = item.rpartition("=")
        try:
            t = float(value)
        except ValueError:
            t = None
        if not pattern or t is None:
            fail("merge", f"--layer-t expects REGEX=T with T a number, got '{item}' (give the checkpoints before --layer-t)")
        schedule.append((pattern, t))
    return schedule


def _print_summary(summary: dict, seconds: float) -> None:
    from rich.table import Table

    from embedtune.console import stdout

    # ru_maxrss is in KiB on Linux, bytes on macOS
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    of_what = f"task vectors of {summary['inputs']} checkpoints" if summary["base"] else f"{summary['inputs']} checkpoints"
    table = Table(title=f"merge: {summary['method']} of {of_what}", show_header=False)
    table.add_row(
        "output", f"{summary['out']} ({summary['shards']} shard{'s' if summary['shards'] > 1 else ''}, {summary['bytes'] / 2**20:.1f} MiB)"
    )
    table.add_row("tensors merged", f"{summary['merged']} of {summary['tensors']}")
    if summary["method"] == "slerp":
        table.add_row("fell back to lerp", f"{summary['lerp_fallbacks']} of {summary['merged']} (nearly colinear or zero)")
    table.add_row("copied from the first", f"{summary['copied']} (non-floating or not matched by --only)")
    table.add_row("time", f"{seconds:.1f} s")
    table.add_row("peak RSS", f"{peak_mib:.0f} MiB")
    stdout.print(table)
    stdout.print(_distance_table(summary))


def _distance_table(summary: dict):
    """How far apart the inputs were: relative norms and pairwise cosines over the merged tensors."""
    from rich.table import Table

    distances, labels = summary["distances"], summary["labels"]
    if distances["relative_to"] == "base":
        title, norm_header, vector = f"task vectors against the base {summary['base']}", "‖θᵢ − θ_base‖ / ‖θ_base‖", "δ"
    else:
        title, norm_header, vector = "checkpoints (no --base: whole weights)", "‖θᵢ − θ₁‖ / ‖θ₁‖", "θ"
    table = Table(title=f"how far apart: {title}, over the {summary['merged']} merged tensors")
    table.add_column("#", justify="right")
    table.add_column("checkpoint", overflow="fold")
    table.add_column(norm_header, justify="right")
    for j in range(len(labels)):
        table.add_column(f"cos({vector}ᵢ, {vector}{j + 1})", justify="right")
    for i, label in enumerate(labels):
        table.add_row(str(i + 1), label, f"{distances['relative_norms'][i]:.3g}", *(f"{cos:.6f}" for cos in distances["cosines"][i]))
    return table
