"""Pictures of an embedding model and its training, as PNG files (matplotlib, no display).

- `similarity_histograms`: cosine of positive pairs vs random pairs, several models on the same
  axes. Before fine-tuning the two distributions overlap; after, they separate.
- `pca_scatter`: the embeddings projected on their first two principal components, coloured by
  a label (a label column, the data set of origin, or the side of the pair).
- `training_curves`: loss, learning rate, throughput and the collapse indicators of
  ``train_log.jsonl`` against the step, several runs on the same axes.
- `quality_vs_dims`: quality at each Matryoshka size, one line per model.
- `quality_vs_value`: quality of each run of a sweep against the swept value.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works on machines without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from embedtune.eval.tasks import HEADLINE_METRIC  # noqa: E402
from embedtune.fileio import atomic_file  # noqa: E402

# train_log.jsonl fields worth a panel, with their axis labels, in reading order.
CURVES = {
    "loss": "loss",
    "lr": "learning rate",
    "pairs_per_s": "pairs / s",
    "embedding_std": "embedding std × √dim (1 healthy, 0 collapsed)",
    "similarity_gap": "similarity gap (positive − in-batch cosine)",
    "temperature": "temperature τ",
    "ndcg@10": "held-out nDCG@10",  # eval_log.jsonl (eval.every_n_steps)
    "spearman": "held-out STS Spearman",
}


def _save(figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically (a temporary sibling, then a rename) and close it."""
    try:
        with atomic_file(path) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(figure)
    return Path(path)


def similarity_histograms(similarities: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str) -> Path:
    """One pair of histograms per model: ``similarities[model] = (positive cosines, random
    cosines)``. Positives are drawn filled, random pairs as a dashed outline, in the model's
    colour; densities, so sets of different sizes compare."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    bins = np.linspace(-0.2, 1.0, 61)
    low = min(min(np.min(p), np.min(r)) for p, r in similarities.values())
    if low < bins[0]:
        bins = np.linspace(max(-1.0, math.floor(low * 10) / 10), 1.0, 61)
    for index, (model, (positive, random)) in enumerate(similarities.items()):
        color = f"C{index}"
        axes.hist(
            np.asarray(random),
            bins=bins,
            density=True,
            histtype="step",
            linestyle="--",
            linewidth=1.6,
            color=color,
            label=f"{model}: random pairs",
        )
        axes.hist(
            np.asarray(positive), bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=color, label=f"{model}: positive pairs"
        )
        axes.hist(np.asarray(positive), bins=bins, density=True, histtype="step", linewidth=1.6, color=color)
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.set_title(title)
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``points`` (n, dim) projected on their first two principal components (by SVD
    of the centred data), and the share of the variance each component explains."""
    centred = np.asarray(points, dtype=np.float64) - np.mean(points, axis=0)
    _, singular, components = np.linalg.svd(centred, full_matrices=False)
    variance = singular**2
    share = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return centred @ components[:2].T, share


def pca_scatter(embeddings: dict[str, np.ndarray], labels: list[str], path: str | Path, title: str) -> Path:
    """One panel per model: its embeddings of the same texts on their first two principal
    components, one colour per label (in order of first appearance; at most 10 named)."""
    names = list(dict.fromkeys(labels))
    figure, panels = plt.subplots(1, len(embeddings), figsize=(5 * len(embeddings), 4.6), squeeze=False)
    for panel, (model, points) in zip(panels[0], embeddings.items()):
        projected, share = pca_2d(points)
        for index, name in enumerate(names):
            mask = np.array([label == name for label in labels])
            panel.scatter(
                projected[mask, 0], projected[mask, 1], s=9, alpha=0.6, color=f"C{index % 10}", label=name if index < 10 else None
            )
        panel.set_title(model, fontsize="medium")
        panel.set_xlabel(f"PC 1 ({share[0]:.0%} of variance)")
        panel.set_ylabel(f"PC 2 ({share[1]:.0%} of variance)")
        panel.grid(alpha=0.3)
    panels[0][-1].legend(fontsize="small", markerscale=2, loc="best")
    figure.suptitle(title)
    return _save(figure, path)


def training_curves(logs: dict[str, list[dict]], path: str | Path, title: str) -> Path:
    """A panel per logged quantity of `CURVES` against the step; one line per run
    (``logs[run] = its train_log.jsonl records``)."""
    present = [key for key in CURVES if any(key in record for records in logs.values() for record in records)]
    columns = min(3, len(present))
    rows = math.ceil(len(present) / columns)
    figure, panels = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows + 0.4), squeeze=False, layout="constrained")
    for panel, key in zip(panels.flat, present):
        for index, (run, records) in enumerate(logs.items()):
            points = [(record["step"], record[key]) for record in records if key in record]
            if points:
                steps, values = zip(*points)
                panel.plot(steps, values, marker="." if len(points) < 30 else None, color=f"C{index % 10}", label=run)
        panel.set_title(CURVES[key], fontsize="medium")
        panel.set_xlabel("step")
        panel.grid(alpha=0.3)
        if key == "lr":
            panel.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    for panel in list(panels.flat)[len(present) :]:
        panel.set_visible(False)
    if len(logs) > 1:  # one legend for all panels, below them, so no curve hides behind it
        figure.legend(*panels.flat[0].get_legend_handles_labels(), loc="outside lower center", ncols=min(len(logs), 4), fontsize="small")
    figure.suptitle(title)
    return _save(figure, path)


def quality_vs_dims(rows: list[dict], path: str | Path) -> Path:
    """One panel per data set of ``rows`` (the rows of `embedtune eval`: data, task, model, dim
    and metrics), its headline metric (`HEADLINE_METRIC`) against the Matryoshka size, one line per model."""
    sources = list(dict.fromkeys(row["data"] for row in rows))
    figure, panels = plt.subplots(1, len(sources), figsize=(5.5 * len(sources), 4.2), squeeze=False, layout="constrained")
    for panel, source in zip(panels[0], sources):
        here = [row for row in rows if row["data"] == source]
        metric = HEADLINE_METRIC[here[0]["task"]]
        for index, model in enumerate(dict.fromkeys(row["model"] for row in here)):
            points = sorted((row["dim"], row[metric]) for row in here if row["model"] == model)
            dims, values = zip(*points)
            panel.plot(dims, values, marker="o", color=f"C{index % 10}", label=model)
        all_dims = sorted({row["dim"] for row in here})
        panel.set_xscale("log", base=2)
        panel.set_xticks(all_dims, [str(d) for d in all_dims])
        panel.minorticks_off()
        panel.set_xlabel("embedding dimensions (truncated, re-normalised)")
        panel.set_ylabel(metric)
        panel.set_title(f"{here[0]['name']}", fontsize="medium")
        panel.grid(alpha=0.3)
        panel.legend(fontsize="small")
    figure.suptitle("quality vs Matryoshka dimension")
    return _save(figure, path)


def quality_vs_value(values: list[str], scores: list[float], path: str | Path, parameter: str, metric: str) -> Path:
    """A sweep's ``metric`` against the swept ``parameter``; numeric values on a numeric axis
    (logarithmic when they span a factor of 10 or more), others as categories. The best run is
    marked."""
    figure, axes = plt.subplots(figsize=(6.5, 4.2))
    try:
        x = [float(value) for value in values]
    except ValueError:
        x = list(range(len(values)))
        axes.set_xticks(x, values, rotation=20, ha="right")
    else:
        if min(x) > 0 and max(x) / min(x) >= 10:
            axes.set_xscale("log")
        axes.set_xticks(x, values)
        axes.minorticks_off()
    order = sorted(range(len(x)), key=lambda i: x[i])
    axes.plot([x[i] for i in order], [scores[i] for i in order], marker="o", color="C0")
    best = max(range(len(scores)), key=lambda i: scores[i])
    axes.scatter(
        [x[best]],
        [scores[best]],
        s=160,
        facecolors="none",
        edgecolors="C3",
        linewidths=2,
        zorder=3,
        label=f"best: {parameter}={values[best]} ({scores[best]:.4f})",
    )
    axes.set_xlabel(parameter)
    axes.set_ylabel(f"{metric} after training")
    axes.set_title(f"sweep: {metric} vs {parameter}")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    return _save(figure, path)
