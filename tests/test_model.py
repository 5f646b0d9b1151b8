"""The Embedder: encode order, save/load round trip, sentence-transformers compatibility."""

from pathlib import Path

import pytest
import torch

from embedtune.errors import EmbedtuneError
from embedtune.model import has_fast_bfloat16, load_embedder, resolved_dtype

TEXTS = ["a short text", "a considerably longer text that needs more tokens than the other ones do", "mid length text here"]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token"])
def test_batched_encode_equals_one_by_one(tiny_bert_dir, pooling):
    model = load_embedder(str(tiny_bert_dir), pooling=pooling)
    batched = model.encode(TEXTS, batch_size=2)
    single = torch.cat([model.encode([text]) for text in TEXTS])
    assert torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(len(TEXTS)))


def test_save_and_load_keep_pooling_max_length_and_prompts(tiny_bert_dir, tmp_path):
    model = load_embedder(str(tiny_bert_dir), pooling="max", max_length=48, prompts={"query": "query: "})
    model.save(tmp_path / "saved")
    again = load_embedder(str(tmp_path / "saved"))
    assert (again.pooling, again.max_length, again.prompts) == ("max", 48, {"query": "query: "})
    assert torch.allclose(model.encode(TEXTS, "query"), again.encode(TEXTS, "query"), atol=1e-6)
    assert not list(tmp_path.glob(".saved*"))  # no temporary folder left behind


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token"])
def test_saved_model_loads_in_sentence_transformers_with_same_embeddings(tiny_bert_dir, tmp_path, pooling):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = load_embedder(str(tiny_bert_dir), pooling=pooling, max_length=16, prompts={"query": "query: "})
    model.save(tmp_path / "m")
    st = sentence_transformers.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    assert st.max_seq_length == 16
    for prompt_name in (None, "query"):
        ours = model.encode(TEXTS, prompt_name)
        theirs = torch.tensor(st.encode(TEXTS, prompt_name=prompt_name))
        assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999


def test_plain_hf_folder_defaults_to_mean_pooling(tiny_bert_dir):
    model = load_embedder(str(tiny_bert_dir))
    assert (model.pooling, model.normalize, model.max_length) == ("mean", True, 256)


def test_folder_that_is_not_a_model_is_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EmbedtuneError, match="not a model folder"):
        load_embedder(str(tmp_path))


def test_unknown_pooling_is_a_clear_error(tiny_bert_dir):
    with pytest.raises(EmbedtuneError, match="unknown pooling 'avg'"):
        load_embedder(str(tiny_bert_dir), pooling="avg")


def test_packaged_minilm_loads_offline():
    model = load_embedder("all-MiniLM-L6-v2")
    assert model.dim == 384 and model.pooling == "mean" and model.normalize
    sims = model.encode(["How do I sort a list?", "sorting a python list", "the weather is cold"])
    assert sims[0] @ sims[1] > sims[0] @ sims[2]  # real weights, real semantics


MIXED = ["tiny", "a rather longer text " * 6, "mid sized text here", "x", "another long one " * 5, "short text", "two words"]


def test_length_chunks_partition_the_batch_longest_first():
    from embedtune.model import length_chunks

    lengths = torch.tensor([3, 120, 5, 118, 4, 60, 119, 3])
    chunks = length_chunks(lengths, overhead_tokens=16)
    assert sorted(torch.cat(chunks).tolist()) == list(range(len(lengths)))
    assert [lengths[c].tolist() for c in chunks] == [[120, 119, 118], [60], [5, 4, 3, 3]]
    assert len(length_chunks(lengths, overhead_tokens=10**6)) == 1  # a split never pays: one pass
    assert len(length_chunks(torch.full((8,), 50), overhead_tokens=0)) == 1  # equal lengths: nothing to gain


@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "last_token"])
def test_length_sorted_chunks_give_the_plain_forward_and_its_gradients(tiny_bert_dir, pooling, monkeypatch):
    """The chunked forward (each chunk cut to its own longest text) equals one padded pass over
    the whole batch, embeddings to 1e-5 and every parameter's gradient."""
    import embedtune.model

    model = load_embedder(str(tiny_bert_dir), pooling=pooling).eval()  # no dropout: both passes must draw nothing
    features = model.tokenize(MIXED)
    weights = torch.randn(len(MIXED), model.dim)

    def run(overhead):
        monkeypatch.setitem(embedtune.model.CHUNK_OVERHEAD_TOKENS, "cpu", overhead)
        model.zero_grad()
        embeddings = model(features)
        (embeddings * weights).sum().backward()
        return embeddings.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain, plain_grads = run(10**9)  # one chunk padded to the longest text: the plain forward
    chunked, chunked_grads = run(0)  # as many chunks as there are lengths
    assert torch.allclose(plain, chunked, atol=1e-5)
    assert plain_grads.keys() == chunked_grads.keys()
    for name in plain_grads:
        assert torch.allclose(plain_grads[name], chunked_grads[name], rtol=1e-4, atol=1e-6), name


def test_left_padded_batches_run_as_one_pass(tiny_bert_dir, monkeypatch):
    """Left padding is never cut: that would move the real tokens' positions."""
    model = load_embedder(str(tiny_bert_dir), padding_side="left").eval()
    calls = []
    monkeypatch.setattr(
        model,
        "_embed",
        lambda features: calls.append(features["input_ids"].shape) or torch.zeros(features["input_ids"].shape[0], model.dim),
    )
    features = model.tokenize(MIXED)
    model(features)
    assert calls == [features["input_ids"].shape]


def test_fast_bfloat16_on_a_cpu_is_what_its_instruction_set_says():
    """The CPU probe against the kernel's own list of the CPU's features."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    assert has_fast_bfloat16("cpu") == bool(flags & {"avx512_bf16", "amx_tile"})


def test_fast_bfloat16_asks_cuda_on_a_gpu_and_is_false_elsewhere(monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert has_fast_bfloat16("cuda") is supported
    assert has_fast_bfloat16("meta") is False


def test_dtype_auto_is_bfloat16_only_where_bfloat16_is_fast(monkeypatch):
    for fast, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr("embedtune.model.has_fast_bfloat16", lambda device, fast=fast: fast)
        assert resolved_dtype("auto", "cpu") == expected
    assert [resolved_dtype(name, "cpu") for name in ("float32", "bfloat16", "float16")] == ["float32", "bfloat16", "float16"]
