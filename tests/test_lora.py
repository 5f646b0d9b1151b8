"""LoRA: only the adapters train, the saved model is merged and plain, and it embeds exactly like
the in-memory adapter model, in embedtune and in sentence-transformers."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedtune.errors import ConfigError
from embedtune.losses.infonce import InfoNCE
from embedtune.model import load_embedder
from embedtune.training.build import parameter_groups
from embedtune.training.config import config_dir
from embedtune.training.run import run

pytest.importorskip("peft")
from embedtune.lora import apply_lora  # noqa: E402

QUERIES = ["a short text", "mid length text here", "query: passage: ", "a considerably longer text"]
DOCUMENTS = ["short text a", "here text mid length", "passage: query: ", "longer considerably text that needs tokens"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_lora_trains_only_adapters_and_saves_a_merged_plain_model(tiny_qwen3_dir, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    model = load_embedder(str(tiny_qwen3_dir), pooling="last_token", max_length=16, prompts={"query": "query: "})
    base = {name: p.detach().clone() for name, p in model.backbone.named_parameters()}
    model.backbone = apply_lora(model.backbone, r=4, alpha=8, dropout=0.0, target_modules=TARGETS)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)

    optimizer = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-2)
    loss_fn = InfoNCE(temperature=0.05)
    model.train()
    for _ in range(3):
        loss = loss_fn(model(model.tokenize(QUERIES, prompt_name="query")), model(model.tokenize(DOCUMENTS)))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    frozen = {
        name.replace("base_model.model.", "").replace(".base_layer", ""): p
        for name, p in model.backbone.named_parameters()
        if "lora_" not in name
    }
    assert frozen.keys() == base.keys()
    assert all(torch.equal(frozen[name], base[name]) for name in base)  # the backbone's own weights never moved
    assert any(p.abs().sum() > 0 for name, p in model.backbone.named_parameters() if "lora_B" in name)  # adapters did

    model.save(tmp_path / "final")
    assert not (tmp_path / "final" / "adapter_config.json").exists()
    assert hasattr(model.backbone, "peft_config")  # saving merged a copy; training could go on
    merged = load_embedder(str(tmp_path / "final"))
    assert not hasattr(merged.backbone, "peft_config")
    assert not torch.equal(merged.backbone.state_dict()["layers.0.self_attn.q_proj.weight"], base["layers.0.self_attn.q_proj.weight"])
    for prompt_name in (None, "query"):
        assert torch.allclose(merged.encode(QUERIES, prompt_name), model.encode(QUERIES, prompt_name), atol=1e-5)

    st = sentence_transformers.SentenceTransformer(str(tmp_path / "final"), device="cpu")
    assert st.prompts.get("query") == "query: "
    theirs = torch.tensor(st.encode(QUERIES, prompt_name="query"))
    assert torch.nn.functional.cosine_similarity(model.encode(QUERIES, "query"), theirs).min() > 0.9999


def test_unknown_target_module_names_the_layers(tiny_qwen3_dir):
    model = load_embedder(str(tiny_qwen3_dir), pooling="last_token")
    with pytest.raises(ConfigError, match="'query' is no linear layer of this backbone.*q_proj"):
        apply_lora(model.backbone, r=4, alpha=8, dropout=0.0, target_modules=["query"])


def test_training_loop_with_lora_gradient_checkpointing_and_qwen3_prompt(tiny_qwen3_dir, tmp_path):
    """`embedtune train backbone=decoder lora.enabled=true prompt=qwen3 ...` end to end."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": q, "positive": d}) + "\n" for q, d in zip(QUERIES * 2, DOCUMENTS * 2)))
    overrides = [
        "backbone=decoder", f"backbone.path={tiny_qwen3_dir}", "backbone.max_length=16", "backbone.gradient_checkpointing=true",
        "data=files", f"data.train={pairs}", "negatives.per_query=0", "batch.size=4", "batch.no_duplicates=false", "train.max_steps=2",
        "train.lr=1e-2", "eval.before=false", "lora.enabled=true", "lora.r=4", "prompt=qwen3", "prompt.task=Find the matching text",
    ]  # fmt: skip
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.pooling.mode == "last_token"  # the decoder backbone's own default
    run(cfg, tmp_path / "run")
    final = tmp_path / "run" / "final"
    prompts = json.loads((final / "config_sentence_transformers.json").read_text())["prompts"]
    assert prompts == {"query": "Instruct: Find the matching text\nQuery:"}
    assert not (final / "adapter_config.json").exists()
    st = sentence_transformers.SentenceTransformer(str(final), device="cpu")
    ours = load_embedder(str(final)).encode(QUERIES, "query")
    theirs = torch.tensor(st.encode(QUERIES, prompt_name="query"))
    assert torch.nn.functional.cosine_similarity(ours, theirs).min() > 0.9999
