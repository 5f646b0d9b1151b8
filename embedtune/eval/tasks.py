"""The evaluation tasks and the one number that heads each: what a sweep ranks by, what a plot
draws, what a table's title calls the task."""

from __future__ import annotations

# The headline metric of each task: nDCG@10 for retrieval (as BEIR and MTEB), Spearman for STS
# (as SentEval and MTEB), test accuracy for a linear probe.
HEADLINE_METRIC = {"retrieval": "ndcg@10", "sts": "spearman", "probe": "accuracy"}
# What ranks a sweep's runs: the first of these their held-out metrics have.
SWEEP_METRICS = (HEADLINE_METRIC["retrieval"], HEADLINE_METRIC["sts"])
TASK_TITLES = {"retrieval": "retrieval", "sts": "STS", "probe": "linear probe"}


def task_of(metrics: dict[str, float]) -> str:
    """The task a set of held-out metrics measured: 'sts' when it has Spearman, else 'retrieval'."""
    return "sts" if HEADLINE_METRIC["sts"] in metrics else "retrieval"


def sweep_objective(metrics: dict[str, float] | None) -> float | None:
    """The number a sweep maximises for one run (nDCG@10, else Spearman), None without one."""
    return next((metrics[name] for name in SWEEP_METRICS if name in (metrics or {})), None)
