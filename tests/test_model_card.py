"""Every saved model carries a Hub-style model card whose numbers are its run's: the front matter
parses as YAML, its model-index equals eval.json, and the card breaks no loader."""

from __future__ import annotations

import inspect
import json

import pytest
from helpers import embedtune

from embedtune.losses.infonce import InfoNCE
from embedtune.model import hub_id, load_embedder
from embedtune.model_card import SavedModel, card_base_models, front_matter, merge_card


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir, tmp_path_factory):
    """A 4-step run on toy pairs that saves a model every step and evaluates every 2 steps."""
    folder = tmp_path_factory.mktemp("card")
    pairs = folder / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"query": f"what is item {i}", "positive": f"item {i} is thing {i}", "negatives": [f"other text {i}"]}) + "\n"
            for i in range(40)
        )
    )
    out = folder / "run"
    result = embedtune(
        "train", "data=files", f"data.train={pairs}", f"data.eval={pairs}", f"backbone.path={tiny_bert_dir}", "backbone.max_length=32",
        "batch.size=8", "train.max_steps=4", "train.lr=3e-4", "save.model_every_n_steps=1", "eval.every_n_steps=2", "prompt=e5", f"output_dir={out}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out


def card_of(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    return text, front_matter(text)


def metrics_of(meta) -> dict:
    (entry,) = meta["model-index"]
    (result,) = entry["results"]
    return {metric["type"]: metric["value"] for metric in result["metrics"]}


def test_final_card_front_matter_holds_the_runs_held_out_numbers(trained_run):
    text, meta = card_of(trained_run / "final")
    evaluation = json.loads((trained_run / "eval.json").read_text())
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "embedtune", "loss:InfoNCE"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local folder is no Hub id
    assert metrics_of(meta) == evaluation["after"]
    assert meta["model-index"][0]["results"][0]["task"]["type"] == "information-retrieval"
    for key, before in evaluation["before"].items():  # the before/after table, rounded as shown
        after = evaluation["after"][key]
        assert f"| {before:.4f} | {after:.4f} | {after - before:+.4f} |" in text


def test_card_prose_reuses_the_loss_docstring_and_the_resolved_config(trained_run):
    text, _ = card_of(trained_run / "final")
    assert inspect.cleandoc(InfoNCE.__doc__).split("\n\n")[1] in text  # the formula paragraph, verbatim
    assert "| train.lr | 0.0003 |" in text and "| batch.size | 8 |" in text
    assert "40 training pairs" in text and "4 optimizer steps" in text
    assert (trained_run / "config.yaml").read_text().strip() in text  # the whole resolved config
    assert 'prompt_name="query"' not in text and "prompt_name='query'" in text  # e5 prompts in the usage snippet


def test_intermediate_cards_say_their_step_and_have_metrics_only_where_evaluated(trained_run):
    text, meta = card_of(trained_run / "models" / "step-00001")
    assert "at step 1 of 4" in text and "model-index" not in meta and "was not evaluated" in text
    _, meta = card_of(trained_run / "models" / "step-00002")
    evaluated = {record["step"]: record for record in map(json.loads, (trained_run / "eval_log.jsonl").read_text().splitlines())}
    assert metrics_of(meta) == {key: value for key, value in evaluated[2].items() if key in metrics_of(meta)}
    assert set(metrics_of(meta)) == {"ndcg@10", "mrr@10", "map@100", "recall@1", "recall@10", "recall@100"}


def test_a_carded_model_still_loads_in_sentence_transformers_and_embedtune(trained_run):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    ours = load_embedder(str(trained_run / "final"))
    theirs = sentence_transformers.SentenceTransformer(str(trained_run / "final"), device="cpu")
    texts = ["what is item 3"]
    assert ours.prompts == {"query": "query: ", "document": "passage: "}
    assert (theirs.encode(texts, prompt_name="query", convert_to_tensor=True) - ours.encode(texts, prompt_name="query")).abs().max() < 1e-5


def test_merge_card_names_inputs_weights_and_their_base_models(tmp_path):
    first = tmp_path / "a"
    first.mkdir()
    (first / "README.md").write_text("---\nbase_model: sentence-transformers/all-MiniLM-L6-v2\n---\n\n# a\n")
    bases = card_base_models(first) + card_base_models(tmp_path / "no-card")
    text = merge_card(
        "runs/merged",
        SavedModel(384, 128, "mean"),
        ["runs/a/final", "runs/b/final"],
        "slerp",
        [0.3, 0.7],
        layer_t=[("attention", 0.2)],
        base_model_ids=bases,
    )
    meta = front_matter(text)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["base_model_relation"] == "merge"
    assert {"merge", "slerp"} <= set(meta["tags"]) and "model-index" not in meta
    assert "| `runs/a/final` | 0.3 |" in text and "| `runs/b/final` | 0.7 |" in text and "attention: 0.2" in text


def test_hub_ids_of_base_models(tmp_path):
    assert hub_id("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("Qwen/Qwen3-Embedding-0.6B") == "Qwen/Qwen3-Embedding-0.6B"
    assert hub_id(str(tmp_path)) is None and hub_id("./my-model") is None
