"""Data presets (data=simcse, nli, sts, weak): hand-made files with known pairs, negatives and drop
counts; SimCSE's two dropout views; each preset picks its loss; short runs on tiny models."""

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from embedtune.data import nli, simcse, sts, weak
from embedtune.data.collate import PairCollator
from embedtune.data.held_out import load_held_out
from embedtune.data.sampler import ShuffledBatchSampler
from embedtune.data.types import Pair, RetrievalSet, ScoredPairSet
from embedtune.errors import ConfigError, DataError
from embedtune.eval.held_out import evaluate_held_out
from embedtune.losses.infonce import InfoNCE
from embedtune.losses.qwen3 import Qwen3Loss
from embedtune.model import load_embedder
from embedtune.training.config import config_dir
from embedtune.training.gradcache import gradcache_step
from embedtune.training.run import run

STSB_ROWS = [  # the STS Benchmark layout: 7 tab-separated fields, some rows with 2 more; quotes are text
    "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.",
    'main-news\theadlines\t2013\t0002\t1.250\tHe said "no.\tThe "cat" sat.\tsource-a\tsource-b',
    "main-forums\tdeft-forum\t2014\t0003\t0.000\tA man plays a flute.\tA plane is taking off.",
]


def write(path, lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8")
    return path


def compose_train(*overrides):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides))


# --- every preset picks its loss, negatives and lengths; the command line still wins -------


@pytest.mark.parametrize(
    ("preset", "loss", "negatives"), [("simcse", "InfoNCE", 0), ("nli", "InfoNCE", 1), ("sts", "CoSENT", 0), ("weak", "InfoNCE", 0)]
)
def test_preset_picks_loss_and_negatives(preset, loss, negatives):
    cfg = compose_train(f"data={preset}", "data.train=x")
    assert cfg.loss._target_.endswith(loss)
    assert cfg.negatives.per_query == negatives
    assert cfg.run_name == "sft"  # the stage stays the user's choice
    symmetric = preset != "weak"  # sentence presets cut both sides at one length; weak keeps short queries
    assert (cfg.train.query_max_length == cfg.backbone.max_length) == symmetric


def test_command_line_beats_the_preset():
    cfg = compose_train(
        "data=sts", "data.train=x", "loss=cosine", "data.score_max=1", "negatives.per_query=2", "stage=pretrain", "backbone.max_length=32"
    )
    assert cfg.loss._target_.endswith("CosineRegression")
    assert (cfg.loss.score_min, cfg.loss.score_max) == (0.0, 1)  # the loss's range follows the data's
    assert (cfg.negatives.per_query, cfg.batch.size, cfg.train.query_max_length) == (2, 64, 32)
    assert compose_train("data=simcse", "data.train=x", "loss=qwen3").loss._target_.endswith("Qwen3Loss")


# --- unsupervised SimCSE --------------------------------------------------------------------


def test_simcse_reads_lines_rows_and_sts_and_merges_repeats(tmp_path, capsys):
    lines = write(tmp_path / "t.txt", ["first text", "", "second text ", "first text"])
    rows = write(tmp_path / "t.jsonl", [{"text": "third text", "title": "ignored"}])
    sts = write(tmp_path / "sts.csv", STSB_ROWS)
    data = simcse.load([str(lines), str(rows), str(sts)])
    texts = [
        "first text",
        "second text",
        "third text",
        "A plane is taking off.",
        "An air plane is taking off.",
        'He said "no.',
        'The "cat" sat.',
        "A man plays a flute.",
    ]
    assert data.train == [Pair(text, text) for text in texts]
    line = capsys.readouterr().err.strip()
    assert line.startswith("data=simcse: 10 texts from ") and line.endswith("-> 8 (text, text) pairs; 2 repeated texts merged")


def test_simcse_bad_row_names_file_and_line(tmp_path):
    path = write(tmp_path / "t.jsonl", [{"text": "fine"}, {"text": "  "}])
    with pytest.raises(DataError, match=rf"^{path}:2: column 'text' is empty$"):
        simcse.load(str(path))
    with pytest.raises(DataError, match="at least 2 distinct texts"):
        simcse.load(str(write(tmp_path / "one.txt", ["same", "same"])))


def test_sampler_accepts_pairs_whose_query_is_their_positive():
    pairs = simcse.simcse_pairs([f"text {i}" for i in range(12)])
    sampler = ShuffledBatchSampler(pairs, batch_size=4, seed=0, no_duplicates=True)
    assert sorted(i for batch in sampler for i in batch) == list(range(12))
    assert sampler.skipped_last_epoch == 0


def tiny_simcse_batch(model, texts):
    pairs = simcse.simcse_pairs(texts)
    return PairCollator(model.tokenizer, query_max_length=16, document_max_length=16)(pairs)


TEXTS = [
    "a cat sits on the mat",
    "stocks fell sharply today",
    "the recipe needs two eggs",
    "rain is expected tomorrow",
    "he plays the violin",
    "a new bridge opened",
]


def test_simcse_views_differ_by_dropout_and_match_without(tiny_bert_dir):
    model = load_embedder(str(tiny_bert_dir), max_length=16)
    batch = tiny_simcse_batch(model, TEXTS)
    assert torch.equal(batch["queries"]["input_ids"], batch["documents"]["input_ids"])  # the same tokens twice
    model.train()
    queries, documents = model(batch["queries"]), model(batch["documents"])
    cosines = (queries * documents).sum(-1)
    assert (cosines < 1 - 1e-4).all(), cosines  # every view pair differs: two dropout masks
    assert (cosines > 0.5).all()  # ... but stays the same text
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(batch["queries"]), model(batch["documents"]), atol=1e-6)


def test_simcse_gradcache_replays_each_view(tiny_bert_dir):
    """GradCache on SimCSE pairs: the same loss and gradients as the plain step, and its two
    views are the two different ones the plain step saw (the query pass's masks are replayed for
    the queries, the document pass's for the documents). All texts have one length and the batch
    is one mini-batch, so GradCache's passes draw their masks exactly as the plain step's do."""
    texts = ["stocks fell sharply today", "rain is expected tomorrow", "he plays the violin", "a new bridge opened"]
    loss_fn = InfoNCE()
    model = load_embedder(str(tiny_bert_dir), max_length=16).train()
    batch = tiny_simcse_batch(model, texts)
    assert batch["queries"]["attention_mask"].all()  # one length: no padding, nothing reordered

    torch.manual_seed(0)
    model.zero_grad()
    queries, documents = model(batch["queries"]), model(batch["documents"])
    plain_loss = loss_fn(queries, documents, batch["info"])
    plain_loss.backward()
    plain = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    torch.manual_seed(0)
    model.zero_grad()
    loss, cached_queries, cached_documents = gradcache_step(
        model, batch, loss_fn, model.loss_params, len(texts), lambda loss: loss.backward(), contextlib.nullcontext
    )
    assert loss.item() == pytest.approx(plain_loss.item(), rel=1e-5)
    assert torch.allclose(cached_queries, queries.detach(), atol=1e-6) and torch.allclose(cached_documents, documents.detach(), atol=1e-6)
    assert not torch.allclose(cached_queries, cached_documents, atol=1e-4)  # two views, not one mask twice
    for name, grad in plain.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, rtol=1e-4, atol=1e-6), name


def test_loss_masks_never_drop_the_simcse_positive(tiny_bert_dir):
    """Query i and document i are the same text, so they share a text id. With orthonormal
    embeddings, identical views and tau = 1 the losses have closed forms; a masked positive (or
    a masked in-batch term) would change them."""
    model = load_embedder(str(tiny_bert_dir), max_length=16)
    info = tiny_simcse_batch(model, TEXTS[:4])["info"]
    assert torch.equal(info.query_ids, info.document_ids)
    views = torch.eye(4)  # (batch, dim): each text its own direction, both views identical
    assert InfoNCE(temperature=1.0)(views, views, info).item() == pytest.approx(math.log(1 + 3 / math.e), rel=1e-5)
    # Qwen3: 3 other documents + 3 other queries + 3 documents vs the positive, all at cosine 0
    assert Qwen3Loss(temperature=1.0)(views, views, info).item() == pytest.approx(math.log(1 + 9 / math.e), rel=1e-5)


# --- supervised SimCSE on NLI ------------------------------------------------------------------

NLI_ROWS = [
    {"sentence1": "A man plays guitar.", "sentence2": "A man makes music.", "gold_label": "entailment"},
    {"sentence1": "A man plays guitar.", "sentence2": "A man is asleep.", "gold_label": "contradiction"},
    {"sentence1": "A man plays guitar.", "sentence2": "A man plays for money.", "gold_label": "neutral"},
    {"sentence1": "A man plays guitar.", "sentence2": "Someone plays an instrument.", "gold_label": "Entailment"},
    {"sentence1": "Kids swim.", "sentence2": "Children are in water.", "gold_label": 0},  # Hugging Face integers
    {"sentence1": "Kids swim.", "sentence2": "Kids are in a pool.", "gold_label": 1},
    {"sentence1": "A dog runs.", "sentence2": "An animal moves.", "gold_label": "entailment"},
    {"sentence1": "A dog runs.", "sentence2": "The dog sleeps.", "gold_label": 2},
    {"sentence1": "A dog runs.", "sentence2": "A cat runs.", "gold_label": "-"},  # no annotator consensus
    {"sentence1": "Snow falls.", "sentence2": "It is hot.", "gold_label": "contradiction"},
]


def test_nli_triplets_default_drop_neutral_and_unpaired(tmp_path, capsys):
    path = write(tmp_path / "nli.jsonl", NLI_ROWS)
    data = nli.load(str(path))
    assert data.train == [
        Pair("A man plays guitar.", "A man makes music.", ("A man is asleep.",)),
        Pair("A man plays guitar.", "Someone plays an instrument.", ("A man is asleep.",)),
        Pair("A dog runs.", "An animal moves.", ("The dog sleeps.",)),
    ]
    line = capsys.readouterr().err.strip()
    assert "10 rows, 4 premises" in line and "-> 3 pairs" in line and "3 hard negatives" in line
    assert "dropped: 2 neutral, 1 no gold label, 1 positives without a hard negative" in line


@pytest.mark.parametrize(
    ("neutral", "keep_unpaired", "expected"),
    [
        (
            "negative",
            False,
            {
                ("A man plays guitar.", "A man makes music."): ("A man is asleep.", "A man plays for money."),
                ("A man plays guitar.", "Someone plays an instrument."): ("A man is asleep.", "A man plays for money."),
                ("Kids swim.", "Children are in water."): ("Kids are in a pool.",),
                ("A dog runs.", "An animal moves."): ("The dog sleeps.",),
            },
        ),
        (
            "positive",
            False,
            {
                ("A man plays guitar.", "A man makes music."): ("A man is asleep.",),
                ("A man plays guitar.", "Someone plays an instrument."): ("A man is asleep.",),
                ("A man plays guitar.", "A man plays for money."): ("A man is asleep.",),
                ("A dog runs.", "An animal moves."): ("The dog sleeps.",),
            },
        ),
        (
            "drop",
            True,
            {
                ("A man plays guitar.", "A man makes music."): ("A man is asleep.",),
                ("A man plays guitar.", "Someone plays an instrument."): ("A man is asleep.",),
                ("Kids swim.", "Children are in water."): (),
                ("A dog runs.", "An animal moves."): ("The dog sleeps.",),
            },
        ),
    ],
)
def test_nli_neutral_and_unpaired_as_configured(tmp_path, neutral, keep_unpaired, expected):
    data = nli.load(str(write(tmp_path / "nli.jsonl", NLI_ROWS)), neutral=neutral, keep_unpaired=keep_unpaired)
    assert {(p.query, p.positive): p.negatives for p in data.train} == expected


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"sentence1": "A", "sentence2": "B", "gold_label": "maybe"}, "column 'gold_label' must be entailment, neutral, contradiction"),
        ({"sentence1": "A", "sentence2": "B", "gold_label": True}, "column 'gold_label' must be"),
        ({"sentence1": "A", "gold_label": "entailment"}, "missing column 'sentence2'"),
        ({"sentence1": "A", "sentence2": "", "gold_label": "entailment"}, "column 'sentence2' is empty"),
    ],
)
def test_nli_bad_row_names_file_and_line(tmp_path, row, reason):
    path = write(tmp_path / "nli.jsonl", [NLI_ROWS[0], row])
    with pytest.raises(DataError, match=rf"^{path}:2: {reason}"):
        nli.load(str(path))


def test_nli_neutral_option_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="data.neutral must be one of drop, positive, negative, got 'keep'"):
        nli.load(str(write(tmp_path / "nli.jsonl", NLI_ROWS)), neutral="keep")


def test_nli_on_the_snli_subset(shared_data):
    """Checked against the data's own README (743 premises have both an entailment and a
    contradiction: 378 in dev + 365 in test, counted file by file) and against the raw rows:
    every positive entails, every negative contradicts. Read together, one more premise has its
    entailment in one file and its contradiction in the other."""
    files = sorted(str(p) for p in (shared_data / "snli-subset").glob("*.jsonl"))
    raw = {
        (row["sentence1"], row["sentence2"], row["gold_label"])
        for path in files
        for row in map(json.loads, Path(path).read_text(encoding="utf-8").splitlines())
    }
    assert [len({pair.query for pair in nli.load(path).train}) for path in files] == [378, 365]
    data = nli.load(files)
    assert len({pair.query for pair in data.train}) == 744
    assert all((p.query, p.positive, "entailment") in raw for p in data.train)
    assert all((p.query, negative, "contradiction") in raw for p in data.train for negative in p.negatives)
    assert all(p.negatives for p in data.train)


# --- scored pairs (STS-B) ---------------------------------------------------------------------


def test_scored_pairs_read_stsb_layout_first_seven_fields(tmp_path, capsys):
    path = write(tmp_path / "sts-train.csv", STSB_ROWS)
    data = sts.load(str(path))
    assert data.train == [
        Pair("A plane is taking off.", "An air plane is taking off.", score=5.0),
        Pair('He said "no.', 'The "cat" sat.', score=1.25),
        Pair("A man plays a flute.", "A plane is taking off.", score=0.0),
    ]
    assert "data=sts: 3 scored pairs" in capsys.readouterr().err


def test_scored_pairs_check_the_score_range(tmp_path):
    path = write(tmp_path / "sts.csv", STSB_ROWS)
    with pytest.raises(DataError, match=rf"^{path}:1: score 5 is outside data.score_min..data.score_max = 0..1$"):
        sts.load(str(path), score_max=1.0)
    rows = write(
        tmp_path / "sts.jsonl",
        [{"sentence1": "a b", "sentence2": "c d", "score": 0.5}, {"sentence1": "e", "sentence2": "f", "score": "high"}],
    )
    with pytest.raises(DataError, match=rf"^{rows}:2: column 'score' must be a number"):
        sts.load(str(rows), score_max=1.0)
    with pytest.raises(ConfigError, match="score_max must be > data.score_min"):
        sts.load(str(path), score_min=5.0, score_max=0.0)


# --- weak pairs from documents ------------------------------------------------------------------

GUIDE = """---
layout: page
title: "Embedtune install guide"
---
Embedtune fine-tunes embedding models. It runs on a CPU.

## From source

Clone the repository and run pip.

```bash
# not a heading: a shell comment
pip install -e .
```

## Usage

### Training runs

Call embedtune train with a preset.
"""


def test_weak_pairs_from_a_folder_of_markdown_and_text(tmp_path, capsys):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "guide.md").write_text(GUIDE)
    (docs / "sub" / "note.txt").write_text("Notes on vector search\n\nCosine similarity ranks documents well. Dot products work too.\n")
    (docs / "sub" / "ignored.py").write_text("# not a document\n")
    data = weak.load(str(docs))
    section = "Clone the repository and run pip.\n\n```bash\n# not a heading: a shell comment\npip install -e .\n```"
    assert data.train == [
        Pair("Embedtune install guide", GUIDE.split("---\n", 2)[2].strip()),
        Pair("Embedtune fine-tunes embedding models.", "It runs on a CPU.\n\n" + section + "\n\nCall embedtune train with a preset."),
        Pair("Embedtune install guide > From source", section),
        Pair("Embedtune install guide > Usage > Training runs", "Call embedtune train with a preset."),
        Pair("Notes on vector search", "Cosine similarity ranks documents well. Dot products work too."),
        Pair("Cosine similarity ranks documents well.", "Dot products work too."),
    ]
    line = capsys.readouterr().err.strip()
    assert "2 documents" in line and "-> 6 pairs (2 title_body, 2 first_sentence_rest, 2 heading_section)" in line
    assert line.endswith("dropped: 1 headings with no text under them")


def test_weak_pairs_from_rows_count_short_queries(tmp_path, capsys):
    rows = write(tmp_path / "corpus.jsonl", [
        {"_id": "1", "title": "Dropout as augmentation for sentence embeddings", "text": "SimCSE passes a sentence twice. The views differ by dropout."},
        {"_id": "2", "title": "Short", "text": "e.g. this first sentence is long enough. It has a rest."},
        {"_id": "3", "title": None, "text": "One sentence only."},
    ])  # fmt: skip
    data = weak.load(str(rows), kinds=["title_body", "first_sentence_rest"])
    assert data.train == [
        Pair("Dropout as augmentation for sentence embeddings", "SimCSE passes a sentence twice. The views differ by dropout."),
        Pair("SimCSE passes a sentence twice.", "The views differ by dropout."),
        Pair("e.g. this first sentence is long enough.", "It has a rest."),  # "e.g." alone is under 3 words
    ]
    assert "dropped: 1 title_body queries under 3 words, 1 documents with no pair" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"title": "T", "text": ""}, "column 'text' is empty"),
        ({"title": 3, "text": "x y z."}, "column 'title' must be a string, got int"),
        ({"title": "T"}, "missing column 'text'"),
    ],
)
def test_weak_bad_row_names_file_and_line(tmp_path, row, reason):
    path = write(tmp_path / "c.jsonl", [{"title": "A fine title", "text": "Body. More."}, row])
    with pytest.raises(DataError, match=rf"^{path}:2: {reason}"):
        weak.load(str(path))


def test_weak_options_are_checked(tmp_path):
    path = write(tmp_path / "c.jsonl", [{"title": "A fine title", "text": "Body text here. More."}])
    with pytest.raises(ConfigError, match="data.kinds must be a non-empty list"):
        weak.load(str(path), kinds=["title_body", "abstract"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .markdown, .md, .txt files in this folder"):
        weak.load(str(tmp_path / "empty"))


# --- held-out sets and short training runs ------------------------------------------------------


def test_held_out_is_sts_or_retrieval(tmp_path, tiny_bert_dir):
    sts = load_held_out(str(write(tmp_path / "sts-dev.csv", STSB_ROWS)))
    assert isinstance(sts, ScoredPairSet) and [p.score for p in sts.pairs] == [5.0, 1.25, 0.0]
    pairs = load_held_out(str(write(tmp_path / "dev.jsonl", [{"query": "q1", "positive": "d1"}, {"query": "q2", "positive": "d2"}])))
    assert isinstance(pairs, RetrievalSet) and len(pairs.queries) == 2
    model = load_embedder(str(tiny_bert_dir), max_length=16)
    assert set(evaluate_held_out(model, sts, show_progress=False)) == {"spearman", "pearson"}


def test_simcse_run_reports_sts_before_and_after(tiny_bert_dir, tmp_path, capsys):
    """The whole path: preset -> (text, text) pairs -> the loop -> STS held-out table."""
    texts = write(
        tmp_path / "texts.txt",
        [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "dogs", "rain", "snow", "music", "bread", "stars", "trains"])],
    )
    sts = write(tmp_path / "sts-dev.csv", STSB_ROWS)
    cfg = compose_train(
        "data=simcse",
        f"data.train={texts}",
        f"data.eval={sts}",
        f"backbone.path={tiny_bert_dir}",
        "backbone.max_length=16",
        "batch.size=4",
        "train.max_steps=2",
    )
    result = run(cfg, tmp_path / "run")
    assert set(result["before"]) == set(result["after"]) == {"spearman", "pearson"}
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["data"] == "sts-dev.csv"
    assert "held-out STS: sts-dev.csv" in capsys.readouterr().out


@pytest.mark.slow
def test_short_sts_run_raises_held_out_spearman(minilm_2layer_dir, shared_data, tmp_path):
    """Real MiniLM weights (2 of 6 layers), CoSENT on 640 STS-B train pairs: Spearman on 300
    STS-B dev pairs it never saw must rise."""
    stsb = shared_data / "stsb"
    train = write(tmp_path / "train.csv", (stsb / "sts-train.csv").read_text(encoding="utf-8").splitlines()[:640])
    dev = write(tmp_path / "dev.csv", (stsb / "sts-dev.csv").read_text(encoding="utf-8").splitlines()[::5])
    cfg = compose_train(
        "data=sts",
        f"data.train={train}",
        f"data.eval={dev}",
        f"backbone.path={minilm_2layer_dir}",
        "backbone.max_length=48",
        "batch.size=16",
        "train.lr=1e-4",
        "eval.batch_size=128",
    )
    result = run(cfg, tmp_path / "run")
    before, after = result["before"]["spearman"], result["after"]["spearman"]
    assert after > before + 0.03, (before, after)
