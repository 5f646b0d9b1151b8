"""`embedtune synth`: a tiny random chat LM (built in code, no download) writes the pairs. Same seed,
same file; a run killed after some batches and resumed ends with the rows of an uninterrupted run;
the consistency filter keeps exactly the queries whose source ranks within k (against a ranking
computed by hand); the output reads back as `data=files` pairs; bad inputs stop in one line."""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from helpers import TINY_DECODER_SHAPE, chatml_bpe_tokenizer, embedtune

from embedtune.cli import main
from embedtune.data.files import load as load_files_preset
from embedtune.data.pair_stream import load as load_stream_preset
from embedtune.errors import EmbedtuneError
from embedtune.synth.consistency import consistency_filter, source_ranks
from embedtune.synth.corpus import load_documents, sample_documents
from embedtune.synth.generate import Sampling, batch_seed, load_generator, resolve_generator
from embedtune.synth.run import OutputFiles, plan, read_rows, start, synthesize
from embedtune.synth.templates import TEMPLATES, clean, leading_passage

DOCUMENTS = [
    f"Document {i}: {text}"
    for i, text in enumerate(
        [
            "Coral reefs lose cover after marine heatwaves. Small colonies decline most.",
            "Vitamin D given once a year in a high dose raised the rate of falls.",
            "Sorted returns a new list while list sort works in place.",
            "Heavy rain flooded the roads of the city centre on Monday.",
            "The committee postponed its decision until more data is in.",
            "Mice lacking the gene grew larger hearts and lived shorter lives.",
            "A new telescope measured the expansion rate of the universe.",
        ]
    )
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_lm(tmp_path_factory):
    """A random 2-layer Qwen3 causal LM with a byte-level BPE tokenizer and a ChatML template. A
    fifth of its vocabulary ends a generation (several end tokens, as Llama 3 has), so that random
    weights write answers of a few tokens that end, rather than only cut-off ones."""
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    folder = tmp_path_factory.mktemp("tiny-chat-lm")
    tokenizer = chatml_bpe_tokenizer([*DOCUMENTS, *(t.instruction for t in TEMPLATES.values())])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    config = Qwen3Config(vocab_size=tokenizer.get_vocab_size(), **{**TINY_DECODER_SHAPE, "max_position_embeddings": 1024})
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = [fast.eos_token_id, *range(100, tokenizer.get_vocab_size(), 5)]
    model.save_pretrained(folder)
    return folder


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n" for i, text in enumerate(DOCUMENTS)))
    return path


def run_synth(tiny_chat_lm, corpus_file, out, *extra):
    result = embedtune(
        "synth", "--corpus", str(corpus_file), "--model", str(tiny_chat_lm), "--out", str(out), "--batch-size", "3",
        "--max-new-tokens", "8", "--templates", "query", "paraphrase", *extra,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


# --- the consistency filter: exact, against a ranking by hand -----------------------------------


def test_filter_keeps_exactly_the_queries_whose_source_ranks_within_k():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(50, 8)).astype(np.float32)
    queries = rng.normal(size=(30, 8)).astype(np.float32)
    sources = rng.integers(0, 50, size=30)
    for k in (1, 5, 10, 50):
        kept, ranks = consistency_filter(queries, corpus, sources, k)
        for query, source, rank, keep in zip(queries, sources, ranks, kept):
            order = sorted(range(50), key=lambda d: (-float(corpus[d] @ query), d))  # best first, ties by corpus order
            assert rank == order.index(source) + 1
            assert keep == (order.index(source) < k)


def test_ties_rank_in_corpus_order():
    corpus = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    query = np.array([[1.0, 0.0]])
    assert source_ranks(query, corpus, np.array([0])).tolist() == [1]
    assert source_ranks(query, corpus, np.array([1])).tolist() == [2]  # its twin comes first
    assert consistency_filter(query, corpus, np.array([1]), 1)[0].tolist() == [False]


# --- cleaning and templates ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "finished", "text", "reason"),
    [
        ('Query: "why do reefs lose coral"', True, "why do reefs lose coral", None),
        ("\n\nsearch query - **reef heatwaves**\nDocument: next one", False, "reef heatwaves", None),
        ("  \n ", True, "", "empty"),
        ("Here is a search query:\n\n'why do reefs lose coral'\nDocument:", False, "why do reefs lose coral", None),
        ("The document answers this query:", True, "", "empty"),
        ("why do reefs lose coral and what", False, "why do reefs lose coral and what", "unfinished"),
        (" ".join(["word"] * 40), True, " ".join(["word"] * 40), "too_long"),
        ("Document: Coral reefs lose cover", True, "Document: Coral reefs lose cover", "echo"),
        ("coral reefs lose cover after marine heatwaves", True, "coral reefs lose cover after marine heatwaves", "echo"),
        ("Why is the Great Barrier Reef losing coral?", True, "Why is the Great Barrier Reef losing coral?", "echo"),  # an example's answer
    ],
)
def test_clean_strips_labels_quotes_and_names_each_rejection(raw, finished, text, reason):
    source = "Coral reefs lose cover after marine heatwaves."
    assert clean(raw, TEMPLATES["query"], source, finished) == (text, reason)


def test_paraphrase_source_is_the_leading_sentences():
    text = "One two three. Four five six seven. Eight nine."
    assert leading_passage(text, 7) == "One two three. Four five six seven."
    assert leading_passage(text, 2) == "One two"  # a first sentence too long is cut
    assert TEMPLATES["paraphrase"].source(text) == text and TEMPLATES["query"].source(text) == text


def test_plain_prompt_without_a_chat_template_ends_with_the_answer_label():
    prompt = TEMPLATES["query"].plain_prompt("some document")
    assert prompt.startswith(TEMPLATES["query"].instruction) and prompt.endswith("Document: some document\nQuery:")
    assert prompt.count("Query:") == 3  # two examples, then the model's turn


def test_a_gguf_model_without_the_gguf_package_names_the_extra(tmp_path, monkeypatch):
    model = tmp_path / "lm.gguf"
    model.write_bytes(b"GGUF" + bytes(8))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real_find_spec(name, *a))
    with pytest.raises(EmbedtuneError, match=r"pip install 'embedtune\[synth\]'"):
        resolve_generator(str(model))


def test_batch_seeds_differ_per_batch_and_repeat_per_seed():
    assert batch_seed(0, 1) == batch_seed(0, 1) != batch_seed(0, 2) != batch_seed(1, 2)


# --- corpora in every layout ---------------------------------------------------------------------


def test_corpus_layouts(tmp_path, corpus_file):
    beir = tmp_path / "beir"
    beir.mkdir()
    shutil.copy(corpus_file, beir / "corpus.jsonl")
    texts = tmp_path / "notes"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("first note\n")
    (texts / "sub" / "b.md").write_text("# second note")
    (texts / "skip.pdf").write_text("not text")
    rows = tmp_path / "rows.csv"
    rows.write_text("body\nalpha\nbeta\n")
    assert [d.id for d in load_documents(str(beir))] == [f"d{i}" for i in range(len(DOCUMENTS))]
    assert load_documents(str(corpus_file))[0].text == DOCUMENTS[0]
    assert [(d.id, d.text) for d in load_documents(str(texts))] == [("a.txt", "first note"), ("sub/b.md", "# second note")]
    assert [(d.id, d.text) for d in load_documents(str(rows), "body")] == [("1", "alpha"), ("2", "beta")]
    documents = load_documents(str(corpus_file))
    assert sample_documents(documents, 3, 0) == sample_documents(documents, 3, 0) != sample_documents(documents, 3, 1)
    assert sample_documents(documents, 100, 0) == documents


# --- generation end to end -----------------------------------------------------------------------


def test_generation_repeats_under_a_seed_and_changes_with_it(tiny_chat_lm):
    generator = load_generator(str(tiny_chat_lm))
    prompts = [generator.prompt(TEMPLATES["query"], text, 32) for text in DOCUMENTS[:4]]
    assert all(prompt.startswith("<|im_start|>user") and prompt.endswith("<|im_start|>assistant\n") for prompt in prompts)
    first = generator.generate(prompts, Sampling(max_new_tokens=8, seed=3), batch=0)
    assert generator.generate(prompts, Sampling(max_new_tokens=8, seed=3), batch=0) == first
    assert generator.generate(prompts, Sampling(max_new_tokens=8, seed=4), batch=0) != first
    assert generator.generate(prompts, Sampling(max_new_tokens=8, seed=3), batch=1) != first


def test_same_seed_writes_the_same_file_and_the_pairs_load_as_data_files(tiny_chat_lm, corpus_file, tmp_path):
    result = run_synth(tiny_chat_lm, corpus_file, tmp_path / "a.jsonl", "--seed", "3")
    assert "kept share" in result.stdout and "filtered" not in result.stdout  # no filter model, no such column
    run_synth(tiny_chat_lm, corpus_file, tmp_path / "b.jsonl", "--seed", "3")
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    assert (tmp_path / "a.jsonl.rejected").read_text() == (tmp_path / "b.jsonl.rejected").read_text()
    rows, rejected = read_rows(tmp_path / "a.jsonl"), read_rows(tmp_path / "a.jsonl.rejected")
    assert rows, "the tiny LM should have finished some answers"
    assert len(rows) + len(rejected) == 2 * len(DOCUMENTS)  # every job is either a pair or a counted rejection
    assert {row["template"] for row in rows + rejected} == {"query", "paraphrase"}
    meta = json.loads((tmp_path / "a.jsonl.meta.json").read_text())
    assert meta["finished"] and meta["settings"]["sampling"]["seed"] == 3 and meta["settings"]["generator"] == str(tiny_chat_lm)
    assert sum(meta["counts"]["query"].values()) == len(DOCUMENTS)
    pairs = load_files_preset(str(tmp_path / "a.jsonl")).train
    assert [(p.query, p.positive) for p in pairs] == [(row["query"], row["positive"]) for row in rows]
    stream = load_stream_preset([{"path": str(tmp_path / "*.jsonl")}]).stream  # a glob of outputs takes no side file
    stream.batch_size = 1
    assert next(iter(stream))[0] == pairs[0]


def test_filter_ranks_are_recorded_and_match_the_table(tiny_chat_lm, corpus_file, tmp_path, tiny_bert_dir):
    result = run_synth(tiny_chat_lm, corpus_file, tmp_path / "f.jsonl", "--filter-model", str(tiny_bert_dir), "--filter-k", "2")
    rows, rejected = read_rows(tmp_path / "f.jsonl"), read_rows(tmp_path / "f.jsonl.rejected")
    assert all(1 <= row["rank"] <= 2 for row in rows)
    assert all(row["rank"] > 2 for row in rejected if row["reason"] == "filtered")
    counts = json.loads((tmp_path / "f.jsonl.meta.json").read_text())["counts"]
    assert counts["query"]["kept"] + counts["paraphrase"]["kept"] == len(rows)
    assert "filtered (rank > 2)" in result.stdout


def interrupted_run(generator, jobs, files, batches):
    """Run until ``batches`` batches are written, then stop as a kill would: mid-loop."""
    calls = []

    def advance(n):
        calls.append(n)
        if len(calls) == batches:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(generator, jobs, Sampling(max_new_tokens=8, seed=1), 3, files, set(), advance=advance)


def test_resume_after_a_kill_adds_no_duplicate_and_ends_as_an_uninterrupted_run(tiny_chat_lm, corpus_file, tmp_path):
    generator = load_generator(str(tiny_chat_lm))
    jobs = plan(load_documents(str(corpus_file)), [TEMPLATES["query"], TEMPLATES["paraphrase"]])
    sampling = Sampling(max_new_tokens=8, seed=1)
    whole = OutputFiles.of(tmp_path / "whole.jsonl")
    synthesize(generator, jobs, sampling, 3, whole, start(whole, {"s": 1}, resume=False))
    killed = OutputFiles.of(tmp_path / "killed.jsonl")
    start(killed, {"s": 1}, resume=False)
    interrupted_run(generator, jobs, killed, batches=2)
    with killed.pairs.open("a") as handle:
        handle.write('{"query": "torn')  # the kill came mid-line
    done = start(killed, {"s": 1}, resume=True)
    assert 0 < len(done) < len(jobs)
    synthesize(generator, jobs, sampling, 3, killed, done)
    for name in ("pairs", "rejected"):
        assert getattr(killed, name).read_text() == getattr(whole, name).read_text()


def test_resume_from_the_command_line_after_a_kill_mid_batch(tiny_chat_lm, corpus_file, tmp_path):
    run_synth(tiny_chat_lm, corpus_file, tmp_path / "whole.jsonl")
    whole = OutputFiles.of(tmp_path / "whole.jsonl")
    cut = OutputFiles.of(tmp_path / "cut.jsonl")
    pairs = whole.pairs.read_text().splitlines(keepends=True)
    rejected = whole.rejected.read_text().splitlines(keepends=True)
    cut.pairs.write_text("".join(pairs[:2]) + pairs[2][:10])  # some of a batch written, a torn line
    cut.rejected.write_text("".join(rejected[:1]))
    cut.meta.write_text(whole.meta.read_text())
    run_synth(tiny_chat_lm, corpus_file, cut.pairs, "--resume")
    assert sorted(cut.pairs.read_text().splitlines()) == sorted(line.rstrip("\n") for line in pairs)
    assert sorted(cut.rejected.read_text().splitlines()) == sorted(line.rstrip("\n") for line in rejected)


def test_resume_with_other_settings_is_refused_before_loading_anything(tiny_chat_lm, corpus_file, tmp_path, capsys):
    files = OutputFiles.of(tmp_path / "a.jsonl")
    files.pairs.write_text("")
    files.meta.write_text(json.dumps({"settings": {"generator": "another-lm"}}))
    with pytest.raises(SystemExit):
        main(
            [
                "synth",
                "--corpus",
                str(corpus_file),
                "--model",
                str(tiny_chat_lm),
                "--out",
                str(files.pairs),
                "--resume",
                "--batch-size",
                "4",
            ]
        )
    error = capsys.readouterr().err.strip()
    assert f"(generator: another-lm there, {tiny_chat_lm} now)" in error and "\n" not in error


def test_dtype_is_recorded_and_a_resume_under_another_is_refused(tiny_chat_lm, corpus_file, tmp_path, capsys):
    run_synth(tiny_chat_lm, corpus_file, tmp_path / "b.jsonl", "--dtype", "bfloat16")
    assert json.loads((tmp_path / "b.jsonl.meta.json").read_text())["settings"]["dtype"] == "bfloat16"
    assert read_rows(tmp_path / "b.jsonl") or read_rows(tmp_path / "b.jsonl.rejected")
    resume = ["--corpus", str(corpus_file), "--model", str(tiny_chat_lm), "--out", str(tmp_path / "b.jsonl"), "--resume"]
    with pytest.raises(SystemExit):
        main(["synth", *resume, "--dtype", "float32"])
    assert "(dtype: bfloat16 there, float32 now)" in capsys.readouterr().err


# --- bad inputs: one line, nothing written -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--corpus", "{tmp}/missing.jsonl"], "missing.jsonl: no such file"),
        (["--corpus", "{tmp}/empty.jsonl"], "empty.jsonl: no documents"),
        (["--corpus", "{tmp}/empty-folder"], "no corpus.jsonl and no .txt or .md files"),
        (["--templates", "qeury"], "--templates: unknown template 'qeury'"),
        (["--model", "{tmp}/no-model"], "--model: "),
        (["--model", "{tmp}/corpus.jsonl"], "--model: "),
        (["--filter-model", "{tmp}/no-model"], "--filter-model: "),
        (["--out", "{tmp}/corpus.jsonl"], "is also an input"),
        (["--out", "{tmp}/existing.jsonl"], "exists; pass --overwrite"),
        (["--out", "{tmp}/out.txt"], "--out must be a .jsonl file"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--max-docs", "0"], "--max-docs must be >= 1"),
        (["--filter-k", "0"], "--filter-k must be >= 1, got 0"),
        (["--resume", "--overwrite"], "pass one of them"),
        (["--out", "{tmp}/orphan.jsonl", "--resume"], "orphan.jsonl.meta.json is missing"),
    ],
)
def test_bad_input_stops_with_one_line_and_writes_nothing(tiny_chat_lm, corpus_file, tmp_path, args, words, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "existing.jsonl").write_text("{}\n")
    (tmp_path / "orphan.jsonl").write_text("{}\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    defaults = {"--corpus": str(corpus_file), "--model": str(tiny_chat_lm), "--out": str(tmp_path / "out.jsonl")}
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    for flag, value in defaults.items():
        if flag not in args:
            args += [flag, value]
    with pytest.raises(SystemExit) as stopped:
        main(["synth", *args])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and words in error, error
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
