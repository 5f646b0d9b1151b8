"""`embedtune merge`: slerp and soups against closed forms computed in numpy, then whole merges of
tiny random BERTs written to disk, checked tensor by tensor, loaded, and run from the command line."""

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
from embedtune.merge.methods import lerp, linear_soup, slerp, slerp_soup
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
    v0, v1 = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), 3 * torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
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
    Embedder(backbone, AutoTokenizer.from_pretrained(tiny_bert_dir), pooling=pooling, max_length=64, prompts={"query": "query: "}).save(folder)
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
    assert (model.pooling, model.max_length, model.prompts, model.normalize) == (first.pooling, first.max_length, first.prompts, first.normalize)
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
    other_ids = copy_with_tensors(models[1], tmp_path / "other-ids", lambda t: t.update({"embeddings.position_ids": torch.arange(256)[None] + 1}))
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
    with pytest.raises(EmbedtuneError, match="output folder is one of the inputs"):
        merge_models([str(models[0]), str(models[1])], str(models[1]), "slerp")


def test_cli_merges_and_prints_a_summary(models, merged, tmp_path):
    result = embedtune("merge", "--slerp", str(models[0]), str(models[1]), "--t", "0.3", "--layer-t", "nothing-matches=0.9", "--out", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    single = weights_of(merged[0])
    assert f"{len(single)} of {len(single)}" in result.stdout and "peak RSS" in result.stdout
    assert all(torch.equal(tensor, single[name]) for name, tensor in weights_of(tmp_path / "cli").items())


def test_cli_error_is_one_line_and_writes_nothing(models, tmp_path):
    bad = copy_with_tensors(models[1], tmp_path / "bad", lambda t: t.update({"pooler.dense.weight": torch.zeros(3, 3)}))
    result = embedtune("merge", "--linear", str(models[0]), str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"embedtune merge: error: {bad}/model.safetensors: tensor 'pooler.dense.weight' has shape (3, 3), {models[0]} has (32, 32)"]
    assert not (tmp_path / "out").exists()
    result = embedtune("merge", "--slerp", str(models[0]), str(models[1]), "--layer-t", "attention", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "--layer-t expects REGEX=T" in result.stderr
    assert not (tmp_path / "out").exists()
