"""GradCache gives the same loss and the same gradients as the uncached step, for every loss."""

import contextlib

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from embedtune.data.collate import PairCollator
from embedtune.data.types import Pair
from embedtune.losses.infonce import InfoNCE
from embedtune.losses.matryoshka import Matryoshka
from embedtune.model import load_embedder
from embedtune.training.config import config_dir
from embedtune.training.gradcache import _mini_batches, gradcache_step

LOSSES = sorted(p.stem for p in (config_dir() / "loss").glob("*.yaml"))
PAIRS = [
    Pair(
        f"query {i} about {'cats dogs birds'.split()[i % 3]}",
        f"document {i} text " * (1 + i % 3),
        (f"negative {i} a", f"other negative {i} b"),
        float(i % 4),
        f"c{i % 2}",
        (3.0, 1.0, 0.5),
    )
    for i in range(6)
]


def build_loss(name):
    node = OmegaConf.load(config_dir() / "loss" / f"{name}.yaml")
    return hydra.utils.instantiate(node, _convert_="all")


def make_model(tiny_bert_dir, loss_fn, dropout):
    model = load_embedder(str(tiny_bert_dir), max_length=16)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
    model.add_loss_params(getattr(loss_fn, "initial_params", dict)())
    if hasattr(loss_fn, "temperature"):
        model.add_loss_params({"logit_scale": 2.5})  # a learnable temperature gets its gradient too
    return model.train()


def batch_of(model):
    return PairCollator(model.tokenizer, 16, 16, negatives_per_query=2)(PAIRS)


def gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def uncached(model, batch, loss_fn, chunk=None):
    """The plain step; with ``chunk`` the forward runs in the same mini-batches as GradCache's
    first pass (so dropout draws the same masks), but keeps the whole graph."""
    torch.manual_seed(0)
    model.zero_grad()
    if chunk:
        queries, documents = in_mini_batches(model, batch["queries"], chunk), in_mini_batches(model, batch["documents"], chunk)
    else:
        queries, documents = model(batch["queries"]), model(batch["documents"])
    loss = loss_fn(queries, documents, batch["info"], model.loss_params)
    loss.backward()
    return loss.detach(), gradients(model)


def in_mini_batches(model, features, chunk):
    """Embeddings with a graph, mini-batch by mini-batch as GradCache splits them, in batch order."""
    parts = _mini_batches(features, chunk)
    rows = torch.cat([rows for rows, _ in parts])
    return torch.cat([model(mini_batch) for _, mini_batch in parts])[torch.argsort(rows)]


def cached(model, batch, loss_fn, chunk):
    torch.manual_seed(0)
    model.zero_grad()
    loss, _, _ = gradcache_step(model, batch, loss_fn, model.loss_params, chunk, lambda loss: loss.backward(), contextlib.nullcontext)
    return loss, gradients(model)


def assert_same(reference, candidate):
    (loss_a, grads_a), (loss_b, grads_b) = reference, candidate
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5, abs=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("loss_name", LOSSES)
def test_gradcache_equals_full_batch_step_without_dropout(tiny_bert_dir, loss_name):
    loss_fn = build_loss(loss_name)
    model = make_model(tiny_bert_dir, loss_fn, dropout=0.0)
    batch = batch_of(model)
    assert_same(uncached(model, batch, loss_fn), cached(model, batch, loss_fn, chunk=4))


@pytest.mark.parametrize("loss_name", LOSSES)
def test_gradcache_replays_dropout_masks(tiny_bert_dir, loss_name):
    loss_fn = build_loss(loss_name)
    model = make_model(tiny_bert_dir, loss_fn, dropout=0.3)
    batch = batch_of(model)
    assert_same(uncached(model, batch, loss_fn, chunk=4), cached(model, batch, loss_fn, chunk=4))


def test_gradcache_with_matryoshka_and_hard_negatives(tiny_bert_dir):
    loss_fn = Matryoshka(InfoNCE(), dims=[32, 16, 8], weights=[1.0, 0.5, 0.25])
    model = make_model(tiny_bert_dir, loss_fn, dropout=0.2)
    batch = batch_of(model)
    assert batch["documents"]["input_ids"].shape[0] == 18  # 6 positives + 12 hard negatives
    assert_same(uncached(model, batch, loss_fn, chunk=5), cached(model, batch, loss_fn, chunk=5))


def test_without_replay_the_gradients_would_differ(tiny_bert_dir):
    """Guards the test above: with dropout on, masks drawn afresh change the gradients."""
    loss_fn = InfoNCE()
    model = make_model(tiny_bert_dir, loss_fn, dropout=0.3)
    batch = batch_of(model)
    _, reference = uncached(model, batch, loss_fn, chunk=4)
    torch.manual_seed(1)
    model.zero_grad()
    loss_fn(model(batch["queries"]), model(batch["documents"]), batch["info"], model.loss_params).backward()
    other = gradients(model)
    assert not all(torch.allclose(reference[n], other[n], rtol=1e-4, atol=1e-6) for n in reference)


def test_mini_batches_group_similar_lengths_and_cover_the_batch(tiny_bert_dir):
    """Mini-batches are taken longest first, so each pads to nearly its own length; every row
    appears exactly once, with its own tokens."""
    model = load_embedder(str(tiny_bert_dir), max_length=16)
    features = batch_of(model)["documents"]
    parts = _mini_batches(features, 4)
    rows = torch.cat([rows for rows, _ in parts])
    assert sorted(rows.tolist()) == list(range(features["input_ids"].shape[0]))
    lengths = features["attention_mask"].sum(dim=1)
    assert lengths[rows].tolist() == sorted(lengths.tolist(), reverse=True)
    for part_rows, mini_batch in parts:
        assert torch.equal(mini_batch["input_ids"], features["input_ids"][part_rows])
