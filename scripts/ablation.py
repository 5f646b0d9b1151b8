"""What each stage of the recipe buys: an ablation on real data, with seeds, each row with its time.

    python scripts/ablation.py --data scifact --work runs/ablation-scifact                 # every arm, seeds 1 2 3
    python scripts/ablation.py --data stdlib --work runs/ablation-stdlib --seeds 1 2 3
    python scripts/ablation.py --data scifact --arms sft filtered soup --seeds 1 2 3 --sts ../shared/data/stsb/sts-dev.csv
    python scripts/ablation.py --data scifact --arms pretrain synth bm25 hybrid --synth synth/scifact.jsonl

Every arm starts from all-MiniLM-L6-v2 and trains on the same training queries, scored on the
same held-out queries (``embedtune data`` splits a BEIR folder by query, or the embedded stdlib
set by package). The first three arms each add one thing to the one above; the others change
one thing of ``filtered``:

- ``sft``: plain supervised fine-tuning, in-batch negatives only (InfoNCE).
- ``mined``: + one hard negative per query, the base model's best-ranked non-positive document
  (dense mining, no false-negative filter).
- ``filtered``: + false-negative filtering: the best-ranked document scoring below 95% of the
  positive's cosine (NV-Retriever's TopK-PercPos, ``--relative-margin 0.05``), searched down to
  rank 1,000 so that queries whose positive scores low still get one (the few that have none
  are left out, `--drop-short`).
- ``qwen3``: ``filtered`` with the Qwen3-Embedding loss (query-query and document-document
  negatives, false negatives masked) instead of InfoNCE.
- ``pretrain``: ``filtered`` after a weak-pair stage on the corpus (``--pretrain`` picks which:
  heuristic title/abstract pairs, or any pairs file).
- ``synth``: ``filtered`` after the same stage on LLM-written queries for the corpus (``--synth``:
  the pairs file `embedtune synth` writes), so that both kinds of stage-one data sit in one table.
- ``bm25`` / ``hybrid``: ``filtered`` with negatives ranked by BM25 or by both (needs bm25s).
- ``soup``: the uniform average of the ``filtered`` arm's seed models (``embedtune merge
  --linear``, a model soup): a merge that needs no second task.

The work folder keeps every run; a rerun skips what is finished (a killed ablation continues).
Results go to WORK/ablation.json and WORK/ablation.md (mean ± std over seeds; seconds of wall
time per run, mining and pre-training included where the arm needs them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from embedtune.eval.tasks import HEADLINE_METRIC, sweep_objective

BASE = "all-MiniLM-L6-v2"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ARMS = ["sft", "mined", "filtered", "qwen3", "pretrain", "synth", "bm25", "hybrid", "soup"]
STAGED = ("pretrain", "synth")  # arms with a pre-training stage before the filtered SFT
ARM_TITLES = {
    "base": "base all-MiniLM-L6-v2 (no training)",
    "sft": "plain SFT, in-batch negatives",
    "mined": "+ 1 mined hard negative (dense, unfiltered)",
    "filtered": "+ false-negative filter (neg < 0.95 x pos)",
    "qwen3": "filtered, qwen3 loss instead of InfoNCE",
    "pretrain": "filtered, after a pre-training stage",
    "synth": "filtered, after pre-training on synthetic queries",
    "bm25": "filtered, BM25-ranked negatives",
    "hybrid": "filtered, BM25 + dense (RRF) negatives",
    "soup": "filtered + merge: uniform soup of its seeds",
}
MINING = {  # arm -> (ranking method, false-negative filter flags)
    "mined": ("dense", ["--margin=-inf"]),
    "filtered": ("dense", ["--relative-margin", "0.05", "--drop-short"]),
    "bm25": ("bm25", ["--relative-margin", "0.05", "--drop-short"]),
    "hybrid": ("hybrid", ["--relative-margin", "0.05", "--drop-short"]),
}


@dataclass
class Plan:
    """What every run shares: the split data, lengths, epochs, and where things go."""

    work: Path
    data: Path  # a folder with train.jsonl and eval/ (a BEIR folder), written by `embedtune data`
    corpus: Path | None  # what mining searches and the weak pairs come from (None: the training positives)
    max_length: int
    epochs: int
    stages: dict[str, list[str]]  # arm in STAGED -> its pre-training stage's overrides
    sts: Path | None
    results: dict = field(default_factory=dict)

    def save(self) -> None:
        (self.work / "ablation.json").write_text(json.dumps(self.results, indent=2) + "\n")


def run(plan: Plan, key: str, command: list[str], done: Path) -> float:
    """Run one embedtune command unless ``done`` exists; its wall seconds, measured or recorded."""
    times = plan.results.setdefault("seconds", {})
    if done.exists() and key in times:
        return times[key]
    print(f"\n== {key}: embedtune {' '.join(command)}", flush=True)
    start = time.perf_counter()
    finished = subprocess.run([sys.executable, "-m", "embedtune", *command], check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if finished.returncode != 0:
        sys.exit(f"ablation: {key} failed (exit {finished.returncode}); its message is above")
    times[key] = round(time.perf_counter() - start, 1)
    plan.save()
    return times[key]


def train(plan: Plan, key: str, data: Path, seed: int, overrides: list[str]) -> tuple[Path, float]:
    out = plan.work / key
    command = ["train", "stage=sft", "data=files", f"data.train={data}", f"data.eval={plan.data / 'eval'}", f"seed={seed}",
               f"train.epochs={plan.epochs}", f"backbone.max_length={plan.max_length}", "eval.before=false",
               "eval.batch_size=128", f"output_dir={out}", *overrides]  # fmt: skip
    seconds = run(plan, key, command, out / "eval.json")
    return out, seconds


def mine(plan: Plan, arm: str) -> tuple[Path, float]:
    method, filters = MINING[arm]
    out = plan.work / f"mined-{arm}.jsonl"
    corpus = ["--corpus", str(plan.corpus)] if plan.corpus else []
    command = ["mine", "--model", BASE, "--data", str(plan.data / "train.jsonl"), *corpus, "--out", str(out),
               "--method", method, "--num-negatives", "1", "--range-max", "1000", "--max-length", str(plan.max_length),
               "--batch-size", "128", *filters]  # fmt: skip
    return out, run(plan, f"mine-{arm}", command, out)


def held_out_score(run_folder: Path) -> float:
    """A training run's held-out headline number (nDCG@10, or Spearman on an STS set)."""
    return sweep_objective(json.loads((run_folder / "eval.json").read_text())["after"])


def evaluate(plan: Plan, key: str, model: Path, data: Path, metric: str, flags: list[str]) -> float:
    """`embedtune eval` of one model on one data set (cached in WORK/KEY.json): its ``metric``."""
    out = plan.work / f"{key}.json"
    run(plan, key, ["eval", "--model", str(model), "--data", str(data), "--batch-size", "128", "--out", str(out), *flags], out)
    return json.loads(out.read_text())[metric]


def sts_score(plan: Plan, key: str, model: Path) -> float | None:
    return None if plan.sts is None else evaluate(plan, f"sts-{key}", model, plan.sts, HEADLINE_METRIC["sts"], [])


def run_arm(plan: Plan, arm: str, seed: int, first_seed: bool) -> dict:
    """One arm at one seed: its held-out score, STS Spearman (first seed only) and wall seconds."""
    key = f"{arm}-s{seed}"
    seconds, start_from = 0.0, []
    if arm == "sft":
        data, negatives = plan.data / "train.jsonl", 0
    else:
        data, seconds = mine(plan, "filtered" if arm in ("qwen3", *STAGED) else arm)
        negatives = 1
    if arm in STAGED:
        stage = f"{arm}-stage1-s{seed}"  # the pre-training stage; the arm's SFT is ARM-sN
        out = plan.work / stage
        command = ["train", "stage=pretrain", f"seed={seed}", f"backbone.max_length={plan.max_length}", "eval.before=false",
                   f"data.eval={plan.data / 'eval'}", "eval.batch_size=128", f"output_dir={out}", *plan.stages[arm]]  # fmt: skip
        seconds += run(plan, stage, command, out / "eval.json")
        start_from = ["backbone=hf", f"backbone.path={out / 'final'}"]
    loss = ["loss=qwen3"] if arm == "qwen3" else []
    folder, train_seconds = train(plan, key, data, seed, [f"negatives.per_query={negatives}", *loss, *start_from])
    result = {"held_out": held_out_score(folder), "seconds": seconds + train_seconds}
    if first_seed:
        result["sts"] = sts_score(plan, key, folder / "final")
    return result


def run_soup(plan: Plan, seeds: list[int]) -> dict:
    """The filtered arm's seed models averaged (a model soup), scored like the arms."""
    out = plan.work / "soup"
    seconds = run(
        plan, "soup", ["merge", "--linear", *(str(plan.work / f"filtered-s{seed}" / "final") for seed in seeds), "--out", str(out)], out
    )
    held_out = evaluate(
        plan, "soup-held-out", out, plan.data / "eval", HEADLINE_METRIC["retrieval"], ["--max-length", str(plan.max_length)]
    )
    return {"held_out": held_out, "seconds": seconds, "sts": sts_score(plan, "soup", out)}


def run_base(plan: Plan) -> dict:
    flags = ["--max-length", str(plan.max_length)]
    return {"held_out": evaluate(plan, "base-held-out", Path(BASE), plan.data / "eval", HEADLINE_METRIC["retrieval"], flags), "seconds": 0.0,
            "sts": sts_score(plan, "base", Path(BASE))}  # fmt: skip


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def table(plan: Plan) -> str:
    """The ablation as a markdown table: one row per arm, mean ± std over its seeds."""
    lines = ["| arm | seeds | held-out nDCG@10 | change vs plain SFT | STS-B Spearman | wall s per run |", "|---|---|---|---|---|---|"]
    sft = [run["held_out"] for run in plan.results["runs"].get("sft", {}).values()]
    for arm in (arm for arm in ["base", *ARMS] if arm in plan.results["runs"]):  # the arms' order, whatever order they ran in
        runs = plan.results["runs"][arm]
        scores = [run["held_out"] for run in runs.values()]
        change = f"{statistics.mean(scores) - statistics.mean(sft):+.4f}" if sft and arm != "sft" else ""
        sts = next((f"{run['sts']:.4f}" for run in runs.values() if run.get("sts") is not None), "")
        seconds = statistics.mean(run["seconds"] for run in runs.values())
        lines.append(f"| {ARM_TITLES[arm]} | {len(runs)} | {mean_std(scores)} | {change} | {sts} | {seconds:.0f} |")
    return "\n".join(lines) + "\n"


def prepare(options: argparse.Namespace) -> Plan:
    """The work folder and the split data (`embedtune data`), made once."""
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    scifact = options.data_dir / "scifact"
    if options.data == "scifact":
        split = ["data", "--beir", str(scifact), "--split", "train", "--eval-fraction", "0.3", "--out", str(work / "data")]
        corpus = scifact / "corpus.jsonl"
    else:
        split = ["data", "--out", str(work / "data"), "--max-train-pairs", "1024", "--max-eval-queries", "300"]  # the default job's sizes
        corpus = None  # mining searches the training documents
    if options.pretrain == "weak":  # the stdlib has no corpus apart from its pairs: pass a pairs file there
        stages = {"pretrain": ["data=weak", f"data.train={corpus}", "data.kinds=[title_body,first_sentence_rest]"]}
    else:
        stages = {"pretrain": ["data=files", f"data.train={options.pretrain}"]}
    if options.synth:
        stages["synth"] = ["data=files", f"data.train={options.synth}"]
    budget = [f"train.max_steps={options.pretrain_steps}", f"train.lr={options.pretrain_lr}"]  # the same for both stages
    stages = {arm: [*overrides, *budget] for arm, overrides in stages.items()}
    plan = Plan(work, work / "data", corpus, options.max_length, options.epochs, stages, options.sts)
    results_file = work / "ablation.json"
    plan.results = json.loads(results_file.read_text()) if results_file.exists() else {}
    plan.results.update(seeds=options.seeds, data=options.data, max_length=options.max_length, epochs=options.epochs)
    plan.results.setdefault("runs", {})
    run(plan, "data", split, work / "data" / "train.jsonl")
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["scifact", "stdlib"], default="scifact", help="which data set (default: scifact)")
    parser.add_argument("--work", type=Path, required=True, help="the work folder (a rerun continues it)")
    parser.add_argument("--arms", nargs="+", choices=["base", *ARMS], default=["base", *ARMS[:5], "soup"], help="arms to run")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--max-length", type=int, default=128, help="document tokens in training and scoring (default 128)")
    parser.add_argument("--epochs", type=int, default=3, help="SFT epochs (default 3)")
    parser.add_argument("--pretrain", default="weak", help="pre-training pairs: weak (title/abstract of the corpus) or a pairs file")
    parser.add_argument("--synth", type=Path, default=None, help="the synth arm's pre-training pairs (written by `embedtune synth`)")
    parser.add_argument("--pretrain-steps", type=int, default=30, help="steps of either pre-training stage (default 30)")
    parser.add_argument("--pretrain-lr", type=float, default=5e-5)
    parser.add_argument("--sts", type=Path, default=None, help="an STS file to score the first seed of every arm on (e.g. STS-B dev)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the shared data (default: ../shared/data)")
    options = parser.parse_args()
    if options.data == "stdlib" and "pretrain" in options.arms and options.pretrain == "weak":
        parser.error("--data stdlib: weak pairs need a corpus; pass --pretrain PAIRS_FILE or leave out the pretrain arm")
    if "synth" in options.arms and options.synth is None:
        parser.error("the synth arm needs --synth PAIRS_FILE (the output of `embedtune synth`)")
    plan = prepare(options)
    for arm in options.arms:
        if arm == "base":
            plan.results["runs"]["base"] = {"-": run_base(plan)}
        elif arm == "soup":
            plan.results["runs"]["soup"] = {"-": run_soup(plan, options.seeds)}
        else:
            for seed in options.seeds:
                runs = plan.results["runs"].setdefault(arm, {})
                runs[str(seed)] = run_arm(plan, arm, seed, first_seed=seed == options.seeds[0])
        plan.save()
        (plan.work / "ablation.md").write_text(table(plan))
        print(table(plan), flush=True)


if __name__ == "__main__":
    main()
