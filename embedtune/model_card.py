"""Model cards: the ``README.md`` every saved model carries, in the Hugging Face Hub's layout.

A card is YAML front matter the Hub reads (``library_name``, ``base_model``, ``pipeline_tag``,
``tags``, ``datasets``, ``model-index`` with the held-out metrics) followed by prose and tables
for people: what the model was trained from and on, how well it does before and after, the loss
and its paper, the settings, the time and hardware, how to use it, what to cite.

The functions here take plain data (strings, numbers, dicts) and return text: the training run
(`embedtune.training.card`) and the merge command gather what they know and pass it in, so a
card says exactly what its run measured and nothing it did not.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CARD_FILE = "README.md"

# Display names of the held-out metrics (keys of eval.json).
METRIC_NAMES = {
    "ndcg@10": "nDCG@10", "mrr@10": "MRR@10", "map@100": "MAP@100", "recall@1": "Recall@1", "recall@10": "Recall@10",
    "recall@100": "Recall@100", "spearman": "Spearman", "pearson": "Pearson", "accuracy": "Accuracy",
}  # fmt: skip
# The model-index task of each held-out task (as sentence-transformers' cards name them).
MODEL_INDEX_TASKS = {"retrieval": ("information-retrieval", "Information Retrieval"), "sts": ("semantic-similarity", "Semantic Similarity")}

# Sentence-BERT is what loads the saved layout (modules.json, pooling, prompts).
SENTENCE_BERT_BIBTEX = """@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""


@dataclass(frozen=True)
class SavedModel:
    """What a card says about the saved model itself: its shape and how to call it."""

    embedding_dim: int
    max_length: int
    pooling: str
    prompts: Mapping[str, str] = field(default_factory=dict)  # prompt name -> text prepended (sentence-transformers prompts)
    matryoshka_dims: Sequence[int] = ()


@dataclass(frozen=True)
class TrainingRecipe:
    """What a training run knows before it trains: where it starts, what it learns from, how."""

    base_model: str  # as the config named it (a packaged name, a folder, a Hub id)
    base_model_id: str | None  # its Hugging Face Hub id, when it has one
    loss_name: str  # the loss class, e.g. InfoNCE (wrapped: "Matryoshka(InfoNCE)")
    loss_descriptions: Sequence[str]  # the docstrings of the loss classes: formula, aliases, papers
    data_source: str  # what the pairs were read from
    train_pairs: int | None  # None for a stream
    datasets: Sequence[str] = ()  # Hugging Face data set ids among the sources
    eval_name: str | None = None  # the held-out set
    eval_task: str | None = None  # retrieval | sts
    hyperparameters: Mapping[str, object] = field(default_factory=dict)  # the settings worth a table
    config_yaml: str = ""  # the whole resolved config


@dataclass(frozen=True)
class TrainingOutcome:
    """What one saved model of a run went through: its step, time, hardware and held-out scores."""

    step: int
    total_steps: int
    train_seconds: float  # wall time of the training loop, over every session of a resumed run
    hardware: str
    before: Mapping[str, float] | None = None  # the base model's held-out metrics
    after: Mapping[str, float] | None = None  # this model's, when it was evaluated


def training_card(model_id: str, model: SavedModel, recipe: TrainingRecipe, outcome: TrainingOutcome) -> str:
    """The card of a model a training run saved: ``final/`` (``step == total_steps``) or an
    intermediate ``models/step-N`` (which has after-metrics only when it was evaluated there)."""
    final = outcome.step >= outcome.total_steps
    tags = ["sentence-transformers", "sentence-similarity", "feature-extraction", "embedtune", *_loss_tags(recipe.loss_name)]
    if model.matryoshka_dims:
        tags.append("matryoshka")
    meta: dict = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity", "tags": tags}
    if recipe.base_model_id:
        meta["base_model"] = recipe.base_model_id
    if recipe.datasets:
        meta["datasets"] = list(recipe.datasets)
    if outcome.after and recipe.eval_task in MODEL_INDEX_TASKS:
        meta["model-index"] = _model_index(model_id, recipe.eval_task, recipe.eval_name or "held-out", outcome.after)

    what = "a fine-tune" if final else f"an intermediate snapshot, at step {outcome.step} of {outcome.total_steps}, of a fine-tune"
    base = f"[{recipe.base_model_id}](https://huggingface.co/{recipe.base_model_id})" if recipe.base_model_id else f"`{recipe.base_model}`"
    pairs = f"{recipe.train_pairs:,} training pairs" if recipe.train_pairs is not None else "a stream of training pairs"
    sections = [
        f"# {model_id}",
        f"A sentence-transformers model, {what} of {base} with embedtune "
        f"on {pairs} from `{recipe.data_source}`. It maps texts to {model.embedding_dim}-dimensional unit vectors "
        "for semantic search, similarity, clustering and classification.",
        _model_table(recipe, model),
        _evaluation_section(recipe, outcome, final),
        "## Training\n\n" + _training_prose(recipe, outcome, pairs),
        "### Loss: " + recipe.loss_name + "\n\n" + "\n\n".join(_description(doc) for doc in recipe.loss_descriptions),
        "### Hyper-parameters\n\n"
        + _key_value_table(recipe.hyperparameters)
        + (
            "\n\n<details><summary>The whole resolved config</summary>\n\n```yaml\n" + recipe.config_yaml.rstrip() + "\n```\n\n</details>"
            if recipe.config_yaml
            else ""
        ),
        _usage_section(model_id, model),
        "## Citation\n\nThe papers behind the loss are named in its description above. The saved layout is "
        f"Sentence-BERT's:\n\n```bibtex\n{SENTENCE_BERT_BIBTEX}\n```",
    ]
    return _card(meta, sections)


def merge_card(
    model_id: str,
    model: SavedModel,
    inputs: Sequence[str],
    method: str,
    weights: Sequence[float],
    layer_t: Sequence[tuple[str, float]] = (),
    only: str | None = None,
    base_model_ids: Sequence[str] = (),
    task_vectors: Mapping[str, object] | None = None,
) -> str:
    """The card of a merge of model folders ``inputs`` by ``method`` (slerp, linear, ties,
    model_stock) with one weight per input (for two inputs, ``t`` is the second's weight);
    ``layer_t`` [(regex, t)] and ``only`` as `embedtune merge` took them. ``base_model_ids``: the
    Hub ids the inputs were trained from (their own cards' ``base_model``, see `card_base_models`),
    listed as the merge's base models. ``task_vectors``: for a merge against a parent, the parent
    and the sparsification settings, shown with the other settings."""
    meta: dict = {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                  "tags": ["sentence-transformers", "sentence-similarity", "feature-extraction", "embedtune", "merge", method]}  # fmt: skip
    bases = list(dict.fromkeys(base_model_ids))
    if bases:
        meta["base_model"] = bases if len(bases) > 1 else bases[0]
        meta["base_model_relation"] = "merge"
    inputs_table = "| input | weight |\n|---|---|\n" + "\n".join(f"| `{name}` | {weight:.4g} |" for name, weight in zip(inputs, weights))
    settings = {"method": method, **({"per-tensor t (first matching regex wins)": ", ".join(f"{p}: {t:g}" for p, t in layer_t)} if layer_t else {}),
                **({"merged tensors": f"those matching `{only}`; the rest are the first input's"} if only else {}), **(task_vectors or {})}  # fmt: skip
    sections = [
        f"# {model_id}",
        f"A sentence-transformers model merged by embedtune from {len(inputs)} models "
        f"with {method.upper() if method == 'slerp' else method} (`embedtune merge`). It maps texts to {model.embedding_dim}-dimensional "
        "unit vectors. Its tokenizer, pooling and prompts are the first input's. It was not evaluated when it was written: "
        "`embedtune eval` scores it.",
        "## Merge\n\n" + inputs_table + "\n\n" + _key_value_table(settings),
        _usage_section(model_id, model),
        f"## Citation\n\n```bibtex\n{SENTENCE_BERT_BIBTEX}\n```",
    ]
    return _card(meta, sections)


def front_matter(card: str) -> dict:
    """The YAML front matter of a card's text ({} when it has none)."""
    if not card.startswith("---\n"):
        return {}
    header, separator, _ = card[4:].partition("\n---\n")
    return (yaml.safe_load(header) or {}) if separator else {}


def card_base_models(folder: str | Path) -> list[str]:
    """The ``base_model`` Hub ids a model folder's card names (for a merge of fine-tunes: the
    models they started from); [] without a card or a base model."""
    path = Path(folder) / CARD_FILE
    base = front_matter(path.read_text(encoding="utf-8")).get("base_model") if path.is_file() else None
    return [base] if isinstance(base, str) else list(base or [])


# --- pieces ------------------------------------------------------------------------------


def _card(meta: dict, sections: list[str]) -> str:
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{header}---\n\n" + "\n\n".join(section for section in sections if section) + "\n"


def _loss_tags(loss_name: str) -> list[str]:
    """``Matryoshka(InfoNCE)`` -> ["loss:Matryoshka", "loss:InfoNCE"] (sentence-transformers' tag style)."""
    return [f"loss:{name}" for name in loss_name.replace(")", "").split("(") if name]


def _model_index(model_id: str, task: str, eval_name: str, after: Mapping[str, float]) -> list[dict]:
    """The Hub's model-index: the held-out metrics of this model, unrounded (as in eval.json)."""
    task_type, task_name = MODEL_INDEX_TASKS[task]
    metrics = [{"type": key, "value": float(value), "name": METRIC_NAMES.get(key, key)} for key, value in after.items() if _finite(value)]
    return [{"name": model_id, "results": [{"task": {"type": task_type, "name": task_name},
             "dataset": {"name": eval_name, "type": eval_name}, "metrics": metrics}]}]  # fmt: skip


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _model_table(recipe: TrainingRecipe, model: SavedModel) -> str:
    rows = {
        "base model": f"`{recipe.base_model}`"
        + (
            f" ([{recipe.base_model_id}](https://huggingface.co/{recipe.base_model_id}))"
            if recipe.base_model_id and recipe.base_model_id != recipe.base_model
            else ""
        ),
        "embedding": f"{model.embedding_dim} dimensions, L2-normalised, cosine similarity"
        + (f"; Matryoshka: also truncated to {', '.join(str(d) for d in model.matryoshka_dims)}" if model.matryoshka_dims else ""),
        "pooling": model.pooling,
        "max length": f"{model.max_length} tokens",
        "prompts": ", ".join(f"{name}: `{text!r}`" for name, text in model.prompts.items()) or "none",
        "training data": f"`{recipe.data_source}`"
        + (f" ({recipe.train_pairs:,} pairs)" if recipe.train_pairs is not None else " (streamed)"),
    }
    return "## Model\n\n" + _key_value_table(rows)


def _evaluation_section(recipe: TrainingRecipe, outcome: TrainingOutcome, final: bool) -> str:
    """The before/after held-out table, or what was not measured."""
    if recipe.eval_name is None:
        return "## Evaluation\n\nThe run had no held-out set: not evaluated."
    if not outcome.after:
        return f"## Evaluation\n\nThis snapshot was not evaluated on the held-out set `{recipe.eval_name}` (the run's final model was)."
    before = outcome.before or {}
    lines = ["| metric | base model | this model | change |", "|---|---|---|---|"]
    for key, value in outcome.after.items():
        old = before.get(key)
        change = f"{value - old:+.4f}" if _finite(old) and _finite(value) else ""
        lines.append(f"| {METRIC_NAMES.get(key, key)} | {_number(old)} | {_number(value)} | {change} |")
    when = "after training" if final else f"at step {outcome.step}"
    return f"## Evaluation\n\nHeld-out {recipe.eval_task or ''} on `{recipe.eval_name}` (never trained on), {when}:\n\n" + "\n".join(lines)


def _number(value) -> str:
    return f"{value:.4f}" if _finite(value) else "-"


def _training_prose(recipe: TrainingRecipe, outcome: TrainingOutcome, pairs: str) -> str:
    return (
        f"{pairs[0].upper() + pairs[1:]} from `{recipe.data_source}`"
        + (f" (Hugging Face data sets: {', '.join(recipe.datasets)})" if recipe.datasets else "")
        + f". {outcome.step} optimizer steps{'' if outcome.step >= outcome.total_steps else f' of {outcome.total_steps}'} "
        f"in {_duration(outcome.train_seconds)} on {outcome.hardware}."
    )


def _duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return " ".join(f"{value} {unit}" for value, unit in ((hours, "h"), (minutes, "min"), (rest, "s")) if value) or "0 s"


def _description(docstring: str) -> str:
    """A loss docstring up to its argument list: what it computes, its aliases and papers
    (indented formulas render as code in markdown)."""
    return inspect.cleandoc(docstring).split("\nArgs:")[0].split("\nInputs:")[0].strip()


def _key_value_table(rows: Mapping[str, object]) -> str:
    """Settings as a two-column table; values as the config writes them (true, null, [64, 32])."""
    return "| | |\n|---|---|\n" + "\n".join(
        f"| {key} | {value if isinstance(value, str) else json.dumps(value)} |" for key, value in rows.items()
    )


def _usage_section(model_id: str, model: SavedModel) -> str:
    query, document = ("query" in model.prompts), ("document" in model.prompts)
    lines = [
        "from sentence_transformers import SentenceTransformer",
        "",
        f"model = SentenceTransformer({model_id!r})",
        f'queries = model.encode(["How do I read a file line by line?"]{", prompt_name=" + repr("query") if query else ""})',
        f'documents = model.encode(["with open(path) as f:\\n    for line in f: ..."]{", prompt_name=" + repr("document") if document else ""})',
        "print(model.similarity(queries, documents))  # cosine similarities, shape (1, 1)",
    ]
    if model.matryoshka_dims:
        lines.append(f"small = SentenceTransformer({model_id!r}, truncate_dim={min(model.matryoshka_dims)})  # a trained Matryoshka size")
    prompts = " The prompts are saved with the model, so `prompt_name` applies them as in training." if model.prompts else ""
    return "## Usage\n\n`pip install sentence-transformers`, then:" + prompts + "\n\n```python\n" + "\n".join(lines) + "\n```"
