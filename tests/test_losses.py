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


# --- the rest of the family: each against an explicit loop in numpy ------------------------

from embedtune.losses.batch import BatchInfo, text_ids  # noqa: E402
from embedtune.losses.distill import KLDistill, MarginMSE  # noqa: E402
from embedtune.losses.matryoshka import Matryoshka  # noqa: E402
from embedtune.losses.qwen3 import Qwen3Loss  # noqa: E402
from embedtune.losses.scored import CoSENT, CosineRegression  # noqa: E402
from embedtune.losses.sigmoid import SigmoidLoss  # noqa: E402
from embedtune.losses.supcon import SupConLoss  # noqa: E402
from embedtune.losses.triplet import TripletLoss  # noqa: E402


def info(batch, k, queries=None, documents=None, **extra):
    queries = queries or [f"q{i}" for i in range(batch)]
    documents = documents or [f"d{i}" for i in range(batch * (1 + k))]
    return BatchInfo(text_ids(queries), text_ids(documents), k, **extra)


def _t(x):
    return torch.tensor(x)


def numpy_qwen3(q, d, k, tau, margin, query_texts, doc_texts, mask=True):
    """Z_i built term by term, exactly as the docstring's equation reads."""
    b = len(q)
    owner = list(range(b)) + [i for i in range(b) for _ in range(k)]
    total = 0.0
    for i in range(b):
        s_pos = q[i] @ d[i]

        def kept(score, duplicate, s_pos=s_pos):
            return not mask or (score <= s_pos + margin and not duplicate)

        z = [s_pos]
        for j in range(b, len(d)):  # hard negatives of query i
            if owner[j] == i and kept(q[i] @ d[j], doc_texts[j] == doc_texts[i]):
                z.append(q[i] @ d[j])
        for j in range(len(d)):  # other in-batch documents
            if owner[j] != i and kept(q[i] @ d[j], doc_texts[j] == doc_texts[i]):
                z.append(q[i] @ d[j])
        for j in range(b):  # other queries
            if j != i and kept(q[i] @ q[j], query_texts[j] == query_texts[i]):
                z.append(q[i] @ q[j])
        for j in range(len(d)):  # documents vs the positive
            if j != i and kept(d[i] @ d[j], doc_texts[j] == doc_texts[i]):
                z.append(d[i] @ d[j])
        z = np.array(z) / tau
        total += -(z[0] - (z.max() + np.log(np.exp(z - z.max()).sum())))
    return total / b


@pytest.mark.parametrize("mask", [True, False])
def test_qwen3_matches_term_by_term_loop(mask):
    b, k, tau = 3, 2, 0.05
    q, d = _unit(b, 6, 10), _unit(b * (1 + k), 6, 11)
    doc_texts = [f"d{i}" for i in range(b * (1 + k))]
    doc_texts[4] = doc_texts[1]  # a hard negative of query 0 is query 1's positive text
    query_texts = ["a", "b", "a"]  # duplicate query
    batch = info(b, k, query_texts, doc_texts)
    loss = Qwen3Loss(temperature=tau, margin=0.1, mask_false_negatives=mask)(_t(q), _t(d), batch)
    assert loss.item() == pytest.approx(numpy_qwen3(q, d, k, tau, 0.1, query_texts, doc_texts, mask), rel=1e-9)


def test_qwen3_hand_checked_masked_case():
    """2 queries, 1 hard negative each, 2-d vectors at known angles; tau = 1, margin 0.1.

    q0 = (1, 0); d0+ = (cos 60, sin 60) -> s = 0.5. q0's hard negative n0 = (1, 0): s = 1.0 > 0.5 + 0.1,
    so it is masked. q1 = (0, 1), d1+ = (0, 1), n1 = (0, -1). Query 1's positive has the same text
    as query 0's positive, so it is masked for query 0 as a duplicate even though its score is low.
    """
    c, s = 0.5, np.sqrt(3) / 2
    q = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = np.array([[c, s], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0]])  # d0+, d1+, n0, n1
    texts = ["same", "same", "n0", "n1"]
    batch = info(2, 1, ["q0", "q1"], texts)
    loss_fn = Qwen3Loss(temperature=1.0, margin=0.1, in_batch_documents=True, query_query=False, document_document=False)
    # query 0: positive 0.5; n0 masked (1.0 > 0.6); d1+ masked (duplicate); n1: s = 0 kept.
    expected_0 = -(0.5 - np.log(np.exp(0.5) + np.exp(0.0)))
    # query 1: positive 1.0; n1: -1 kept; d0+: s = s(q1, d0+) = 0.866 kept... but it has the same text
    # as d1+ -> masked; n0: 0 kept.
    expected_1 = -(1.0 - np.log(np.exp(1.0) + np.exp(-1.0) + np.exp(0.0)))
    assert loss_fn(_t(q), _t(d), batch).item() == pytest.approx((expected_0 + expected_1) / 2, rel=1e-9)


def test_qwen3_without_extra_terms_and_mask_is_infonce():
    b, k = 4, 1
    q, d = _unit(b, 8, 12), _unit(b * (1 + k), 8, 13)
    plain = Qwen3Loss(temperature=0.05, query_query=False, document_document=False, mask_false_negatives=False)
    assert plain(_t(q), _t(d), info(b, k)).item() == pytest.approx(numpy_infonce(q, d, 0.05), rel=1e-9)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_triplet_matches_numpy(distance):
    b, k, margin = 3, 2, 0.3
    q, d = _unit(b, 5, 14), _unit(b * (1 + k), 5, 15)
    dist = (lambda x, y: 1 - x @ y) if distance == "cosine" else (lambda x, y: np.linalg.norm(x - y))
    expected = np.mean([max(0.0, dist(q[i], d[i]) - dist(q[i], d[b + i * k + j]) + margin) for i in range(b) for j in range(k)])
    loss = TripletLoss(margin=margin, distance=distance)(_t(q), _t(d), info(b, k))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_triplet_without_negatives_is_a_clear_error():
    from embedtune.errors import ConfigError

    with pytest.raises(ConfigError, match="needs at least 1 hard negative"):
        TripletLoss()(_t(_unit(2, 4, 0)), _t(_unit(2, 4, 1)), info(2, 0))


def test_margin_mse_matches_numpy():
    b, k = 3, 2
    q, d = _unit(b, 5, 16), _unit(b * (1 + k), 5, 17)
    teacher = np.random.default_rng(18).normal(size=(b, 1 + k))
    expected = np.mean(
        [((q[i] @ d[i] - q[i] @ d[b + i * k + j]) - (teacher[i, 0] - teacher[i, 1 + j])) ** 2 for i in range(b) for j in range(k)]
    )
    loss = MarginMSE()(_t(q), _t(d), info(b, k, teacher_scores=_t(teacher)))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_kl_distill_matches_numpy():
    b, k, tau, tau_t = 3, 2, 0.05, 2.0
    q, d = _unit(b, 5, 19), _unit(b * (1 + k), 5, 20)
    teacher = np.random.default_rng(21).normal(size=(b, 1 + k)) * 3
    total = 0.0
    for i in range(b):
        student = np.array([q[i] @ d[i]] + [q[i] @ d[b + i * k + j] for j in range(k)]) / tau
        p_t = np.exp(_log_softmax(teacher[i] / tau_t))
        total += np.sum(p_t * (np.log(p_t) - _log_softmax(student)))
    loss = KLDistill(temperature=tau, teacher_temperature=tau_t)(_t(q), _t(d), info(b, k, teacher_scores=_t(teacher)))
    assert loss.item() == pytest.approx(total / b, rel=1e-9)


def test_sigmoid_matches_numpy_and_uses_the_learnable_bias():
    b, k, tau, bias = 3, 1, 0.1, -4.0
    q, d = _unit(b, 5, 22), _unit(b * (1 + k), 5, 23)
    total = 0.0
    for i in range(b):
        for j in range(len(d)):
            z = 1.0 if i == j else -1.0
            total += -np.log(1 / (1 + np.exp(-z * (q[i] @ d[j] / tau + bias))))
    loss = SigmoidLoss(temperature=tau)(_t(q), _t(d), info(b, k), {"sigmoid_bias": torch.tensor(bias, dtype=torch.float64)})
    assert loss.item() == pytest.approx(total / b, rel=1e-9)
    assert SigmoidLoss(bias_init=-3.0).initial_params() == {"sigmoid_bias": -3.0}


def test_supcon_matches_explicit_loop_with_several_positives():
    b, k, tau = 4, 1, 0.1
    q, d = _unit(b, 5, 24), _unit(b * (1 + k), 5, 25)
    labels = ["x", "y", "x", "z"]  # pairs 0 and 2 share a class: each view has 3 positives
    views = np.concatenate([q, d[:b]])
    view_labels = labels + labels
    candidates = np.concatenate([views, d[b:]])
    total = 0.0
    for a in range(2 * b):
        others = [x for x in range(len(candidates)) if x != a]
        log_denominator = np.log(np.sum([np.exp(views[a] @ candidates[x] / tau) for x in others]))
        positives = [p for p in range(2 * b) if p != a and view_labels[p] == view_labels[a]]
        total += -np.mean([views[a] @ views[p] / tau - log_denominator for p in positives])
    loss = SupConLoss(temperature=tau)(_t(q), _t(d), info(b, k, labels=text_ids(labels)))
    assert loss.item() == pytest.approx(total / (2 * b), rel=1e-9)


def test_cosent_matches_pairwise_loop():
    b, tau = 4, 0.05
    q, d = _unit(b, 5, 26), _unit(b, 5, 27)
    gold = np.array([4.0, 1.0, 2.5, 1.0])  # a tie: (1, 3) contributes nothing
    cos = np.array([q[i] @ d[i] for i in range(b)])
    terms = [np.exp((cos[j] - cos[i]) / tau) for i in range(b) for j in range(b) if gold[i] > gold[j]]
    loss = CoSENT(temperature=tau)(_t(q), _t(d), info(b, 0, scores=_t(gold)))
    assert loss.item() == pytest.approx(np.log(1 + np.sum(terms)), rel=1e-9)


def test_cosine_regression_rescales_scores():
    b = 3
    q, d = _unit(b, 5, 28), _unit(b, 5, 29)
    gold = np.array([5.0, 0.0, 2.5])
    expected = np.mean([(q[i] @ d[i] - gold[i] / 5) ** 2 for i in range(b)])
    assert CosineRegression()(_t(q), _t(d), info(b, 0, scores=_t(gold))).item() == pytest.approx(expected, rel=1e-9)


def test_matryoshka_sums_losses_of_renormalised_prefixes():
    b, k = 3, 1
    q, d = _unit(b, 8, 30), _unit(b * (1 + k), 8, 31)

    def prefix(x, n):
        return x[:, :n] / np.linalg.norm(x[:, :n], axis=1, keepdims=True)

    expected = 1.0 * numpy_infonce(prefix(q, 8), prefix(d, 8), 0.05) + 0.5 * numpy_infonce(prefix(q, 4), prefix(d, 4), 0.05)
    loss = Matryoshka(InfoNCE(temperature=0.05), dims=[8, 4], weights=[1.0, 0.5])(_t(q), _t(d), info(b, k))
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_learnable_logit_scale_replaces_fixed_temperature():
    b = 3
    q, d = _unit(b, 5, 32), _unit(b, 5, 33)
    params = {"logit_scale": torch.tensor(np.log(1 / 0.2), dtype=torch.float64)}
    assert InfoNCE(temperature=0.05)(_t(q), _t(d), None, params).item() == pytest.approx(numpy_infonce(q, d, 0.2), rel=1e-9)
