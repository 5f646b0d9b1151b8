"""Merge methods: plain functions on tensors, each with its formula and paper.

Task vectors (Ilharco et al. 2023, "Editing models with task arithmetic"): with a base model θ_b
that every checkpoint was fine-tuned from, checkpoint i's task vector is δᵢ = θᵢ − θ_b, the
change fine-tuning made. Two fine-tunes of one parent are nearly colinear as whole weights
(cos ≈ 0.9999, so slerp of the weights is lerp), while their task vectors are often far apart;
the methods below merge the δᵢ, and the merged model is θ_b + δ.

The methods come in two kinds, which `embedtune.merge.soup` runs block by block:

- **One coefficient per input**: the linear soup, SLERP and its spherical mean, Model Stock.
  The merged vector is Σᵢ cᵢ·vᵢ with coefficients that depend only on the Gram matrix
  Gᵢⱼ = vᵢ·vⱼ, so a merge first sums the Gram matrix over row blocks, then writes Σᵢ cᵢ·vᵢ
  block by block (`combine`).
- **Element by element**: TIES's sign election and disjoint mean (`ties_mean`) and the
  sparsifiers applied to each task vector first, magnitude trimming (`trim`, threshold from
  `magnitude_threshold`) and DARE's random drop (`dare`).

Each tensor is one flat vector (a whole weight matrix at once, as in mergekit). Inputs are read
in float32; Gram matrices and coefficients are float64. Only floating-point tensors are merged: a
non-floating one (position ids, masks) comes back from the first input unchanged, and the inputs
must hold identical values.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

COLINEAR = 0.9995  # |cos θ| above this, sin θ is too small to divide by and lerp is as good (mergekit's DOT_THRESHOLD)
EPS = 1e-8  # a norm below this is zero: the tensor has no direction
TOLERANCE = 1e-9  # radians; the spherical mean stops when its step is this small, far below float32's 1.2e-7
MAX_STEPS = 100  # steps of the spherical mean; near-identical fine-tunes need ~3, random directions ~20


# --- one coefficient per input -----------------------------------------------------------


def gram(vectors: list[Tensor]) -> Tensor:
    """The Gram matrix Gᵢⱼ = vᵢ·vⱼ of the flattened tensors, in float64, shape (n, n)."""
    if any(v.shape != vectors[0].shape for v in vectors):
        raise ValueError(f"cannot merge tensors of different shapes {[tuple(v.shape) for v in vectors]}")
    stacked = torch.stack([v.detach().reshape(-1).to(torch.float64) for v in vectors]).numpy()  # (n, numel)
    return torch.from_numpy(stacked @ stacked.T)  # numpy's BLAS: torch's threaded matmul stalls on small blocks on busy cores


def combine(coefficients: Tensor, tensors: list[Tensor], base: Tensor | None = None) -> Tensor:
    """Σᵢ cᵢ·θᵢ, or with a base θ_b + Σᵢ cᵢ·(θᵢ − θ_b), in float32 (float64 for float64 inputs).

    With a base it is computed as (1 − Σᵢ cᵢ)·θ_b + Σᵢ cᵢ·θᵢ, which is the same number but never
    rounds a task vector: coefficients (0, 1) give θ₂ bit for bit, and coefficients summing to 1
    give the plain weighted average of the weights whatever the base.
    """
    dtype = _working_dtype(tensors[0])
    merged = torch.zeros(tensors[0].shape, dtype=dtype)
    terms = zip(coefficients.tolist(), tensors)
    if base is not None:
        terms = itertools.chain(terms, [(1.0 - float(coefficients.sum()), base)])
    for c, tensor in terms:
        if c != 0:
            merged.add_(tensor.to(dtype), alpha=c)
    return merged


def linear_coefficients(weights: list[float]) -> Tensor:
    """cᵢ = wᵢ / Σⱼ wⱼ: the weighted average Σᵢ wᵢ·vᵢ / Σᵢ wᵢ, a "model soup" (Wortsman et al.
    2022, "Model soups: averaging weights of multiple fine-tuned models"); with a base, the
    weighted mean of the task vectors (task arithmetic with λ = 1/N for equal weights)."""
    weights = torch.tensor(weights, dtype=torch.float64)
    return weights / weights.sum()


def slerp_coefficients(gram_matrix: Tensor, weights: list[float], eps: float = EPS) -> tuple[Tensor, bool]:
    """Coefficients of the weighted spherical mean of the vectors with Gram matrix G, and whether
    it fell back to the linear soup.

    Norms are averaged linearly, r = Σᵢ wᵢ|vᵢ| / Σᵢ wᵢ, and directions on the unit sphere. Two
    vectors: spherical linear interpolation (Shoemake 1985) with t = w₂/(w₁ + w₂),
    θ = arccos(v̂₁·v̂₂),

        slerp(t, v₁, v₂) = r · (sin((1−t)θ)/sinθ · v̂₁ + sin(tθ)/sinθ · v̂₂),   r = (1−t)|v₁| + t|v₂|,

    so t = 0 gives v₁ and t = 1 gives v₂, and the direction's angle to v₁ is t·θ. Three or more:
    the weighted Fréchet (Karcher) mean û, the direction minimising Σᵢ wᵢ·θ(û, v̂ᵢ)², found by
    the fixed-point iteration of Buss & Fillmore (2001, "Spherical averages and applications to
    spherical splines and interpolation"),

        û ← cos|s|·û + sin|s|·s/|s|,   s = Σᵢ wᵢ·log_û(v̂ᵢ) / Σᵢ wᵢ,   log_û(x) = θ·(x − cosθ·û)/sinθ,

    from the normalised weighted mean of the directions until |s| < 1e-9 rad. It does not depend
    on the order of the inputs (equal weights on orthonormal e₁, e₂, e₃ give (e₁ + e₂ + e₃)/√3,
    where iterated pairwise slerp gives 0.61·e₁ + 0.61·e₂ + 0.5·e₃), a zero weight removes an
    input, and for two vectors it is the slerp above. Both are computed in the span of the
    inputs from G alone, which is what lets a merge stream: û = Σᵢ aᵢ·v̂ᵢ, cᵢ = r·aᵢ/|vᵢ|.

    On task vectors this is mergekit's ``nuslerp`` with a base model, except that norms are
    interpolated rather than carried by the unnormalised vectors.

    Falls back to `linear_coefficients` when a vector's norm is below ``eps`` (no direction),
    when every pair of directions is nearly colinear (|cos θ| > 0.9995), when the directions
    cancel out, or when the iteration has not converged after 100 steps.
    """
    weights = linear_coefficients(weights)
    norms = gram_matrix.diagonal().clamp(min=0).sqrt()
    if float(norms.min()) < eps:
        return weights, True
    cosines = (gram_matrix / torch.outer(norms, norms)).clamp(-1, 1)
    pairs = itertools.combinations(range(len(weights)), 2)
    if all(abs(float(cosines[i, j])) > COLINEAR for i, j in pairs):
        return weights, True
    if len(weights) == 2:
        direction = _arc(float(weights[1]), float(cosines[0, 1]))
    else:
        direction = _spherical_mean(cosines, weights, eps)
    if direction is None:
        return weights, True
    radius = float(weights @ norms)
    return direction * (radius / norms), False


def model_stock_coefficients(gram_matrix: Tensor, eps: float = EPS) -> Tensor:
    """Model Stock (Jang et al. 2024, "Model Stock: all we need is just a few fine-tuned models"):
    with N ≥ 2 task vectors and cos θ their mean pairwise cosine,

        θ = θ_b + t·(1/N)·Σᵢ δᵢ,   t = N·cosθ / (1 + (N − 1)·cosθ),

    the point between the base and the fine-tunes' average that lies nearest the centre the
    fine-tunes scatter around, when they sit at equal norms and equal angles θ from it (the
    paper's geometry, per layer; here per tensor): nearly orthogonal task vectors (cos θ → 0)
    pull the merge back to the base, agreeing ones (cos θ → 1) keep their average. cos θ is clipped to [0, 1] (the paper assumes it positive), and a task
    vector with norm below ``eps`` counts as orthogonal. Returns cᵢ = t/N.
    """
    n = len(gram_matrix)
    norms = gram_matrix.diagonal().clamp(min=0).sqrt()
    if n < 2:
        raise ValueError("Model Stock needs at least two fine-tuned models")
    cosines = [
        float(gram_matrix[i, j] / (norms[i] * norms[j])) if min(norms[i], norms[j]) >= eps else 0.0
        for i, j in itertools.combinations(range(n), 2)
    ]
    cos = min(1.0, max(0.0, sum(cosines) / len(cosines)))
    t = n * cos / (1 + (n - 1) * cos)
    return torch.full((n,), t / n, dtype=torch.float64)


def _arc(t: float, cos: float) -> Tensor:
    """Coefficients (a₁, a₂) of the unit vector a fraction t along the great circle from unit u₁
    to unit u₂ with u₁·u₂ = cos: a₁ = sin((1−t)θ)/sinθ, a₂ = sin(tθ)/sinθ."""
    theta = math.acos(cos)
    return torch.tensor([math.sin((1 - t) * theta), math.sin(t * theta)], dtype=torch.float64) / math.sin(theta)


def _spherical_mean(cosines: Tensor, weights: Tensor, eps: float) -> Tensor | None:
    """Coefficients a of the weighted Karcher mean û = Σᵢ aᵢ·v̂ᵢ of unit vectors with cosine
    matrix C (weights summing to 1), or None when the directions cancel out or the iteration does
    not converge.

    The iteration runs on coordinates of the v̂ᵢ in their own span (rows xᵢ of Q·√Λ, C = QΛQᵀ,
    so xᵢ·xⱼ = Cᵢⱼ), where the geometry is exact, and carries the coefficients of each point along,
    since every step is a linear combination of the point and the inputs.
    """
    eigenvalues, eigenvectors = torch.linalg.eigh(cosines)
    units = eigenvectors * eigenvalues.clamp(min=0).sqrt()  # (n, n): row i is v̂ᵢ's coordinates
    coefficients = weights.clone()
    point = units.T @ coefficients
    length = float(point.norm())
    if length < eps:
        return None
    point, coefficients = point / length, coefficients / length
    for _ in range(MAX_STEPS):
        cos = (units @ point).clamp(-1, 1)  # (n,)
        tangents = units - cos[:, None] * point  # (n, n): row i is v̂ᵢ − cosθᵢ·û
        sin = tangents.norm(dim=1)
        pulls = weights * torch.where(
            sin > 0, torch.atan2(sin, cos) / sin.clamp(min=1e-300), 0
        )  # wᵢ·θᵢ/sinθᵢ; atan2 is accurate at small θ
        step = pulls @ tangents
        step_coefficients = pulls - float(pulls @ cos) * coefficients
        angle = float(step.norm())
        if angle < TOLERANCE:
            return coefficients
        along, across = math.cos(angle), math.sin(angle) / angle
        point, coefficients = along * point + across * step, along * coefficients + across * step_coefficients
        length = float(point.norm())  # keep it on the sphere despite rounding
        point, coefficients = point / length, coefficients / length
    return None


# --- element by element --------------------------------------------------------------------


def trim(delta: Tensor, threshold: float) -> Tensor:
    """TIES's trim step (Yadav et al. 2023, "TIES-Merging: resolving interference when merging
    models"): keep the entries with |δ| ≥ τ, zero the rest; with τ from `magnitude_threshold`
    this keeps the top-k% magnitudes of a task vector."""
    return torch.where(delta.abs().to(torch.float32) >= threshold, delta, torch.zeros((), dtype=delta.dtype))


def magnitude_threshold(blocks: Callable[[], Iterable[Tensor]], density: float) -> float:
    """τ, the k-th largest |δ| of a tensor given as float32 blocks, k = ⌈density·numel⌉, so that
    `trim` keeps the top ``density`` share of magnitudes (more only when values tie at τ).

    ``blocks()`` yields the tensor's blocks and is called twice: it is a two-pass radix select on
    the bit patterns of |δ| (for non-negative floats the int32 pattern orders like the value),
    first by the high 16 bits, then by the low 16 bits within the bin that holds the k-th value,
    so the threshold is exact with memory for one block and two histograms. density 1 gives 0.
    """
    if density >= 1:
        return 0.0
    high_counts = torch.zeros(1 << 15, dtype=torch.int64)  # the sign bit is 0
    for block in blocks():
        high_counts += torch.bincount(_magnitude_bits(block) >> 16, minlength=1 << 15)
    k = max(1, math.ceil(density * int(high_counts.sum())))
    high, above = _bin_holding(high_counts, k)
    low_counts = torch.zeros(1 << 16, dtype=torch.int64)
    for block in blocks():
        bits = _magnitude_bits(block)
        in_bin = bits[(bits >> 16) == high]
        if len(in_bin):
            low_counts += torch.bincount(in_bin & 0xFFFF, minlength=1 << 16)
    low, _ = _bin_holding(low_counts, k - above)
    return float(torch.tensor([(high << 16) | low], dtype=torch.int32).view(torch.float32))


def _magnitude_bits(block: Tensor) -> Tensor:
    """|x| of a block in float32 as its int32 bit patterns, widened to int64, flat."""
    return block.reshape(-1).abs().to(torch.float32).view(torch.int32).to(torch.int64)


def _bin_holding(counts: Tensor, k: int) -> tuple[int, int]:
    """(the bin holding the k-th largest entry, how many entries lie in higher bins)."""
    from_top = counts.flip(0).cumsum(0)  # entries in the bins at or above each bin, top first
    top_index = int(torch.searchsorted(from_top, k))  # the first from the top reaching k
    above = int(from_top[top_index - 1]) if top_index > 0 else 0
    return len(counts) - 1 - top_index, above


def dare(delta: Tensor, density: float, key: int, start: int = 0) -> Tensor:
    """DARE (Yu et al. 2024, "Language models are Super Mario: absorbing abilities from homologous
    models as a free lunch"): drop each entry with probability p = 1 − density and rescale the
    rest, δ̃ = m ⊙ δ / (1 − p), mᵢ ~ Bernoulli(1 − p), so E[δ̃] = δ.

    The mask is a function of ``key`` (the seed, checkpoint and tensor) and each entry's index
    (``start`` is the flat index of the block's first entry), by `uniform`: a block drops
    exactly what the whole tensor drops.
    """
    if density >= 1:
        return delta
    keep = torch.from_numpy(uniform(key, start, delta.numel()) < density).reshape(delta.shape)
    return torch.where(keep, delta / density, torch.zeros((), dtype=delta.dtype))


def uniform(key: int, start: int, count: int) -> np.ndarray:
    """Uniform numbers in [0, 1) for the entries start, ..., start + count − 1 of the stream
    ``key``: a counter-based generator, the SplitMix64 output function (Steele, Lea & Flood
    2014, "Fast splittable pseudorandom number generators") of key + (index + 1)·γ, with 53 bits
    of each output as a float64. Any range of indices gets the same numbers as the whole."""
    golden = np.uint64(0x9E3779B97F4A7C15)
    z = (np.arange(start + 1, start + count + 1, dtype=np.uint64) * golden) + np.uint64(key % 2**64)  # wraps mod 2⁶⁴
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def ties_mean(deltas: list[Tensor], weights: list[float]) -> Tensor:
    """TIES-Merging's elect and disjoint-merge steps (Yadav et al. 2023) on (trimmed) task
    vectors, entry by entry: the elected sign is that of the total weighted mass,
    γ = sign(Σᵢ wᵢ·δᵢ), and the merge averages only the task vectors that agree with it,

        δ = Σᵢ∈A wᵢ·δᵢ / Σᵢ∈A wᵢ,   A = {i : sign(δᵢ) = γ ≠ 0},

    0 where no task vector agrees. The model is then θ_b + δ (the paper's λ = 1).
    """
    weighted = torch.stack([w * d for w, d in zip(weights, deltas)])  # (n, *shape)
    elected = weighted.sum(0).sign()
    agree = (weighted.sign() == elected) & (weighted != 0)
    weight_of = torch.tensor(weights, dtype=weighted.dtype).reshape(-1, *[1] * deltas[0].dim())
    total = (agree * weight_of).sum(0)
    return torch.where(total > 0, (weighted * agree).sum(0) / total.clamp(min=torch.finfo(weighted.dtype).tiny), 0.0)


# --- whole tensors ---------------------------------------------------------------------------


def lerp(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Linear interpolation (1 − t)·v₀ + t·v₁: t = 0 gives v₀, t = 1 gives v₁."""
    return linear_soup([v0, v1], [1 - t, t])


def linear_soup(tensors: list[Tensor], weights: list[float]) -> Tensor:
    """The weighted average Σᵢ wᵢ·vᵢ / Σᵢ wᵢ (`linear_coefficients`), in the first's dtype."""
    if not tensors[0].is_floating_point():
        return _first_if_identical(tensors)
    return combine(linear_coefficients(weights), tensors).to(tensors[0].dtype)


def slerp(t: float, v0: Tensor, v1: Tensor, eps: float = EPS) -> Tensor:
    """Spherical linear interpolation of v₀ and v₁ (`slerp_coefficients`): t = 0 gives v₀,
    t = 1 gives v₁, lerp when nearly colinear or zero."""
    return slerp_soup([v0, v1], [1 - t, t], eps=eps)[0]


def slerp_soup(tensors: list[Tensor], weights: list[float], base: Tensor | None = None, eps: float = EPS) -> tuple[Tensor, bool]:
    """The weighted spherical mean of N tensors (`slerp_coefficients`), or with ``base`` of their
    task vectors, θ_b + slerp-mean(θᵢ − θ_b); and whether it fell back to the linear soup."""
    if not tensors[0].is_floating_point():
        return _first_if_identical(tensors), False
    vectors = task_vectors(tensors, base)
    coefficients, fell_back = slerp_coefficients(gram(vectors), weights, eps)
    return combine(coefficients, tensors, base).to(tensors[0].dtype), fell_back


def model_stock(tensors: list[Tensor], base: Tensor) -> Tensor:
    """Model Stock of N ≥ 2 fine-tunes of ``base`` (`model_stock_coefficients`)."""
    coefficients = model_stock_coefficients(gram(task_vectors(tensors, base)))
    return combine(coefficients, tensors, base).to(tensors[0].dtype)


def ties(tensors: list[Tensor], base: Tensor, weights: list[float], density: float) -> Tensor:
    """TIES-Merging of fine-tunes of ``base``: trim each task vector to its top ``density``
    magnitudes, elect signs, average the agreeing entries (`trim`, `ties_mean`)."""
    deltas = task_vectors(tensors, base)
    trimmed = [trim(d, magnitude_threshold(lambda d=d: [d], density)) for d in deltas]
    return (base.to(trimmed[0].dtype) + ties_mean(trimmed, weights)).to(tensors[0].dtype)


def task_vectors(tensors: list[Tensor], base: Tensor | None) -> list[Tensor]:
    """δᵢ = θᵢ − θ_b in float32 (float64 for float64 inputs), or without a base the tensors."""
    dtype = _working_dtype(tensors[0])
    if base is None:
        return [v.to(dtype) for v in tensors]
    return [v.to(dtype) - base.to(dtype) for v in tensors]


def _working_dtype(tensor: Tensor) -> torch.dtype:
    """float32, or float64 for a float64 tensor: merges never compute in less than float32."""
    return torch.promote_types(tensor.dtype, torch.float32)


def _first_if_identical(tensors: list[Tensor]) -> Tensor:
    """A non-floating tensor is copied, not merged: the first, provided all are equal."""
    if any(not torch.equal(tensors[0], v) for v in tensors[1:]):
        raise ValueError(f"non-floating tensors ({tensors[0].dtype}) differ between models; they are copied from the first, not merged")
    return tensors[0]
