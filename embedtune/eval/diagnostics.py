"""Geometry of an embedding space: has it collapsed, is it a narrow cone, does it separate
positive pairs from random ones? Used by training (`geometry`, every logged step) and by
``embedtune diagnose`` (`diagnose`, `verdict`).

All numbers are computed on L2-normalised embeddings, where cosine = dot product and
``||x - y||^2 = 2 - 2 cos(x, y)``:

- ``alignment`` (Wang & Isola 2020, "Understanding Contrastive Representation Learning through
  Alignment and Uniformity on the Hypersphere", alpha = 2): ``E ||f(x) - f(y)||^2`` over positive
  pairs. 0 when every positive pair coincides, 2 when positives are orthogonal; lower is better.
- ``uniformity`` (same paper, t = 2): ``log E exp(-2 ||f(x) - f(y)||^2)`` over pairs of different
  texts. 0 when every text has the same embedding; about -4 when texts are spread so that
  random pairs are orthogonal; lower is more uniform.
- ``embedding_std``: the mean over dimensions of each dimension's std, times sqrt(dim). About 1
  for an isotropic space (unit vectors spread evenly have a per-dimension std of 1/sqrt(dim)),
  0 when collapsed. The same convention as the ``embedding_std`` in ``train_log.jsonl``.
- ``centroid_norm``: the length of the mean embedding: 0 when embeddings are centred on the
  origin, 1 when they are all the same vector.
- ``random_cosine``: the mean cosine of two different texts. Near 0 in an isotropic space;
  high values are the anisotropy of Ethayarajh (2019), "How Contextual are Contextualized Word
  Representations?": every text sits in a narrow cone, so cosines are compressed together.
- ``positive_cosine`` and ``similarity_gap``: the mean cosine of positive pairs (a_i, b_i), and
  that minus the mean cosine of mismatched pairs (a_i, b_j), j != i: the in-batch negatives of
  training. A model that ranks well has a wide gap, whatever its anisotropy.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Verdict thresholds. A collapsed space has (nearly) one point: the per-dimension spread is a
# tenth of an isotropic space's or less, or two random texts are almost the same vector.
COLLAPSED_STD = 0.1
COLLAPSED_RANDOM_COSINE = 0.95
# Anisotropic: random texts already score above this cosine. Trained sentence encoders sit near
# 0-0.2 (all-MiniLM-L6-v2: 0.02 on STS-B dev sentences, 0.11 on SciFact); its first two layers
# alone give 0.6-0.7, as raw mean-pooled BERT states do, where a cosine threshold says little.
ANISOTROPIC_RANDOM_COSINE = 0.4
# Not separating: positive pairs score less than this cosine above mismatched pairs on average.
SEPARATION_GAP = 0.1


def embedding_std(embeddings: torch.Tensor) -> float:
    """Mean over dimensions of the std of ``embeddings`` (n, dim), times sqrt(dim): about 1 for
    an isotropic space, 0 when every text sits on the same point."""
    return embeddings.float().std(dim=0).mean().item() * embeddings.shape[1] ** 0.5


def pair_similarities(queries: torch.Tensor, documents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dot products of each query with its own positive ``documents[i]``, (n,), and with every
    other query's positive ``documents[j]``, j != i, (n * (n - 1),). Rows of ``documents`` after
    the first n (hard negatives) are not used."""
    size = queries.shape[0]
    scores = queries.float() @ documents[:size].float().T  # (n, n)
    mismatched = ~torch.eye(size, dtype=torch.bool, device=scores.device)
    return scores.diagonal(), scores[mismatched]


def similarity_gap(queries: torch.Tensor, documents: torch.Tensor) -> float:
    """Mean similarity of each query with its positive minus the mean with the other positives."""
    positive, mismatched = pair_similarities(queries, documents)
    return positive.mean().item() - (mismatched.mean().item() if mismatched.numel() else 0.0)


def geometry(queries: torch.Tensor, documents: torch.Tensor) -> dict[str, float]:
    """Collapse indicators of one training batch: `embedding_std` of the documents (positives
    and hard negatives) and the `similarity_gap` of the queries to their positives."""
    return {"embedding_std": embedding_std(documents), "similarity_gap": similarity_gap(queries, documents)}


def alignment(first: torch.Tensor, second: torch.Tensor) -> float:
    """``E ||f(x) - f(y)||^2`` over the rows of two (n, dim) tensors of positive pairs."""
    return (first.double() - second.double()).pow(2).sum(dim=1).mean().item()


def uniformity(points: torch.Tensor) -> float:
    """``log E exp(-2 ||f(x) - f(y)||^2)`` over all pairs of different rows of ``points`` (n, dim),
    for unit vectors. Uses ||x - y||^2 = 2 - 2 x.y and sums the whole Gram matrix, minus its n
    diagonal terms (each exp(0) = 1), so memory is n^2 numbers: keep n to a few thousand."""
    size = points.shape[0]
    if size < 2:
        raise ValueError("uniformity needs at least 2 points")
    gram = points.double() @ points.double().T  # (n, n)
    off_diagonal = torch.exp(-2 * (2 - 2 * gram)).sum().item() - torch.exp(-2 * (2 - 2 * gram.diagonal())).sum().item()
    return math.log(max(off_diagonal / (size * (size - 1)), 1e-300))


def random_cosine(points: torch.Tensor) -> float:
    """Mean cosine over all pairs of different rows of unit vectors ``points`` (n, dim), without a
    Gram matrix: the sum over all pairs is ||sum x||^2, of which n is the diagonal."""
    size = points.shape[0]
    total = points.double().sum(dim=0)
    return ((total @ total).item() - points.double().pow(2).sum().item()) / (size * (size - 1))


def diagnose(first: torch.Tensor, second: torch.Tensor, points: torch.Tensor | None = None) -> dict[str, float]:
    """Every number of this module for positive pairs ``(first[i], second[i])`` (n, dim) each,
    measured over ``points`` (default: both sides stacked), the distinct texts' embeddings.
    Inputs are L2-normalised here, so any embeddings may be passed."""
    first, second = F.normalize(first.float(), dim=-1), F.normalize(second.float(), dim=-1)
    points = F.normalize(points.float(), dim=-1) if points is not None else torch.cat([first, second])
    positive, _ = pair_similarities(first, second)
    return {
        "alignment": alignment(first, second),
        "uniformity": uniformity(points),
        "embedding_std": embedding_std(points),
        "centroid_norm": points.double().mean(dim=0).norm().item(),
        "random_cosine": random_cosine(points),
        "positive_cosine": positive.mean().item(),
        "similarity_gap": similarity_gap(first, second),
    }


def verdict(numbers: dict[str, float]) -> str:
    """The diagnosis in plain words: each problem found (thresholds are this module's
    constants), or "healthy"."""
    std, cosine, gap = numbers["embedding_std"], numbers["random_cosine"], numbers["similarity_gap"]
    if std < COLLAPSED_STD or cosine > COLLAPSED_RANDOM_COSINE:
        return f"collapsed: all embeddings nearly identical (random pairs average cosine {cosine:.2f}, embedding std {std:.3f})"
    problems = []
    if cosine > ANISOTROPIC_RANDOM_COSINE:
        problems.append(f"anisotropic: random pairs average cosine {cosine:.2f}")
    if gap < SEPARATION_GAP:
        problems.append(f"positives not separated: they score only {gap:+.2f} cosine above random pairs")
    return "; ".join(problems) or "healthy"
