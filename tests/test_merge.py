"""`embedtune merge`: slerp, soups and the task-vector methods (slerp of task vectors, TIES, DARE,
Model Stock) against closed forms computed in numpy or by hand, then whole merges of tiny random
BERTs written to disk, checked tensor by tensor (row blocks against whole tensors), loaded, and run
from the command line."""

import itertools
import json
import math
import shutil

import numpy as np
import pytest
import torch
from helpers import embedtune
from safetensors.torch import load_file, save_file

from embedtune.errors import EmbedtuneError
from embedtune.merge.methods import (
    dare,
    lerp,
    linear_soup,
    magnitude_threshold,
    model_stock,
    slerp,
    slerp_soup,
    ties,
    ties_mean,
    trim,
    uniform,
)
from embedtune.merge.soup import merge_models
from embedtune.model import load_embedder

TEXTS = ["a short text", "a considerably longer text that needs more tokens than the other ones do"]


def reference_slerp(t, v0, v1):
    """The closed form in numpy: r_t·(sin((1−t)θ)·v̂₀ + sin(tθ)·v̂₁)/sinθ, lerp when colinear or zero."""
    a, b = np.asarray(v0, np.float64).ravel(), np.asarray(v1, np.float64).ravel()
    n0, n1 = np.linalg.norm(a), np.linalg.norm(b)
    if min(n0, n1) < 1e-8 or abs(a @ b / (n0 * n1)) > 0.9995:
        return ((1 - t) * a + t * b).reshape(np.shape(v0))
    theta = np.arccos(a @ b / (n0 * n1))
    direction = (np.sin((1 - t) * theta) * a / n0 + np.sin(t * theta) * b / n1) / np.sin(theta)
    return (((1 - t) * n0 + t * n1) * direction).reshape(np.shape(v0))


def falls_back(v0, v1):
    a, b = v0.double().ravel().numpy(), v1.double().ravel().numpy()
    n0, n1 = np.linalg.norm(a), np.linalg.norm(b)
    return min(n0, n1) < 1e-8 or abs(a @ b / (n0 * n1)) > 0.9995


def angle(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1))


def orthonormal(n, dim=64, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, n)))
    return [torch.tensor(q[:, i]) for i in range(n)]


# --- methods -------------------------------------------------------------------------------


def test_slerp_endpoints_are_the_inputs():
    v0, v1 = (
        torch.randn(5, 7, generator=torch.Generator().manual_seed(0)),
        3 * torch.randn(5, 7, generator=torch.Generator().manual_seed(1)),
    )
    assert torch.allclose(slerp(0.0, v0, v1), v0, atol=1e-6)
    assert torch.allclose(slerp(1.0, v0, v1), v1, atol=1e-6)
    assert slerp(0.5, v0, v1).shape == (5, 7)


def test_slerp_midpoint_of_orthogonal_unit_vectors():
    v0, v1 = orthonormal(2)
    assert torch.allclose(slerp(0.5, v0, v1), (v0 + v1) / math.sqrt(2), atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.25, 0.7, 0.9])
def test_slerp_moves_at_constant_angular_speed(t):
    v0, v1 = orthonormal(2)
    merged = slerp(t, v0, v1).numpy()
    assert angle(merged, v0) == pytest.approx(t * np.pi / 2, abs=1e-9)
    assert angle(merged, v1) == pytest.approx((1 - t) * np.pi / 2, abs=1e-9)
    assert np.linalg.norm(merged) == pytest.approx(1.0)


def test_slerp_interpolates_norms_linearly_and_matches_the_closed_form():
    generator = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(300, generator=generator, dtype=torch.float64), 4 * torch.randn(300, generator=generator, dtype=torch.float64)
    theta = angle(v0, v1)
    for t in (0.2, 0.6):
        merged = slerp(t, v0, v1).numpy()
        assert angle(merged, v0) == pytest.approx(t * theta, abs=1e-9)
        assert np.linalg.norm(merged) == pytest.approx((1 - t) * v0.norm().item() + t * v1.norm().item())
        assert np.allclose(merged, reference_slerp(t, v0, v1), atol=1e-12)


@pytest.mark.parametrize("sign", [1, -1])
def test_nearly_colinear_inputs_fall_back_to_lerp(sign):
    v0 = torch.randn(100, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v1 = sign * 2 * v0 + 0.05 * torch.randn(100, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert 0.9995 < abs(np.cos(angle(v0, v1))) < 1  # nearly, not exactly, colinear
    merged, fell_back = slerp_soup([v0, v1], [0.7, 0.3])
    assert fell_back
    assert torch.allclose(merged, 0.7 * v0 + 0.3 * v1, atol=1e-12)
    assert torch.allclose(slerp(0.3, v0, v1), lerp(0.3, v0, v1), atol=1e-12)


def test_zero_norm_tensor_falls_back_to_lerp():
    v1 = torch.randn(10, dtype=torch.float64)
    merged, fell_back = slerp_soup([torch.zeros(10, dtype=torch.float64), v1], [0.6, 0.4])
    assert fell_back and torch.allclose(merged, 0.4 * v1)
    assert not torch.isnan(slerp(0.5, torch.zeros(3), torch.zeros(3))).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_dtype_is_preserved_and_values_match_float64(dtype):
    generator = torch.Generator().manual_seed(0)
    v0, v1 = torch.randn(64, generator=generator).to(dtype), torch.randn(64, generator=generator).to(dtype)
    merged = slerp(0.3, v0, v1)
    assert merged.dtype == dtype
    expected = torch.tensor(reference_slerp(0.3, v0.double(), v1.double()))
    assert torch.allclose(merged.double(), expected, rtol=1e-2, atol=1e-2)


def test_non_floating_tensors_are_copied_from_the_first_and_must_be_equal():
    ids = torch.arange(8)
    assert torch.equal(slerp(0.5, ids, ids.clone()), ids)
    assert torch.equal(linear_soup([ids, ids.clone(), ids.clone()], [1, 2, 3]), ids)
    with pytest.raises(ValueError, match="non-floating"):
        slerp(0.5, ids, ids + 1)


def test_linear_soup_is_the_weighted_average():
    tensors = [torch.randn(4, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    expected = sum(w * v.double().numpy() for w, v in zip([1, 2, 3], tensors)) / 6
    assert np.allclose(linear_soup(tensors, [1, 2, 3]).numpy(), expected, atol=1e-6)
    assert torch.allclose(lerp(0.25, tensors[0], tensors[1]), 0.75 * tensors[0] + 0.25 * tensors[1], atol=1e-6)


def test_spherical_mean_of_three_orthonormal_vectors_is_symmetric():
    e = orthonormal(3)
    expected = (e[0] + e[1] + e[2]) / math.sqrt(3)
    for order in itertools.permutations(range(3)):
        merged, fell_back = slerp_soup([e[i] for i in order], [1.0, 1.0, 1.0])
        assert not fell_back
        assert torch.allclose(merged, expected, atol=1e-9)
        assert [angle(merged, v) for v in e] == pytest.approx([np.arccos(1 / np.sqrt(3))] * 3, abs=1e-9)


def test_spherical_mean_balances_the_geodesic_pulls():
    """Σ wᵢ·log_u(v̂ᵢ) = 0 at the weighted Karcher mean u (log computed here in numpy), the norm is
    the weighted mean of norms, and permuting inputs with their weights changes nothing."""
    rng = np.random.default_rng(0)
    vectors = [torch.tensor(rng.normal(size=50) * scale) for scale in (1, 2, 5, 0.5)]
    weights = [0.1, 0.2, 0.3, 0.4]
    merged, fell_back = slerp_soup(vectors, weights)
    assert not fell_back
    u = merged.numpy() / np.linalg.norm(merged.numpy())
    pull = np.zeros_like(u)
    for w, v in zip(weights, vectors):
        x = v.numpy() / np.linalg.norm(v.numpy())
        theta = np.arccos(np.clip(x @ u, -1, 1))
        pull += w * theta * (x - np.cos(theta) * u) / np.sin(theta)
    assert np.linalg.norm(pull) < 1e-8
    assert np.linalg.norm(merged.numpy()) == pytest.approx(sum(w * v.norm().item() for w, v in zip(weights, vectors)))
    permuted, _ = slerp_soup(vectors[::-1], weights[::-1])
    assert torch.allclose(permuted, merged, atol=1e-9)


def test_spherical_mean_with_a_zero_weight_is_slerp_of_the_others():
    rng = np.random.default_rng(1)
    a, b, c = (torch.tensor(rng.normal(size=40) * s) for s in (1, 3, 2))
    merged, _ = slerp_soup([a, b, c], [0.3, 0.7, 0.0])
    assert np.allclose(merged.numpy(), reference_slerp(0.7, a, b), atol=1e-8)
    assert torch.equal(slerp_soup([a, b], [1.0, 3.0])[0], slerp(0.75, a, b))


# --- whole models ------------------------------------------------------------------------


def write_tiny_model(folder, tiny_bert_dir, seed, pooling="cls"):
    """A random 2-layer BERT saved as an embedtune / sentence-transformers folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from embedtune.model import Embedder

    torch.manual_seed(seed)
    backbone = BertModel(BertConfig.from_pretrained(tiny_bert_dir))
    Embedder(backbone, AutoTokenizer.from_pretrained(tiny_bert_dir), pooling=pooling, max_length=64, prompts={"query": "query: "}).save(
        folder
    )
    return folder


@pytest.fixture(scope="module")
def models(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("merge-inputs")
    return [write_tiny_model(root / name, tiny_bert_dir, seed) for seed, name in enumerate("abc")]


@pytest.fixture(scope="module")
def merged(models, tmp_path_factory):
    out = tmp_path_factory.mktemp("merged") / "ab"
    summary = merge_models([str(models[0]), str(models[1])], str(out), "slerp", t=0.3)
    return out, summary


def weights_of(folder):
    return load_file(folder / "model.safetensors")


def test_every_merged_tensor_is_the_slerp_of_the_inputs(models, merged):
    out, summary = merged
    a, b, result = weights_of(models[0]), weights_of(models[1]), weights_of(out)
    assert list(result) == list(a)
    for name, tensor in result.items():
        assert tensor.dtype == a[name].dtype and not torch.isnan(tensor).any(), name
        assert np.allclose(tensor.numpy(), reference_slerp(0.3, a[name], b[name]), rtol=1e-5, atol=1e-6), name
    expected_fallbacks = sum(falls_back(a[name], b[name]) for name in a)  # LayerNorm ones, zero biases
    assert 0 < expected_fallbacks < len(a)
    assert summary["lerp_fallbacks"] == expected_fallbacks
    assert (summary["tensors"], summary["merged"], summary["copied"], summary["shards"]) == (len(a), len(a), 0, 1)


def test_merged_model_loads_and_pools_like_its_inputs(models, merged):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    out, _ = merged
    model, first = load_embedder(str(out)), load_embedder(str(models[0]))
    assert (model.pooling, model.max_length, model.prompts, model.normalize) == (
        first.pooling,
        first.max_length,
        first.prompts,
        first.normalize,
    )
    assert (model.pooling, model.prompts) == ("cls", {"query": "query: "})
    st = sentence_transformers.SentenceTransformer(str(out), device="cpu")
    ours, theirs = model.encode(TEXTS, "query"), torch.tensor(st.encode(TEXTS, prompt_name="query"))
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999
    record = json.loads((out / "embedtune_merge.json").read_text())
    assert (record["method"], record["weights"]) == ("slerp", [0.7, 0.3])


def test_merging_a_model_with_itself_reproduces_it(models, tmp_path):
    merge_models([str(models[0])] * 3, str(tmp_path / "self"), "slerp", weights=[1, 2, 3])
    original, result = weights_of(models[0]), weights_of(tmp_path / "self")
    assert all(torch.allclose(result[name], tensor, rtol=1e-6, atol=0) for name, tensor in original.items())


def test_linear_soup_of_three_models_is_their_weighted_average(models, tmp_path):
    summary = merge_models([str(m) for m in models], str(tmp_path / "soup"), "linear", weights=[1, 2, 3])
    inputs, result = [weights_of(m) for m in models], weights_of(tmp_path / "soup")
    for name, tensor in result.items():
        expected = sum(w * inputs[i][name].double() for i, w in enumerate([1, 2, 3])) / 6
        assert torch.allclose(tensor.double(), expected, atol=1e-6), name
    assert summary["lerp_fallbacks"] == 0


def test_slerp_of_three_models_does_not_depend_on_their_order(models, tmp_path):
    merge_models([str(m) for m in models], str(tmp_path / "abc"), "slerp", weights=[1, 2, 3])
    merge_models([str(models[i]) for i in (2, 0, 1)], str(tmp_path / "cab"), "slerp", weights=[3, 1, 2])
    abc, cab = weights_of(tmp_path / "abc"), weights_of(tmp_path / "cab")
    assert all(torch.allclose(abc[name], cab[name], atol=1e-6) for name in abc)


def test_layer_t_schedule_and_only_filter(models, tmp_path):
    a, b = weights_of(models[0]), weights_of(models[1])
    schedule = [("attention", 0.2), ("intermediate|output.dense", 0.9)]
    merge_models([str(models[0]), str(models[1])], str(tmp_path / "sched"), "slerp", t=0.5, layer_t=schedule)
    result = weights_of(tmp_path / "sched")
    for name, tensor in result.items():
        t = 0.2 if "attention" in name else 0.9 if ("intermediate" in name or "output.dense" in name) else 0.5
        assert np.allclose(tensor.numpy(), reference_slerp(t, a[name], b[name]), rtol=1e-5, atol=1e-6), name
    summary = merge_models([str(models[0]), str(models[1])], str(tmp_path / "only"), "linear", only=r"layer\.1\.")
    result = weights_of(tmp_path / "only")
    for name, tensor in result.items():
        expected = (a[name] + b[name]) / 2 if "layer.1." in name else a[name]
        assert torch.allclose(tensor, expected, atol=1e-6), name
    assert summary["merged"] == sum("layer.1." in name for name in a) and summary["copied"] == len(a) - summary["merged"]


def test_sharded_output_loads_and_merges_again(models, merged, tmp_path):
    summary = merge_models([str(models[0]), str(models[1])], str(tmp_path / "sharded"), "slerp", t=0.3, max_shard_bytes=1_000_000)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert summary["shards"] == len(set(index["weight_map"].values())) > 1
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    single = weights_of(merged[0])
    sharded = {}
    for file in set(index["weight_map"].values()):
        sharded.update(load_file(tmp_path / "sharded" / file))
    assert sharded.keys() == single.keys() and all(torch.equal(sharded[k], single[k]) for k in single)
    assert torch.allclose(load_embedder(str(tmp_path / "sharded")).encode(TEXTS), load_embedder(str(merged[0])).encode(TEXTS), atol=1e-6)
    merge_models([str(tmp_path / "sharded"), str(models[1])], str(tmp_path / "again"), "linear", t=0.0)  # a sharded input
    assert all(torch.equal(tensor, single[name]) for name, tensor in weights_of(tmp_path / "again").items())


def copy_with_tensors(source, target, change):
    """A copy of a model folder whose weights went through ``change(dict)``."""
    shutil.copytree(source, target)
    tensors = weights_of(target)
    change(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def test_mismatched_shape_is_one_line_naming_the_file_and_tensor(models, tmp_path):
    name = "encoder.layer.0.attention.self.query.weight"
    bad = copy_with_tensors(models[1], tmp_path / "bad", lambda t: t.update({name: torch.zeros(32, 16)}))
    with pytest.raises(EmbedtuneError) as error:
        merge_models([str(models[0]), str(bad)], str(tmp_path / "out"), "slerp")
    assert str(error.value) == f"{bad}/model.safetensors: tensor '{name}' has shape (32, 16), {models[0]} has (32, 32)"
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_missing_tensor_and_other_architecture_are_clear_errors(models, tmp_path):
    missing = copy_with_tensors(models[1], tmp_path / "missing", lambda t: t.pop("pooler.dense.bias"))
    with pytest.raises(EmbedtuneError, match=rf"^{missing}/model.safetensors: no tensor 'pooler.dense.bias', {models[0]} has it$"):
        merge_models([str(models[0]), str(missing)], str(tmp_path / "out"), "slerp")
    shutil.copytree(models[1], tmp_path / "deeper")
    config = json.loads((tmp_path / "deeper" / "config.json").read_text())
    (tmp_path / "deeper" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(EmbedtuneError, match=rf"^{tmp_path}/deeper/config.json: num_hidden_layers is 3, {models[0]} has 2$"):
        merge_models([str(models[0]), str(tmp_path / "deeper")], str(tmp_path / "out"), "slerp")
    assert not (tmp_path / "out").exists()


def test_integer_buffers_are_copied_from_the_first_and_must_agree(models, tmp_path):
    """Older checkpoints (the packaged MiniLM) carry position ids that newer saves drop."""
    with_ids = copy_with_tensors(models[0], tmp_path / "ids", lambda t: t.update({"embeddings.position_ids": torch.arange(256)[None]}))
    merge_models([str(with_ids), str(models[1])], str(tmp_path / "out"), "slerp")
    assert torch.equal(weights_of(tmp_path / "out")["embeddings.position_ids"], torch.arange(256)[None])
    other_ids = copy_with_tensors(
        models[1], tmp_path / "other-ids", lambda t: t.update({"embeddings.position_ids": torch.arange(256)[None] + 1})
    )
    with pytest.raises(EmbedtuneError, match="tensor 'embeddings.position_ids' \\(I64\\) differs from"):
        merge_models([str(with_ids), str(other_ids)], str(tmp_path / "out2"), "slerp")


def test_different_pooling_warns_and_keeps_the_first(models, tiny_bert_dir, tmp_path):
    mean_model = write_tiny_model(tmp_path / "mean", tiny_bert_dir, seed=5, pooling="mean")
    with pytest.warns(UserWarning, match=r"pooling 'mean' \(.*: 'cls'\)"):
        merge_models([str(models[0]), str(mean_model)], str(tmp_path / "out"), "linear")
    assert load_embedder(str(tmp_path / "out")).pooling == "cls"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"t": 0.5, "n": 3}, "for 3 models give weights"),
        ({"weights": [1, 2], "n": 3}, "one per model"),
        ({"weights": [1, -1]}, ">= 0 with a positive sum"),
        ({"t": 1.5}, "t must be between 0"),
        ({"t": 0.5, "weights": [1, 1]}, "not both"),
        ({"layer_t": [("(", 0.5)]}, "bad regular expression"),
        ({"n": 1}, "at least two"),
    ],
)
def test_bad_weights_are_errors_before_anything_is_read(kwargs, message, tmp_path):
    n = kwargs.pop("n", 2)
    with pytest.raises(EmbedtuneError, match=message):
        merge_models([str(tmp_path / "nowhere")] * n, str(tmp_path / "out"), "slerp", **kwargs)
    assert not (tmp_path / "out").exists()


def test_output_cannot_be_an_input(models):
    with pytest.raises(EmbedtuneError, match=rf"^--out {models[1]} is also an input \({models[1]}\)"):
        merge_models([str(models[0]), str(models[1])], str(models[1]), "slerp", overwrite=True)


def test_cli_merges_and_prints_a_summary(models, merged, tmp_path):
    result = embedtune(
        "merge", "--slerp", str(models[0]), str(models[1]), "--t", "0.3", "--layer-t", "nothing-matches=0.9", "--out", str(tmp_path / "cli")
    )
    assert result.returncode == 0, result.stderr
    single = weights_of(merged[0])
    assert f"{len(single)} of {len(single)}" in result.stdout and "peak RSS" in result.stdout
    assert all(torch.equal(tensor, single[name]) for name, tensor in weights_of(tmp_path / "cli").items())


def test_a_merge_carries_its_own_card_not_its_first_inputs(models, tmp_path):
    """The inputs' cards name the model they started from; the merge's card names its inputs,
    weights and parent, and lists that model as its base (relation: merge)."""
    from embedtune.model_card import front_matter

    inputs = [tmp_path / "a", tmp_path / "b"]
    for source, target in zip(models, inputs):
        shutil.copytree(source, target)
        (target / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n---\n# the input's own card\n")
    merge_models([str(inputs[0]), str(inputs[1])], str(tmp_path / "merged"), "slerp", t=0.25, base=str(models[2]))
    card = (tmp_path / "merged" / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["base_model_relation"] == "merge"
    assert meta["library_name"] == "sentence-transformers" and "slerp" in meta["tags"]
    assert "the input's own card" not in card
    assert f"| `{inputs[0]}` | 0.75 |" in card and f"| `{inputs[1]}` | 0.25 |" in card
    assert f"`{models[2]}`" in card  # the parent of the task vectors
    assert load_embedder(str(tmp_path / "merged")).dim == 32


def test_cli_error_is_one_line_and_writes_nothing(models, tmp_path):
    bad = copy_with_tensors(models[1], tmp_path / "bad", lambda t: t.update({"pooler.dense.weight": torch.zeros(3, 3)}))
    result = embedtune("merge", "--linear", str(models[0]), str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"embedtune merge: error: {bad}/model.safetensors: tensor 'pooler.dense.weight' has shape (3, 3), {models[0]} has (32, 32)"
    ]
    assert not (tmp_path / "out").exists()
    result = embedtune("merge", "--slerp", str(models[0]), str(models[1]), "--layer-t", "attention", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--layer-t expects REGEX=T" in result.stderr
    assert not (tmp_path / "out").exists()


# --- task vectors: methods against closed forms ----------------------------------------------


def reference_task_slerp(t, base, v0, v1):
    """base + the closed-form slerp of the task vectors v0 − base and v1 − base, in numpy."""
    b = np.asarray(base, np.float64)
    return b + reference_slerp(t, np.asarray(v0, np.float64) - b, np.asarray(v1, np.float64) - b)


def test_task_vector_slerp_of_orthogonal_deltas_is_the_closed_form():
    e1, e2, e3 = orthonormal(3)
    base = 500 * e3  # far from the origin, as weights are: slerp of the weights is lerp
    v0, v1 = base + 2 * e1, base + 4 * e2  # task vectors 2·e1 and 4·e2, at 90°
    for t in (0.25, 0.5, 0.8):
        merged, fell_back = slerp_soup([v0, v1], [1 - t, t], base=base)
        delta = merged - base
        assert not fell_back
        assert angle(delta, e1) == pytest.approx(t * np.pi / 2, abs=1e-9)
        assert delta.norm().item() == pytest.approx((1 - t) * 2 + t * 4)
        expected = base + ((1 - t) * 2 + t * 4) * (math.cos(t * math.pi / 2) * e1 + math.sin(t * math.pi / 2) * e2)
        assert torch.allclose(merged, expected, atol=1e-12)
    assert slerp_soup([v0, v1], [0.5, 0.5])[1]  # the weights themselves are nearly colinear: plain slerp is lerp


def test_task_vector_slerp_matches_numpy_on_random_deltas():
    rng = np.random.default_rng(3)
    base = torch.tensor(rng.normal(size=(6, 9)))
    v0, v1 = base + 0.01 * torch.tensor(rng.normal(size=(6, 9))), base + 0.03 * torch.tensor(rng.normal(size=(6, 9)))
    for t in (0.1, 0.5, 0.9):
        merged, fell_back = slerp_soup([v0, v1], [1 - t, t], base=base)
        assert not fell_back and merged.shape == (6, 9)
        assert np.allclose(merged.numpy(), reference_task_slerp(t, base, v0, v1), atol=1e-12)


def test_task_vector_slerp_endpoints_are_each_checkpoint_bit_for_bit():
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(50, 7, generator=generator)
    v0, v1 = base + 1e-3 * torch.randn(50, 7, generator=generator), base - 3e-3 * torch.randn(50, 7, generator=generator)
    assert torch.equal(slerp_soup([v0, v1], [1.0, 0.0], base=base)[0], v0)
    assert torch.equal(slerp_soup([v0, v1], [0.0, 1.0], base=base)[0], v1)


def test_colinear_task_vectors_fall_back_to_lerp_of_the_weights():
    rng = np.random.default_rng(5)
    base, delta = torch.tensor(rng.normal(size=40)), torch.tensor(rng.normal(size=40))
    v0, v1 = base + delta, base + 3 * delta + 1e-3 * torch.tensor(rng.normal(size=40))
    merged, fell_back = slerp_soup([v0, v1], [0.6, 0.4], base=base)
    assert fell_back
    assert torch.allclose(merged, 0.6 * v0 + 0.4 * v1, atol=1e-12)
    assert slerp_soup([base, base.clone()], [0.5, 0.5], base=base)[1]  # zero task vectors: no direction


def test_model_stock_ratio_from_the_angle_between_task_vectors():
    """Jang et al. 2024: t = 2cosθ/(1 + cosθ) for two fine-tunes; θ_b + t·mean(δ)."""
    e1, e2, e3 = orthonormal(3)
    base = 3 * e3
    cos = 0.6
    d0, d1 = 2 * e1, 2 * (cos * e1 + math.sqrt(1 - cos**2) * e2)
    merged = model_stock([base + d0, base + d1], base)
    t = 2 * cos / (1 + cos)
    assert torch.allclose(merged, base + t * (d0 + d1) / 2, atol=1e-12)
    assert torch.allclose(model_stock([base + e1, base + e2], base), base, atol=1e-12)  # orthogonal: back to the base
    assert torch.allclose(model_stock([base + d0, base + d0], base), base + d0, atol=1e-12)  # identical: kept
    three = model_stock([base + e1, base + e2, base + (e1 + e2) / math.sqrt(2)], base)
    mean_cos = (0 + 2 / math.sqrt(2)) / 3
    t3 = 3 * mean_cos / (1 + 2 * mean_cos)
    assert torch.allclose(three, base + t3 * (e1 + e2 + (e1 + e2) / math.sqrt(2)) / 3, atol=1e-12)


def test_magnitude_threshold_keeps_the_top_share_whole_or_in_blocks():
    values = torch.randn(1000, generator=torch.Generator().manual_seed(6))
    for density in (0.01, 0.2, 0.5, 0.999):
        k = math.ceil(density * 1000)
        expected = values.abs().topk(k).values[-1].item()
        assert magnitude_threshold(lambda: [values], density) == expected
        assert magnitude_threshold(lambda: values.split(37), density) == expected
        assert int((trim(values, expected) != 0).sum()) == k
    assert magnitude_threshold(lambda: [values], 1.0) == 0.0
    assert magnitude_threshold(lambda: [torch.tensor([0.0, -2.0, 2.0, 1e-30])], 0.5) == 2.0  # ties at τ are both kept


def test_ties_on_a_hand_computed_example():
    """Yadav et al. 2023: trim to the top 50% magnitudes, elect the sign of the total mass,
    average the entries that agree with it."""
    base = torch.tensor([1.0, 1.0, 1.0, 1.0])
    d0 = torch.tensor([0.5, -0.1, 0.3, -0.4])  # top 2: 0.5, -0.4
    d1 = torch.tensor([-0.2, 0.6, 0.1, -0.2])  # top 2: 0.6, then -0.2 and -0.2 tie at τ = 0.2: all three kept
    d2 = torch.tensor([-0.35, -0.3, 0.05, 0.2])  # top 2: -0.35, -0.3
    # trimmed: d0 = [0.5, 0, 0, -0.4]; d1 = [-0.2, 0.6, 0, -0.2]; d2 = [-0.35, -0.3, 0, 0]
    # entry 0: sum -0.05 < 0 → mean of {-0.2, -0.35} = -0.275; entry 1: sum 0.3 > 0 → mean of {0.6}
    # entry 2: all trimmed → 0; entry 3: sum -0.6 → mean of {-0.4, -0.2} = -0.3
    merged = ties([base + d0, base + d1, base + d2], base, [1.0, 1.0, 1.0], density=0.5)
    assert torch.allclose(merged, base + torch.tensor([-0.275, 0.6, 0.0, -0.3]), atol=1e-6)
    assert torch.equal(ties_mean([torch.tensor([0.5]), torch.tensor([-0.5])], [1.0, 1.0]), torch.tensor([0.0]))  # no sign wins: 0
    weighted = ties_mean([torch.tensor([0.5, -0.4]), torch.tensor([-0.2, -0.2])], [1.0, 3.0])
    # entry 0: 0.5 − 0.6 < 0 → only d1 agrees → -0.2; entry 1: both agree → (−0.4 − 0.6)/4
    assert torch.allclose(weighted, torch.tensor([-0.2, -0.25]), atol=1e-7)


def test_dare_keeps_the_expectation_and_is_seeded_by_key_and_index():
    delta = torch.linspace(-1, 1, 20_000, dtype=torch.float64)
    density = 0.3
    dropped = dare(delta, density, key=1)
    kept = dropped != 0
    assert abs(kept.double().mean().item() - density) < 0.015
    assert torch.allclose(dropped[kept], delta[kept] / density)
    assert torch.equal(dare(delta, density, key=1), dropped)  # the same key: the same drop
    assert not torch.equal(dare(delta, density, key=2), dropped)
    assert torch.equal(
        torch.cat([dare(delta[:7000], density, 1, 0), dare(delta[7000:], density, 1, 7000)]), dropped
    )  # blocks drop the same entries
    mean = sum(dare(delta, density, key=k) for k in range(200)) / 200
    assert (mean - delta).abs().max().item() < 6 * math.sqrt((1 - density) / density / 200)  # E[δ̃] = δ (|δ| ≤ 1, 6σ)
    assert torch.equal(dare(delta, 1.0, key=1), delta)
    u = uniform(7, 0, 100_000)
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005 and np.array_equal(uniform(7, 500, 10), u[500:510])


# --- task vectors: whole models ----------------------------------------------------------


@pytest.fixture(scope="module")
def family(models, tmp_path_factory):
    """A parent (the first tiny model) and three fine-tunes of it: random task vectors of about
    1% of the weights, the third nearly colinear with the first (2·δ₁ plus 0.5% noise)."""
    root = tmp_path_factory.mktemp("family")
    parent = weights_of(models[0])
    generator = torch.Generator().manual_seed(10)
    first, second = (
        {name: 0.01 * torch.randn(t.shape, generator=generator) for name, t in parent.items() if t.is_floating_point()} for _ in range(2)
    )
    third = {name: 2 * delta + 1e-4 * torch.randn(delta.shape, generator=generator) for name, delta in first.items()}
    children = [
        copy_with_tensors(models[0], root / name, lambda t, d=deltas: t.update({n: t[n] + d[n] for n in d}))
        for name, deltas in zip(("c1", "c2", "c3"), (first, second, third))
    ]
    return models[0], children


def test_base_slerp_merges_task_vectors_tensor_by_tensor(family, tmp_path):
    parent, (c1, c2, _) = family
    summary = merge_models([str(c1), str(c2)], str(tmp_path / "out"), "slerp", t=0.3, base=str(parent), block_elements=1000)
    p, a, b, result = weights_of(parent), weights_of(c1), weights_of(c2), weights_of(tmp_path / "out")
    assert list(result) == list(a)
    for name, tensor in result.items():
        assert np.allclose(tensor.numpy(), reference_task_slerp(0.3, p[name], a[name], b[name]), rtol=1e-5, atol=1e-6), name
        if p[name].any():  # a zero parent tensor (biases) makes the task vectors the weights
            assert not np.allclose(tensor.numpy(), reference_slerp(0.3, a[name], b[name]), rtol=1e-5, atol=1e-6), name
    assert (summary["merged"], summary["lerp_fallbacks"]) == (len(a), 0)
    assert json.loads((tmp_path / "out" / "embedtune_merge.json").read_text())["base"] == str(parent)


def test_base_slerp_endpoints_are_the_checkpoints_bit_for_bit(family, tmp_path):
    parent, (c1, c2, _) = family
    for t, expected in ((0.0, c1), (1.0, c2)):
        merge_models([str(c1), str(c2)], str(tmp_path / f"t{t}"), "slerp", t=t, base=str(parent), block_elements=1000)
        result, checkpoint = weights_of(tmp_path / f"t{t}"), weights_of(expected)
        assert all(torch.equal(result[name], checkpoint[name]) for name in checkpoint)


def test_colinear_task_vectors_fall_back_to_lerp_and_the_report_says_so(family, tmp_path):
    parent, (c1, _, c3) = family
    summary = merge_models([str(c1), str(c3)], str(tmp_path / "out"), "slerp", base=str(parent))
    a, c, result = weights_of(c1), weights_of(c3), weights_of(tmp_path / "out")
    assert summary["lerp_fallbacks"] == summary["merged"] == len(a)
    assert all(torch.allclose(result[name], (a[name] + c[name]) / 2, atol=1e-6) for name in a)
    assert summary["distances"]["cosines"][0][1] > 0.9995


def test_the_report_measures_relative_norms_and_cosines_of_task_vectors(family, tmp_path):
    parent, children = family
    summary = merge_models([str(c) for c in children], str(tmp_path / "out"), "slerp", base=str(parent), block_elements=1000)
    p = weights_of(parent)
    deltas = [np.concatenate([(weights_of(c)[name].double() - p[name].double()).ravel().numpy() for name in p]) for c in children]
    base_norm = np.sqrt(sum((p[name].double() ** 2).sum().item() for name in p))
    distances = summary["distances"]
    assert distances["relative_to"] == "base"
    assert distances["relative_norms"] == pytest.approx([np.linalg.norm(d) / base_norm for d in deltas], rel=1e-6)
    expected = [[d @ e / (np.linalg.norm(d) * np.linalg.norm(e)) for e in deltas] for d in deltas]
    assert np.allclose(distances["cosines"], expected, atol=1e-6)
    assert abs(distances["cosines"][0][1]) < 0.05 and distances["cosines"][0][2] > 0.999  # random vs colinear task vectors
    plain = merge_models([str(children[0]), str(children[1])], str(tmp_path / "plain"), "slerp")["distances"]
    a, b = (np.concatenate([weights_of(c)[name].double().ravel().numpy() for name in p]) for c in children[:2])
    assert plain["relative_to"] == "first"
    assert plain["relative_norms"] == pytest.approx([0.0, np.linalg.norm(b - a) / np.linalg.norm(a)], abs=1e-9)
    assert plain["cosines"][0][1] == pytest.approx(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), abs=1e-9)


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("slerp", {"weights": [1, 2, 3]}),
        ("ties", {"density": 0.3}),
        ("model_stock", {}),
        ("linear", {"sparsify": "dare", "density": 0.4, "seed": 3}),
    ],
)
def test_row_blocks_give_the_whole_tensor_result(family, tmp_path, method, options):
    parent, children = family
    paths = [str(c) for c in children]
    merge_models(paths, str(tmp_path / "blocks"), method, base=str(parent), block_elements=1000, **options)
    merge_models(paths, str(tmp_path / "whole"), method, base=str(parent), block_elements=10**9, **options)
    blocks, whole = weights_of(tmp_path / "blocks"), weights_of(tmp_path / "whole")
    assert all(torch.allclose(blocks[name], whole[name], rtol=1e-6, atol=1e-7) for name in whole)
    p, inputs = weights_of(parent), [weights_of(c) for c in children]
    for name, tensor in whole.items():
        tensors = [w[name] for w in inputs]
        if method == "slerp":
            expected = slerp_soup(tensors, [1, 2, 3], base=p[name])[0]
        elif method == "ties":
            expected = ties(tensors, p[name], [1.0, 1.0, 1.0], density=0.3)
        elif method == "model_stock":
            expected = model_stock(tensors, p[name])
        else:
            continue  # DARE's own checks follow
        assert torch.allclose(tensor, expected, rtol=1e-6, atol=1e-7), name


def test_dare_keeps_each_entry_or_drops_it_and_rescales(family, tmp_path):
    parent, (c1, c2, _) = family
    merge_models([str(c1), str(c2)], str(tmp_path / "out"), "linear", weights=[1, 0], base=str(parent), sparsify="dare", density=0.25)
    p, a, result = weights_of(parent), weights_of(c1), weights_of(tmp_path / "out")
    kept, total = 0, 0
    for name, tensor in result.items():
        delta, merged_delta = a[name] - p[name], tensor - p[name]
        keep = (merged_delta - delta / 0.25).abs() <= 1e-6
        assert torch.all(keep | (merged_delta.abs() <= 1e-6)), name  # every entry: kept and rescaled by 1/density, or dropped
        kept, total = kept + int(keep.sum()), total + keep.numel()
    assert kept / total == pytest.approx(0.25, abs=0.01)
    merge_models([str(c1), str(c2)], str(tmp_path / "again"), "linear", weights=[1, 0], base=str(parent), sparsify="dare", density=0.25)
    assert all(torch.equal(tensor, result[name]) for name, tensor in weights_of(tmp_path / "again").items())  # seeded


def test_base_of_another_architecture_is_one_clear_error(family, tmp_path):
    parent, (c1, c2, _) = family
    shutil.copytree(parent, tmp_path / "deeper")
    config = json.loads((tmp_path / "deeper" / "config.json").read_text())
    (tmp_path / "deeper" / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(EmbedtuneError, match=rf"^{tmp_path}/deeper/config.json: num_hidden_layers is 3, {c1} has 2$"):
        merge_models([str(c1), str(c2)], str(tmp_path / "out"), "slerp", base=str(tmp_path / "deeper"))
    name = "encoder.layer.0.attention.self.query.weight"
    narrow = copy_with_tensors(parent, tmp_path / "narrow", lambda t: t.update({name: torch.zeros(32, 16)}))
    with pytest.raises(EmbedtuneError, match=rf"^{narrow}/model.safetensors: tensor '{name}' has shape \(32, 16\), {c1} has \(32, 32\)$"):
        merge_models([str(c1), str(c2)], str(tmp_path / "out"), "ties", base=str(narrow))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "ties"}, "ties merges task vectors: give the model the checkpoints were fine-tuned from as base"),
        ({"method": "model_stock", "base": "b", "t": 0.3}, "model_stock sets its own ratio"),
        ({"method": "slerp", "base": "b", "sparsify": "dare"}, "sparsify applies to the task vectors of linear and ties merges, not slerp"),
        ({"method": "linear", "sparsify": "dare"}, "sparsify drops entries of task vectors: give the parent model as base"),
        ({"method": "linear", "base": "b", "density": 0.5}, "density is the share of each task vector that sparsify keeps"),
        ({"method": "ties", "base": "b", "density": 1.5}, r"density must be in \(0, 1\]"),
        ({"method": "linear", "base": "b", "sparsify": "random"}, "unknown sparsify 'random'"),
    ],
)
def test_options_that_do_not_go_together_are_errors_before_anything_is_read(kwargs, message, tmp_path):
    with pytest.raises(EmbedtuneError, match=message):
        merge_models([str(tmp_path / "nowhere")] * 2, str(tmp_path / "out"), **kwargs)
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_replaced_only_when_asked(models, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(EmbedtuneError, match=rf"^--out {out} exists; pass --overwrite to replace it$"):
        merge_models([str(models[0]), str(models[1])], str(out), "linear")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    merge_models([str(models[0]), str(models[1])], str(out), "linear", overwrite=True)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()
    with pytest.raises(EmbedtuneError, match="is also an input"):
        merge_models([str(models[0]), str(models[1])], str(models[2]), "slerp", base=str(models[2]), overwrite=True)


def test_cli_merges_task_vectors_and_prints_how_far_apart_they_were(family, tmp_path):
    parent, (c1, c2, _) = family
    result = embedtune("merge", "--slerp", "--base", str(parent), str(c1), str(c2), "--t", "0.3", "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert "task vectors against the base" in result.stdout and "‖θᵢ − θ_base‖ / ‖θ_base‖" in result.stdout
    assert "fell back to lerp" in result.stdout and f"0 of {len(weights_of(c1))}" in result.stdout
    merge_models([str(c1), str(c2)], str(tmp_path / "api"), "slerp", t=0.3, base=str(parent))
    api = weights_of(tmp_path / "api")
    assert all(torch.equal(tensor, api[name]) for name, tensor in weights_of(tmp_path / "cli").items())
    result = embedtune("merge", "--ties", "--base", str(parent), str(c1), str(c2), "--density", "0.5", "--out", str(tmp_path / "ties"))
    assert result.returncode == 0, result.stderr
    assert load_embedder(str(tmp_path / "ties")).encode(TEXTS).isfinite().all()


def test_cli_bad_task_vector_options_are_one_line(family, tmp_path):
    parent, (c1, c2, _) = family
    (tmp_path / "taken").mkdir()
    cases = [
        (
            ("--ties", str(c1), str(c2), "--out", str(tmp_path / "out")),
            "embedtune merge: error: ties merges task vectors: give the model the checkpoints were fine-tuned from as base (--base PARENT)",
        ),
        (
            ("--slerp", "--base", str(parent), str(c1), str(c2), "--sparsify", "dare", "--out", str(tmp_path / "out")),
            "embedtune merge: error: sparsify applies to the task vectors of linear and ties merges, not slerp",
        ),
        (
            ("--slerp", "--base", str(tmp_path / "nowhere"), str(c1), str(c2), "--out", str(tmp_path / "out")),
            f"embedtune merge: error: {tmp_path / 'nowhere'}: no such model folder or file, nor a packaged model (all-MiniLM-L6-v2, sentence-transformers/all-MiniLM-L6-v2, SmolLM2-135M-Instruct), nor a Hub model in the local cache",
        ),
        (
            ("--linear", str(c1), str(c2), "--out", str(tmp_path / "taken")),
            f"embedtune merge: error: --out {tmp_path / 'taken'} exists; pass --overwrite to replace it",
        ),
    ]
    for args, line in cases:
        result = embedtune("merge", *args)
        assert (result.returncode, result.stderr.strip().splitlines()) == (2, [line])
    assert not (tmp_path / "out").exists() and not list((tmp_path / "taken").iterdir())
