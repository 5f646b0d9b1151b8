"""Linear probe: how well, and how robustly, a logistic regression separates labelled classes in
a frozen embedding space (`embedtune eval --probe`).

A linear probe (Alain & Bengio 2016, "Understanding intermediate layers using linear classifier
probes") trains only a linear classifier on top of fixed representations: its test accuracy
measures what the representation makes *linearly* available, not what a deep head could learn.
SentEval and MTEB's classification tasks score sentence embeddings the same way (a logistic
regression on frozen embeddings). Here it is a multinomial logistic regression fitted in torch:
full-batch L-BFGS in float64 on

    (1/n) * sum_i CE(W x_i + b, y_i)  +  (l2 / 2n) * ||W||^2          (the bias is not penalised)

which is convex, so the fit is deterministic and does not depend on a seed; ``l2 = 1`` is
scikit-learn's ``LogisticRegression`` default (``C = 1 / l2``), the probe MTEB uses.

Clean accuracy says whether the classes are separable; accuracy with Gaussian noise added to the
test embeddings says by how much. A point at distance m from the decision boundary is misclassified
when the noise's component along the boundary's normal exceeds m; with isotropic noise N(0, σ² I)
that component is N(0, σ²) whatever the dimension, so a binary probe's noisy accuracy is the mean
of Φ(m_i / σ) over test points: a summary of the distribution of geometric margins (the
noise-robustness view of margins, as in randomized smoothing, Cohen et al. 2019). A space whose
classes sit in tight, far-apart clusters keeps its accuracy as σ grows; one whose points hug the
boundaries loses it quickly, toward chance.

Noise is added *after* normalisation and the noisy vectors are *not* re-normalised. Every model's
embeddings are first L2-normalised (as the probe is trained on), so distances are on the same unit
scale for every model, and σ is the noise's standard deviation along any direction of that space.
Re-normalising the noisy vectors would instead divide them by about sqrt(1 + dim·σ²), a shrinkage
that depends on the dimension (a 384-d and a 64-d model would see different effective noise for
the same σ) and that moves points relative to the probe's bias; without it, the linear classifier
sees exactly the clean margin plus a N(0, σ²) perturbation, comparable across models and sizes.
Several noise draws are averaged; each σ uses the same seeded standard-normal draws scaled by σ,
so results do not depend on which other σ are asked for, and two models on the same test set see
the very same noise (a paired comparison).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embedtune.console import progress_bar
from embedtune.data.rows import iter_rows
from embedtune.errors import DataError
from embedtune.model import Embedder

DEFAULT_NOISE = (0.05, 0.1, 0.2)
DEFAULT_DRAWS = 10
# Below this many multiply-adds per pass (n x dim x classes) the probe runs on one thread: its
# matrices are so small that intra-op threads cost more in synchronisation than they save, and on
# a busy machine far more (1,440 x 384 x 6 on this project's shared 2-core CPU: 2 threads 17-41 s
# per fit, 1 thread 1-6 s).
SINGLE_THREAD_WORK = 2**26


@dataclass
class ProbeSet:
    """Labelled texts split into a part the probe is trained on and a part it is scored on."""

    source: str
    name: str
    train_texts: list[str]
    train_labels: list[str]
    test_texts: list[str]
    test_labels: list[str]

    @property
    def classes(self) -> list[str]:
        """The class names, sorted: class index i is ``classes[i]``."""
        return sorted(set(self.train_labels))

    def describe(self) -> str:
        """Its size in words, for table titles."""
        return f"{len(self.classes)} classes, {len(self.train_texts)} train / {len(self.test_texts)} test texts"


# --- data ----------------------------------------------------------------------------------


def load_labelled(source: str, text_column: str = "text", label_column: str = "label") -> tuple[list[str], list[str]]:
    """Texts and their labels from a jsonl / csv / tsv / parquet file or ``hf:`` source. Every row
    is validated; the first bad one raises `DataError` naming ``file:line``. A label may be a
    string or a number (kept as its text); lists, objects, booleans and empty values are refused."""
    texts, labels = [], []
    for where, row in iter_rows(source):
        for column in (text_column, label_column):
            if column not in row:
                raise DataError(f"{where}: missing column '{column}' (row has: {', '.join(map(str, row)) or 'nothing'})")
        text, label = row[text_column], row[label_column]
        if not isinstance(text, str):
            raise DataError(f"{where}: column '{text_column}' must be a string, got {type(text).__name__}")
        if not text.strip():
            raise DataError(f"{where}: column '{text_column}' is empty")
        if isinstance(label, float) and math.isnan(label):
            raise DataError(f"{where}: column '{label_column}' must be a string or a number, got NaN")
        if isinstance(label, bool) or not isinstance(label, (str, int, float)):
            raise DataError(f"{where}: column '{label_column}' must be a string or a number, got {type(label).__name__}")
        if isinstance(label, float) and label.is_integer():
            label = int(label)  # parquet / pandas may store integer classes as 1.0
        if not str(label).strip():
            raise DataError(f"{where}: column '{label_column}' is empty")
        texts.append(text)
        labels.append(str(label).strip())
    if not texts:
        raise DataError(f"{source}: no rows")
    return texts, labels


def stratified_split(labels: list[str], test_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Row indices ``(train, test)``: each class's rows are shuffled (seeded) and
    ``round(test_fraction * count)`` of them go to test, clamped to [1, count - 1] so that every
    class is on both sides. Both lists come back sorted. Every class needs at least 2 rows."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rows_of: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        rows_of.setdefault(label, []).append(index)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(rows_of):  # a fixed class order: the same seed gives the same split
        rows = rows_of[label]
        if len(rows) < 2:
            raise ValueError(f"class '{label}' has {len(rows)} example")
        rng.shuffle(rows)
        n_test = min(max(round(test_fraction * len(rows)), 1), len(rows) - 1)
        test += rows[:n_test]
        train += rows[n_test:]
    return sorted(train), sorted(test)


def load_probe_set(source: str, test_source: str | None = None, text_column: str = "text", label_column: str = "label",
                   test_fraction: float = 0.2, seed: int = 0) -> ProbeSet:  # fmt: skip
    """The probe's labelled data: ``source`` split by `stratified_split`, or, with
    ``test_source``, ``source`` to train on and ``test_source`` to score on (every test label must
    occur in training: a probe cannot predict a class it never saw). At least 2 classes."""
    texts, labels = load_labelled(source, text_column, label_column)
    if test_source is None:
        small = sorted(label for label, count in Counter(labels).items() if count < 2)
        if small:
            named = (
                f"class {small[0]!r} has"
                if len(small) == 1
                else f"classes {', '.join(map(repr, small[:5]))}{' ...' if len(small) > 5 else ''} have"
            )
            raise DataError(
                f"{source}: {named} a single example; every class needs at least 2 (one to train on, one to test), or give --probe-test"
            )
        train, test = stratified_split(labels, test_fraction, seed)
        probe_set = ProbeSet(
            source,
            _name(source),
            [texts[i] for i in train],
            [labels[i] for i in train],
            [texts[i] for i in test],
            [labels[i] for i in test],
        )
    else:
        test_texts, test_labels = load_labelled(test_source, text_column, label_column)
        unseen = sorted(set(test_labels) - set(labels))
        if unseen:
            raise DataError(f"{test_source}: label {', '.join(repr(label) for label in unseen[:5])}{' ...' if len(unseen) > 5 else ''} "
                            f"does not occur in the training file {source}")  # fmt: skip
        probe_set = ProbeSet(source, f"{_name(source)} → {_name(test_source)}", texts, labels, test_texts, test_labels)
    if len(probe_set.classes) < 2:
        raise DataError(f"{source}: a probe needs at least 2 classes, got {len(probe_set.classes)} ({probe_set.classes[0]!r})")
    return probe_set


def _name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1]


def embed_probe_set(
    model: Embedder, probe_set: ProbeSet, batch_size: int = 64, show_progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and test embeddings, (n, dim) each. Every distinct text is encoded once, with no
    prompt: a text to classify is neither a query nor a document."""
    texts = list(dict.fromkeys(probe_set.train_texts + probe_set.test_texts))
    row = {text: i for i, text in enumerate(texts)}
    with progress_bar(f"embedding {probe_set.name}", len(texts), enabled=show_progress) as advance:
        embeddings = model.encode(texts, None, batch_size, advance)
    return embeddings[[row[t] for t in probe_set.train_texts]], embeddings[[row[t] for t in probe_set.test_texts]]


# --- the probe -----------------------------------------------------------------------------


def fit_logistic_regression(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float = 1.0, max_iter: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression ``(weight (classes, dim), bias (classes,))``, float64,
    minimising ``mean CE + (l2 / 2n) ||weight||²`` by full-batch L-BFGS from zero.

    x: (n, dim) features; y: (n,) class indices in [0, num_classes). The objective is strictly
    convex in the weights (for l2 > 0), so the result is the unique optimum whatever the start:
    no seed is involved. It matches scikit-learn's ``LogisticRegression(C=1/l2)``."""
    if l2 <= 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    x, y = x.double(), y.long()
    n, dim = x.shape
    weight = torch.zeros(num_classes, dim, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + l2 / (2 * n) * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), threads_for(n * dim * num_classes):  # enable_grad: callers may be inside no_grad
        optimizer.step(closure)
    return weight.detach(), bias.detach()


@contextlib.contextmanager
def threads_for(work: int):
    """Run the block on one thread when ``work`` (multiply-adds per pass) is at most
    `SINGLE_THREAD_WORK`, then restore torch's thread count."""
    before = torch.get_num_threads()
    if work <= SINGLE_THREAD_WORK:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def predict(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Class index of each row of ``x``: the argmax of the logits, (n,)."""
    return (x.double() @ weight.T + bias).argmax(dim=1)


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return (predict(weight, bias, x) == y).double().mean().item()


def noisy_accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, sigma: float,
                   draws: int = DEFAULT_DRAWS, seed: int = 0) -> float:  # fmt: skip
    """Accuracy on ``x + N(0, sigma² I)``, averaged over ``draws`` noise draws; the noisy rows are
    classified as they are (not re-normalised, see the module docstring). The draws come from a
    generator seeded with ``seed`` alone, so every sigma (and every model) gets the same standard
    normal draws, scaled."""
    generator = torch.Generator().manual_seed(seed)
    x = x.double()
    with threads_for(x.numel() * weight.shape[0]):
        hits = [accuracy(weight, bias, x + sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64), y) for _ in range(draws)]
    return sum(hits) / draws


def probe(train_x: torch.Tensor, train_labels: list[str], test_x: torch.Tensor, test_labels: list[str],
          noise: tuple[float, ...] = DEFAULT_NOISE, draws: int = DEFAULT_DRAWS, l2: float = 1.0, seed: int = 0) -> dict[str, float]:  # fmt: skip
    """Fit the probe on L2-normalised train embeddings and score it on the normalised test
    embeddings: ``accuracy`` (clean), ``accuracy_sigma_<σ>`` for each σ of ``noise``, and, for
    reference, ``majority`` (the accuracy of always answering the training set's most frequent
    class) and ``chance`` (1 / classes)."""
    classes = sorted(set(train_labels))
    index = {label: i for i, label in enumerate(classes)}
    train_y = torch.tensor([index[label] for label in train_labels])
    test_y = torch.tensor([index[label] for label in test_labels])
    train_x, test_x = F.normalize(train_x.double(), dim=-1), F.normalize(test_x.double(), dim=-1)
    weight, bias = fit_logistic_regression(train_x, train_y, len(classes), l2)
    result = {"accuracy": accuracy(weight, bias, test_x, test_y)}
    for sigma in noise:
        result[noise_key(sigma)] = noisy_accuracy(weight, bias, test_x, test_y, sigma, draws, seed)
    most_frequent = Counter(train_labels).most_common(1)[0][0]
    result["majority"] = sum(label == most_frequent for label in test_labels) / len(test_labels)
    result["chance"] = 1 / len(classes)
    return result


def noise_key(sigma: float) -> str:
    """The result key of the accuracy at noise ``sigma``: 0.1 -> "accuracy_sigma_0.1"."""
    return f"accuracy_sigma_{sigma:g}"
