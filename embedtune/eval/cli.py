"""`embedtune diagnose` (the geometry of models' embedding spaces, with pictures) and
`embedtune report` (pictures and tables of a training run or a sweep)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from embedtune.cli import fail, plots_module, quiet_transformers
from embedtune.errors import DataError, EmbedtuneError

DIAGNOSE_EXAMPLES = """examples:
  embedtune diagnose --model all-MiniLM-L6-v2 runs/sft/final --data stsb/sts-dev.csv --plots
  embedtune diagnose --model runs/sft/final --data train.jsonl beir/scifact --split train --out-dir diag/

verdicts (thresholds in embedtune/eval/diagnostics.py):
  collapsed      embedding std x sqrt(dim) < {COLLAPSED_STD}, or random pairs average cosine > {COLLAPSED_RANDOM_COSINE}
  anisotropic    random pairs average cosine > {ANISOTROPIC_RANDOM_COSINE} (a narrow cone)
  not separated  positive pairs score < {SEPARATION_GAP} cosine above mismatched pairs on average
  healthy        none of the above
"""
SWEEP_METRICS = ("ndcg@10", "spearman")  # what ranks a sweep's runs: the first their eval.json has (retrieval, STS)
SWEEP_ALSO_SHOWN = ("mrr@10", "recall@10", "pearson")
SWEEP_RUN = re.compile(r"^\d+_(?P<overrides>.+)$")  # Hydra's <job number>_<override_dirname>


# --- diagnose ----------------------------------------------------------------------------


def diagnose_command(args: list[str]) -> None:
    from embedtune.eval import diagnostics

    parser = argparse.ArgumentParser(
        prog="embedtune diagnose",
        description="Geometry of each model's embedding space on each data set: alignment and uniformity (Wang & Isola "
        "2020), the spread of the dimensions (collapse), the average cosine of random pairs (anisotropy) and the gap "
        "between positive and random pairs, with a verdict in plain words. Positive pairs: a pairs file's rows, a BEIR "
        "folder's judged pairs, an STS file's top-quarter pairs by gold score.",
        epilog=DIAGNOSE_EXAMPLES.format(**vars(diagnostics)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, nargs="+", help="model folder(s) or packaged name; the first is drawn as the base in plots")
    parser.add_argument("--data", required=True, nargs="+", help="pairs file(s), BEIR folder(s) or STS file(s)")
    parser.add_argument("--split", default="test", help="qrels split of a BEIR folder (default: test)")
    parser.add_argument("--query-column", default="query")
    parser.add_argument("--positive-column", default="positive")
    parser.add_argument("--label-column", default=None, help="colour the PCA plot by this column of a pairs file")
    parser.add_argument("--max-pairs", type=int, default=1000, help="positive pairs per data set, sampled (default: 1000)")
    parser.add_argument("--seed", type=int, default=0, help="for sampling the pairs")
    parser.add_argument("--max-length", type=int, default=None, help="override the model's max tokens")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out-dir", default=None, help="write diagnostics.json (and the plots) here (default with --plots: diagnostics/)")
    parser.add_argument("--plots", action="store_true", help="also draw similarity histograms per data set and a PCA scatter")
    options = parser.parse_args(args)
    if options.batch_size < 1:
        fail("diagnose", f"--batch-size must be >= 1, got {options.batch_size}")
    if options.max_pairs < 2:
        fail("diagnose", f"--max-pairs must be >= 2 (random pairs need two positives), got {options.max_pairs}")
    plots = plots_module("diagnose") if options.plots else None  # before the slow part: a missing matplotlib fails now

    import numpy as np
    import torch
    from rich.table import Table

    from embedtune.data.files import Columns
    from embedtune.eval.benchmarks import load_benchmark, positive_pairs
    from embedtune.io import write_text_atomic
    from embedtune.model import load_embedder
    from embedtune.progress import stdout

    quiet_transformers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    columns = Columns(options.query_column, options.positive_column, None, label=options.label_column)
    rows, similarities, points = [], {}, {}  # similarities[data][model], points[model]: for the plots
    try:
        benchmarks = [load_benchmark(source, options.split, columns) for source in options.data]
        pairs = [positive_pairs(benchmark, options.max_pairs, options.seed) for benchmark in benchmarks]
        items = [_pair_items(benchmark, chosen) for benchmark, chosen in zip(benchmarks, pairs)]
        for name in options.model:
            model = load_embedder(name, max_length=options.max_length).to(device)
            for benchmark, chosen, (texts, first_rows, second_rows) in zip(benchmarks, pairs, items):
                embeddings = _encode_items(model, texts, options.batch_size, benchmark.name)
                first, second = embeddings[first_rows], embeddings[second_rows]
                numbers = diagnostics.diagnose(first, second, embeddings)
                rows.append({"data": benchmark.source, "name": benchmark.name, "task": benchmark.task, "model": name,
                             "pairs": len(chosen), "texts": len(texts), **numbers, "verdict": diagnostics.verdict(numbers)})  # fmt: skip
                if plots:
                    normalised = torch.nn.functional.normalize(embeddings, dim=-1)
                    positive, mismatched = diagnostics.pair_similarities(normalised[first_rows], normalised[second_rows])
                    similarities.setdefault(benchmark.source, {})[name] = (positive.numpy(), mismatched.numpy())
                    points.setdefault(name, []).append(normalised.numpy())
            del model  # freed before the next model loads
    except EmbedtuneError as error:
        fail("diagnose", str(error))

    shown = {"alignment": "align ↓", "uniformity": "uniform ↓", "embedding_std": "std·√dim", "random_cosine": "rand cos",
             "positive_cosine": "pos cos", "similarity_gap": "gap"}  # fmt: skip
    for benchmark, chosen in zip(benchmarks, pairs):
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

    out_dir = Path(options.out_dir or "diagnostics") if (options.out_dir or options.plots) else None
    if out_dir is None:
        return
    write_text_atomic(out_dir / "diagnostics.json", json.dumps({"max_pairs": options.max_pairs, "seed": options.seed, "rows": rows}, indent=2) + "\n")
    written = [out_dir / "diagnostics.json"]
    if plots:
        for benchmark in benchmarks:
            file = out_dir / f"similarity_{_file_stem(benchmark.name)}.png"
            written.append(plots.similarity_histograms(similarities[benchmark.source], file, f"positive vs random pairs: {benchmark.name}"))
        labels = _point_labels(benchmarks, pairs, items, options.label_column is not None)
        stacked = {name: np.concatenate(parts) for name, parts in points.items()}
        written.append(plots.pca_scatter(stacked, labels, out_dir / "pca.png", f"PCA of the embeddings ({', '.join(b.name for b in benchmarks)})"))
    print("wrote " + ", ".join(str(path) for path in written))


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

    from embedtune.progress import progress_bar

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


# --- report ------------------------------------------------------------------------------


def report_command(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="embedtune report",
        description="Pictures and tables of a training run: training curves (loss, lr, pairs/s, embedding std, "
        "similarity gap vs step) from RUN_DIR/train_log.jsonl. For a sweep folder (runs/<x>-sweep/, one subfolder per "
        f"run with eval.json): the runs as a table sorted by the held-out {' or '.join(SWEEP_METRICS)} after training, "
        "the best run named, and that metric against the swept value.",
        epilog="examples:\n  embedtune report runs/sft\n  embedtune report runs/sft-sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (train_log.jsonl) or a sweep folder")
    parser.add_argument("--out-dir", default=None, help="where the PNGs go (default: RUN_DIR)")
    options = parser.parse_args(args)
    run_dir = Path(options.run_dir)
    out_dir = Path(options.out_dir) if options.out_dir else run_dir
    try:
        if (run_dir / "train_log.jsonl").is_file():
            written = _report_run(run_dir, out_dir)
        elif run_dir.is_dir() and any((child / "eval.json").is_file() for child in run_dir.iterdir()):
            written = _report_sweep(run_dir, out_dir)
        else:
            fail("report", f"{run_dir}: neither a run folder (train_log.jsonl) nor a sweep folder (*/eval.json)")
    except EmbedtuneError as error:
        fail("report", str(error))
    print("wrote " + ", ".join(str(path) for path in written))


def _read_log(path: Path) -> list[dict]:
    from embedtune.data.files import iter_rows

    return [row for _, row in iter_rows(str(path))]


def _curve_records(run_dir: Path) -> list[dict]:
    """A run's training records and, when it evaluated during training, its held-out points."""
    logs = [run_dir / "train_log.jsonl", run_dir / "eval_log.jsonl"]
    return [record for path in logs if path.is_file() for record in _read_log(path)]


def _read_eval(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: unreadable eval.json ({error})") from None


def _report_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Training curves of one run, and its before/after table when it has an eval.json."""
    from embedtune.progress import stdout
    from embedtune.train import comparison_table

    records = _read_log(run_dir / "train_log.jsonl")
    if not records:
        fail("report", f"{run_dir / 'train_log.jsonl'}: no records yet")
    last = records[-1]
    print(f"{run_dir}: {len(records)} log records, last at step {last['step']}: "
          + ", ".join(f"{key} {value:.4g}" for key, value in last.items() if key not in ("step", "epoch")))  # fmt: skip
    if (run_dir / "eval.json").is_file():
        result = _read_eval(run_dir / "eval.json")
        if result.get("after"):
            stdout.print(comparison_table(f"held-out {'STS' if 'spearman' in result['after'] else 'retrieval'}: {result.get('data', run_dir.name)}", result.get("before"), result["after"]))
    return [plots_module("report").training_curves({run_dir.name: _curve_records(run_dir)}, out_dir / "training_curves.png", f"training: {run_dir}")]


def _sweep_overrides(folder_name: str) -> dict[str, str]:
    """``3_loss.temperature=0.05,train.lr=1e-5`` -> {"loss.temperature": "0.05", "train.lr": "1e-5"}
    (Hydra's override_dirname; a comma inside a list value does not split)."""
    match = SWEEP_RUN.match(folder_name)
    if not match or "=" not in match["overrides"]:
        return {"run": folder_name}
    parts = re.split(r",(?=[^,=\[\]]+=)", match["overrides"])
    return dict(part.split("=", 1) for part in parts)


def _report_sweep(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """The sweep's runs as a table sorted by its headline metric (the first of SWEEP_METRICS its runs have) after training, the best named; the
    metric against the swept value; all runs' training curves on the same axes."""
    from rich.table import Table

    from embedtune.progress import stdout

    runs = []
    for folder in sorted((child for child in sweep_dir.iterdir() if (child / "eval.json").is_file()), key=lambda p: p.name):
        result = _read_eval(folder / "eval.json")
        after, before = result.get("after") or {}, result.get("before") or {}
        log = _curve_records(folder)
        runs.append({"folder": folder, "overrides": _sweep_overrides(folder.name), "after": after, "before": before, "log": log})
    headline = next((m for m in SWEEP_METRICS if any(m in run["after"] for run in runs)), SWEEP_METRICS[0])
    runs.sort(key=lambda run: -run["after"].get(headline, float("-inf")))
    scored = [run for run in runs if headline in run["after"]]
    if not scored:
        fail("report", f"{sweep_dir}: no run has {headline} in its eval.json 'after'")
    swept = [key for key in dict.fromkeys(key for run in runs for key in run["overrides"]) if len({run["overrides"].get(key) for run in runs}) > 1] or list(runs[0]["overrides"])

    table = Table(title=f"sweep: {sweep_dir} ({len(runs)} runs, best first)")
    table.add_column("run")
    for key in swept:
        table.add_column(key, justify="right")
    metrics = [headline, *(m for m in SWEEP_ALSO_SHOWN if m in scored[0]["after"])]
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("change", justify="right")  # of the headline metric, from the base model
    table.add_column("loss", justify="right")  # the last logged
    for run in runs:
        change = run["after"][headline] - run["before"][headline] if headline in run["after"] and headline in run["before"] else None
        table.add_row(
            run["folder"].name.split("_", 1)[0] if SWEEP_RUN.match(run["folder"].name) else run["folder"].name,
            *(run["overrides"].get(key, "") for key in swept),
            *(f"{run['after'][m]:.4f}" if m in run["after"] else "-" for m in metrics),
            f"{change:+.4f}" if change is not None else "-",
            next((f"{record['loss']:.4f}" for record in reversed(run["log"]) if "loss" in record), "-"),
        )
    stdout.print(table)
    best = scored[0]
    print(f"best: {best['folder'].name} ({headline} {best['after'][headline]:.4f})")

    parameter = swept[0] if len(swept) == 1 else "run"
    values = [run["overrides"].get(parameter, "") if len(swept) == 1 else ",".join(f"{k}={run['overrides'].get(k, '')}" for k in swept) for run in scored]
    plots = plots_module("report")
    written = [plots.quality_vs_value(values, [run["after"][headline] for run in scored], out_dir / "sweep.png", parameter, headline)]
    logs = {",".join(f"{k}={run['overrides'].get(k, '')}" for k in swept): run["log"] for run in runs if run["log"]}
    if logs:
        written.append(plots.training_curves(logs, out_dir / "training_curves.png", f"training: {sweep_dir}"))
    return written
