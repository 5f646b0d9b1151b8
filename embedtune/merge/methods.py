"""Merge methods on single tensors: plain functions, computed in float64 and returned in the first
input's dtype.

Each tensor is one flat vector (a whole weight matrix at once, as in mergekit). Only
floating-point tensors are interpolated: a non-floating one (position ids, masks) comes back from
the first input unchanged, and the inputs must hold identical values.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor

COLINEAR = 0.9995  # |cos θ| above this, sin θ is too small to divide by and lerp is as good (mergekit's DOT_THRESHOLD)
EPS = 1e-8  # a norm below this is zero: the tensor has no direction
TOLERANCE = 1e-9  # radians; the spherical mean stops when its step is this small, far below float32's 1.2e-7
MAX_STEPS = 100  # steps of the spherical mean; near-identical fine-tunes need ~3, random directions ~20


def lerp(t: float, v0: Tensor, v1: Tensor) -> Tensor:
    """Linear interpolation (1 − t)·v₀ + t·v₁: t = 0 gives v₀, t = 1 gives v₁."""
    return linear_soup([v0, v1], [1 - t, t])


def linear_soup(tensors: list[Tensor], weights: list[float]) -> Tensor:
    """The weighted average Σᵢ wᵢ·vᵢ / Σᵢ wᵢ: a uniform or weighted "model soup"
    (Wortsman et al. 2022, "Model soups: averaging weights of multiple fine-tuned models")."""
    if not tensors[0].is_floating_point():
        return _first_if_identical(tensors)
    return _weighted_sum(_flat64(tensors), weights).reshape(tensors[0].shape).to(tensors[0].dtype)


def slerp(t: float, v0: Tensor, v1: Tensor, eps: float = EPS) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985) of the directions of v₀ and v₁, with their
    norms interpolated linearly. With v̂ = v/|v| and θ = arccos(v̂₀·v̂₁):

        slerp(t, v₀, v₁) = r_t · (sin((1−t)θ)/sinθ · v̂₀ + sin(tθ)/sinθ · v̂₁),   r_t = (1−t)|v₀| + t|v₁|

    t = 0 gives v₀ and t = 1 gives v₁; in between the direction moves along the great circle at
    constant angular speed, so its angle to v₀ is t·θ. Falls back to `lerp` when a tensor has a
    norm below ``eps`` (no direction) or the directions are nearly colinear, |cos θ| > 0.9995.
    """
    return slerp_soup([v0, v1], [1 - t, t], eps)[0]


def slerp_soup(tensors: list[Tensor], weights: list[float], eps: float = EPS) -> tuple[Tensor, bool]:
    """The weighted spherical mean of N tensors, and whether it fell back to `linear_soup`.

    Norms are averaged linearly, r = Σᵢ wᵢ|vᵢ| / Σᵢ wᵢ. Directions are averaged on the unit
    sphere by their weighted Fréchet (Karcher) mean, the direction û minimising Σᵢ wᵢ·θ(û, v̂ᵢ)²:
    the point where the weighted geodesic pulls towards the inputs cancel, Σᵢ wᵢ·log_û(v̂ᵢ) = 0,
    with log_û(x) = θ·(x − cosθ·û)/sinθ. It is found by the fixed-point iteration of Buss &
    Fillmore (2001, "Spherical averages and applications to spherical splines and interpolation"),

        û ← cos|s|·û + sin|s|·s/|s|,   s = Σᵢ wᵢ·log_û(v̂ᵢ) / Σᵢ wᵢ,

    from the normalised weighted mean of the directions until |s| < 1e-9 rad.

    What it guarantees: the result does not depend on the order of the inputs (permuting tensors
    with their weights gives the same tensor), so equal weights on orthonormal e₁, e₂, e₃ give
    (e₁ + e₂ + e₃)/√3; a zero weight removes an input; and for two tensors it is exactly
    ``slerp(w₂/(w₁+w₂), v₁, v₂)``, since the weighted geodesic mean of two points lies on their
    arc at that fraction (two tensors use that closed form). Iterated pairwise slerp, the other
    common generalisation, depends on the order: on e₁, e₂, e₃ it gives 0.61·e₁ + 0.61·e₂ + 0.5·e₃.

    Falls back to the linear soup when a tensor's norm is below ``eps`` (no direction), when every
    pair of directions is nearly colinear (|cos θ| > 0.9995, the two-tensor rule), when the
    directions cancel out, or when the iteration has not converged after 100 steps.
    """
    if not tensors[0].is_floating_point():
        return _first_if_identical(tensors), False
    flat = _flat64(tensors)
    weights = [w / sum(weights) for w in weights]
    norms = [float(v.norm()) for v in flat]
    if min(norms) < eps or _all_colinear(flat, norms):
        return _weighted_sum(flat, weights).reshape(tensors[0].shape).to(tensors[0].dtype), True
    units = [v.div_(n) for v, n in zip(flat, norms)]  # in place: _flat64 made copies
    direction = _arc(weights[1], *units) if len(units) == 2 else _spherical_mean(units, weights, eps)
    if direction is None:
        return linear_soup(tensors, weights), True
    radius = sum(w * n for w, n in zip(weights, norms))
    return direction.mul_(radius).reshape(tensors[0].shape).to(tensors[0].dtype), False


def _all_colinear(vectors: list[Tensor], norms: list[float]) -> bool:
    """Whether every pair of directions has |cos θ| > 0.9995."""
    pairs = itertools.combinations(range(len(vectors)), 2)
    return all(abs(float(vectors[i] @ vectors[j])) / (norms[i] * norms[j]) > COLINEAR for i, j in pairs)


def _arc(t: float, u0: Tensor, u1: Tensor) -> Tensor:
    """The unit vector a fraction t along the great circle from unit u₀ to unit u₁."""
    theta = math.acos(max(-1.0, min(1.0, float(u0 @ u1))))
    return torch.add(u0 * (math.sin((1 - t) * theta) / math.sin(theta)), u1, alpha=math.sin(t * theta) / math.sin(theta))


def _spherical_mean(units: list[Tensor], weights: list[float], eps: float) -> Tensor | None:
    """The weighted Karcher mean of unit vectors (weights summing to 1), or None when the
    directions cancel out or the iteration does not converge."""
    point = _weighted_sum(units, weights)
    if float(point.norm()) < eps:
        return None
    point /= point.norm()
    for _ in range(MAX_STEPS):
        step = torch.zeros_like(point)
        for w, u in zip(weights, units):
            step.add_(_log(point, u), alpha=w)
        angle = float(step.norm())
        if angle < TOLERANCE:
            return point
        point = torch.add(point * math.cos(angle), step, alpha=math.sin(angle) / angle)
        point /= point.norm()  # keep it on the sphere despite rounding
    return None


def _log(point: Tensor, u: Tensor) -> Tensor:
    """log_point(u): the tangent vector at ``point`` towards unit ``u`` along the great circle,
    of length θ(point, u). atan2 keeps θ accurate for small angles, where arccos is not."""
    cos = float(point @ u)
    tangent = torch.add(u, point, alpha=-cos)
    sin = float(tangent.norm())
    return tangent.mul_(math.atan2(sin, cos) / sin) if sin > 0 else tangent.zero_()


def _weighted_sum(vectors: list[Tensor], weights: list[float]) -> Tensor:
    """Σᵢ wᵢ·vᵢ / Σᵢ wᵢ, accumulated in place (one extra vector of memory)."""
    total = sum(weights)
    merged = torch.zeros_like(vectors[0])
    for w, v in zip(weights, vectors):
        merged.add_(v, alpha=w / total)
    return merged


def _flat64(tensors: list[Tensor]) -> list[Tensor]:
    """Flat float64 copies of the tensors (copies even of float64 ones, so callers may work in
    place); they must have one shape."""
    if any(v.shape != tensors[0].shape for v in tensors):
        raise ValueError(f"cannot merge tensors of different shapes {[tuple(v.shape) for v in tensors]}")
    return [v.detach().reshape(-1).to(torch.float64, copy=True) for v in tensors]


def _first_if_identical(tensors: list[Tensor]) -> Tensor:
    """A non-floating tensor is copied, not merged: the first, provided all are equal."""
    if any(not torch.equal(tensors[0], v) for v in tensors[1:]):
        raise ValueError(f"non-floating tensors ({tensors[0].dtype}) differ between models; they are copied from the first, not merged")
    return tensors[0]
