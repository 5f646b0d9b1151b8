"""`embedtune report`: pictures and tables of a training run, or of a sweep's runs ranked by their
held-out headline metric."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from embedtune.cli.common import add_overwrite_flag, check_outputs, command_parser, fail, plots_module
from embedtune.errors import EmbedtuneError
from embedtune.eval.tasks import SWEEP_METRICS, TASK_TITLES, task_of
from embedtune.fileio import read_json

SWEEP_ALSO_SHOWN = ("mrr@10", "recall@10", "pearson")
SWEEP_RUN = re.compile(r"^\d+_(?P<overrides>.+)$")  # Hydra's <job number>_<override_dirname>
OPTUNA_RESULTS = "optimization_results.yaml"  # the Optuna sweeper's verdict, beside the runs


def main(args: list[str]) -> None:
    parser = command_parser(
        "report",
        "Pictures and tables of a training run: training curves (loss, lr, pairs/s, embedding std, "
        "similarity gap vs step) from RUN_DIR/train_log.jsonl. For a sweep folder (runs/<x>-sweep/, one subfolder per "
        f"run with eval.json; a grid or an Optuna search): the runs as a table sorted by the held-out {' or '.join(SWEEP_METRICS)} after "
        "training, the best run named (and Optuna's own verdict from optimization_results.yaml), and that metric against the swept value.",
        "examples:\n  embedtune report runs/sft\n  embedtune report runs/sft-sweep",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (train_log.jsonl) or a sweep folder")
    parser.add_argument("--out-dir", default=None, help="where the PNGs go (default: RUN_DIR)")
    add_overwrite_flag(parser)
    options = parser.parse_args(args)
    run_dir = Path(options.run_dir)
    out_dir = Path(options.out_dir) if options.out_dir else run_dir
    is_run = (run_dir / "train_log.jsonl").is_file()
    if not is_run and not (run_dir.is_dir() and any((child / "eval.json").is_file() for child in run_dir.iterdir())):
        fail("report", f"{run_dir}: neither a run folder (train_log.jsonl) nor a sweep folder (*/eval.json)")
    check_outputs("report", [("--out-dir", out_dir, True)], True)  # a folder to write into
    pictures = ["training_curves.png"] if is_run else ["sweep.png", "training_curves.png"]
    check_outputs("report", [("--out-dir", out_dir / name, False) for name in pictures], options.overwrite)
    try:
        written = _report_run(run_dir, out_dir) if is_run else _report_sweep(run_dir, out_dir)
    except EmbedtuneError as error:
        fail("report", str(error))
    print("wrote " + ", ".join(str(path) for path in written))


def _read_log(path: Path) -> list[dict]:
    from embedtune.data.rows import iter_rows

    return [row for _, row in iter_rows(str(path))]


def _curve_records(run_dir: Path) -> list[dict]:
    """A run's training records and, when it evaluated during training, its held-out points."""
    logs = [run_dir / "train_log.jsonl", run_dir / "eval_log.jsonl"]
    return [record for path in logs if path.is_file() for record in _read_log(path)]


def _report_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """Training curves of one run, and its before/after table when it has an eval.json."""
    from embedtune.console import stdout
    from embedtune.eval.tables import comparison_table

    records = _read_log(run_dir / "train_log.jsonl")
    if not records:
        fail("report", f"{run_dir / 'train_log.jsonl'}: no records yet")
    last = records[-1]
    print(f"{run_dir}: {len(records)} log records, last at step {last['step']}: "
          + ", ".join(f"{key} {value:.4g}" for key, value in last.items() if key not in ("step", "epoch")))  # fmt: skip
    if (run_dir / "eval.json").is_file():
        result = read_json(run_dir / "eval.json", "eval.json")
        if result.get("after"):
            stdout.print(
                comparison_table(
                    f"held-out {TASK_TITLES[task_of(result['after'])]}: {result.get('data', run_dir.name)}",
                    result.get("before"),
                    result["after"],
                )
            )
    return [
        plots_module("report").training_curves(
            {run_dir.name: _curve_records(run_dir)}, out_dir / "training_curves.png", f"training: {run_dir}"
        )
    ]


def sweep_overrides(folder_name: str) -> dict[str, str]:
    """``3_loss.temperature=0.05,train.lr=1e-5`` -> {"loss.temperature": "0.05", "train.lr": "1e-5"}
    (Hydra's override_dirname; a comma inside a list value does not split)."""
    match = SWEEP_RUN.match(folder_name)
    if not match or "=" not in match["overrides"]:
        return {"run": folder_name}
    parts = re.split(r",(?=[^,=\[\]]+=)", match["overrides"])
    return dict(part.split("=", 1) for part in parts)


def _short(value: str) -> str:
    """A swept value as the table shows it: a number Optuna drew (0.08116262258099886) to 4
    significant digits; anything else as written."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.4g}" if len(value) > 8 else value


def _report_sweep(sweep_dir: Path, out_dir: Path) -> list[Path]:
    """The sweep's runs as a table sorted by its headline metric (the first of SWEEP_METRICS its runs have) after training, the best named; the
    metric against the swept value; all runs' training curves on the same axes."""
    from embedtune.console import stdout

    runs = []
    for folder in sorted((child for child in sweep_dir.iterdir() if (child / "eval.json").is_file()), key=lambda p: p.name):
        result = read_json(folder / "eval.json", "eval.json")
        after, before = result.get("after") or {}, result.get("before") or {}
        log = _curve_records(folder)
        runs.append({"folder": folder, "overrides": sweep_overrides(folder.name), "after": after, "before": before, "log": log})
    headline = next((m for m in SWEEP_METRICS if any(m in run["after"] for run in runs)), SWEEP_METRICS[0])
    runs.sort(key=lambda run: -run["after"].get(headline, float("-inf")))
    scored = [run for run in runs if headline in run["after"]]
    if not scored:
        fail("report", f"{sweep_dir}: no run has {headline} in its eval.json 'after'")
    swept = [
        key
        for key in dict.fromkeys(key for run in runs for key in run["overrides"])
        if len({run["overrides"].get(key) for run in runs}) > 1
    ] or list(runs[0]["overrides"])

    stdout.print(_sweep_table(sweep_dir, runs, swept, headline, [headline, *(m for m in SWEEP_ALSO_SHOWN if m in scored[0]["after"])]))
    best = scored[0]
    print(f"best: {best['folder'].name} ({headline} {best['after'][headline]:.4f})")
    if (sweep_dir / OPTUNA_RESULTS).is_file():  # a searched sweep: what Optuna itself concluded
        found = yaml.safe_load((sweep_dir / OPTUNA_RESULTS).read_text(encoding="utf-8")) or {}
        params = ", ".join(f"{key}={_short(str(value))}" for key, value in (found.get("best_params") or {}).items())
        print(f"optuna ({OPTUNA_RESULTS}): best value {found.get('best_value')} at {params}")

    parameter = swept[0] if len(swept) == 1 else "run"
    values = [
        run["overrides"].get(parameter, "") if len(swept) == 1 else ",".join(f"{k}={run['overrides'].get(k, '')}" for k in swept)
        for run in scored
    ]
    plots = plots_module("report")
    written = [plots.quality_vs_value(values, [run["after"][headline] for run in scored], out_dir / "sweep.png", parameter, headline)]
    logs = {",".join(f"{k}={run['overrides'].get(k, '')}" for k in swept): run["log"] for run in runs if run["log"]}
    if logs:
        written.append(plots.training_curves(logs, out_dir / "training_curves.png", f"training: {sweep_dir}"))
    return written


def _sweep_table(sweep_dir: Path, runs: list[dict], swept: list[str], headline: str, metrics: list[str]):
    """The sweep's runs, best first: the swept values, the metrics, the headline's change from
    the base model and the last logged loss."""
    from rich.table import Table

    table = Table(title=f"sweep: {sweep_dir} ({len(runs)} runs, best first)")
    table.add_column("run")
    for key in swept:
        table.add_column(key, justify="right")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("change", justify="right")  # of the headline metric, from the base model
    table.add_column("loss", justify="right")  # the last logged
    for run in runs:
        change = run["after"][headline] - run["before"][headline] if headline in run["after"] and headline in run["before"] else None
        table.add_row(
            run["folder"].name.split("_", 1)[0] if SWEEP_RUN.match(run["folder"].name) else run["folder"].name,
            *(_short(run["overrides"].get(key, "")) for key in swept),
            *(f"{run['after'][m]:.4f}" if m in run["after"] else "-" for m in metrics),
            f"{change:+.4f}" if change is not None else "-",
            next((f"{record['loss']:.4f}" for record in reversed(run["log"]) if "loss" in record), "-"),
        )
    return table
