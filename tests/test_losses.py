"""Losses against their formulas computed independently in numpy."""

import numpy as np
import pytest
import torch

from embedtune.losses.infonce import InfoNCE


def _unit(rows: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(row: np.ndarray) -> np.ndarray:
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def numpy_infonce(q: np.ndarray, d: np.ndarray, tau: float) -> float:
    """-1/B sum_i log( exp(q_i.d_i / tau) / sum_j exp(q_i.d_j / tau) ), j over all documents."""
    return float(np.mean([-_log_softmax(q[i] @ d.T / tau)[i] for i in range(len(q))]))


@pytest.mark.parametrize("negatives_per_query", [0, 2])
def test_infonce_matches_numpy_formula(negatives_per_query):
    batch, dim, tau = 4, 8, 0.05
    q = _unit(batch, dim, 0)
    d = _unit(batch * (1 + negatives_per_query), dim, 1)  # positives first, then negatives
    loss = InfoNCE(temperature=tau)(torch.tensor(q), torch.tensor(d))
    assert loss.item() == pytest.approx(numpy_infonce(q, d, tau), rel=1e-9)


def test_symmetric_infonce_adds_document_to_query_direction():
    batch, dim, tau = 3, 5, 0.1
    q, d = _unit(batch, dim, 2), _unit(2 * batch, dim, 3)
    document_to_query = np.mean([-_log_softmax(d[i] @ q.T / tau)[i] for i in range(batch)])
    expected = (numpy_infonce(q, d, tau) + document_to_query) / 2
    loss = InfoNCE(temperature=tau, symmetric=True)(torch.tensor(q), torch.tensor(d))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_infonce_hand_computed_two_by_two():
    # q = e1, e2; d = e1, e2 (perfect match), tau = 1: L = -log(e / (e + 1)) for both rows
    eye = torch.eye(2, dtype=torch.float64)
    assert InfoNCE(temperature=1.0)(eye, eye).item() == pytest.approx(-np.log(np.e / (np.e + 1)))


@pytest.mark.parametrize("tau", [0.0, -0.5])
def test_infonce_rejects_non_positive_temperature(tau):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        InfoNCE(temperature=tau)
