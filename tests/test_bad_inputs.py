"""Bad input gets one clear line naming the file, row or option at fault — never a traceback and
never silent acceptance. Each row of the table is a case a user met; the command runs in-process
and must stop with exit status 2 and the expected words on one line."""

from __future__ import annotations

import json
import math

import pytest
from hydra import compose, initialize_config_dir

from embedtune.cli import main
from embedtune.data.nli import load as load_nli
from embedtune.data.rows import load_pairs
from embedtune.errors import EmbedtuneError
from embedtune.fileio import json_text
from embedtune.training.config import config_dir
from embedtune.training.run import run


@pytest.fixture
def files(tmp_path):
    """Small inputs, each wrong in one way (and one right pairs file)."""

    def write(name: str, text: str | bytes):
        path = tmp_path / name
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
        return str(path)

    pairs = "".join(json.dumps({"query": f"question {i}", "positive": f"answer {i}"}) + "\n" for i in range(12))
    return {
        "pairs": write("pairs.jsonl", pairs),
        "one pair": write("one.jsonl", '{"query": "q", "positive": "d"}\n'),
        "string negatives": write("strneg.jsonl", '{"query": "q", "positive": "d", "negatives": "one negative"}\n'),
        "constant sts": write("sts.csv", "sentence1,sentence2,score\na,b,3\nc,d,3\ne,f,3\n"),
        "fake gguf": write("model.gguf", b"not a gguf file at all"),
        "json array": write("rows.json", '[\n  {"query": "a", "positive": "b"},\n  {"query": "c", "positive": d}\n]\n'),
        "folder": str(tmp_path),
        "missing": str(tmp_path / "no-such-model"),
    }


CASES = [
    # (a command with {input} placeholders, words its one-line error must hold)
    (["eval", "--model", "{missing}", "--data", "{pairs}"], "no-such-model: no such model folder or file"),
    (["eval", "--model", "{fake gguf}", "--data", "{pairs}"], "model.gguf: not a GGUF file"),
    (["eval", "--model", "{pairs}", "--data", "{pairs}"], "pairs.jsonl: is a file, expected a model folder"),
    (["eval", "--model", "all-MiniLM-L6-v2", "--data", "{pairs}", "--max-length", "0"], "--max-length must be >= 1, got 0"),
    (["eval", "--model", "all-MiniLM-L6-v2", "--data", "{pairs}", "--max-length", "-5"], "--max-length must be >= 1, got -5"),
    (["eval", "--model", "all-MiniLM-L6-v2", "--data", "{constant sts}"], "every gold score is 3, so no correlation with them is defined"),
    (["eval", "--model", "all-MiniLM-L6-v2", "--data", "{json array}"], "rows.json:3: invalid JSON (Expecting value at column 30)"),
    (
        ["diagnose", "--model", "all-MiniLM-L6-v2", "--data", "{one pair}"],
        "one.jsonl: 1 positive pair(s); the geometry of an embedding space needs at least 2",
    ),
    (["diagnose", "--model", "all-MiniLM-L6-v2", "--data", "{pairs}", "--max-length", "0"], "--max-length must be >= 1, got 0"),
    (["diagnose", "--model", "all-MiniLM-L6-v2", "--data", "{pairs}", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["eval", "--model", "all-MiniLM-L6-v2", "--data", "{pairs}", "--batch-size", "-2"], "--batch-size must be >= 1, got -2"),
    (
        ["mine", "--model", "all-MiniLM-L6-v2", "--data", "{pairs}", "--out", "{tmp}/m.jsonl", "--batch-size", "0"],
        "--batch-size must be >= 1, got 0",
    ),
    (
        ["train", "data=files", "data.train={pairs}", "train.scheduler=bogus", "output_dir={tmp}/r2"],
        "train.scheduler must be one of linear, cosine",
    ),
    (["train", "data=files", "data.train={pairs}", "overwrite=maybe", "output_dir={tmp}/r3"], "overwrite must be true or false"),
    (
        ["train", "data=files", "data.train={pairs}", "train.max_nonfinite_in_a_row=0", "output_dir={tmp}/r4"],
        "train.max_nonfinite_in_a_row must be an integer >= 1",
    ),
]


@pytest.mark.parametrize("args, words", CASES, ids=[words[:50] for _, words in CASES])
def test_bad_input_stops_with_one_line(files, tmp_path, args, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(_filled(args, files, tmp_path))
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and words in error, error
    assert not (tmp_path / "r2").exists() and not (tmp_path / "r3").exists()  # nothing written


def _filled(args: list[str], files: dict[str, str], tmp_path) -> list[str]:
    """``args`` with each ``{name}`` replaced by that input's path (``{tmp}``: the test's folder)."""
    filled = []
    for arg in args:
        for key, value in {**files, "tmp": str(tmp_path)}.items():
            arg = arg.replace("{" + key + "}", value)
        filled.append(arg)
    return filled


def test_a_bare_string_of_negatives_is_refused_not_taken_as_a_list(files):
    with pytest.raises(EmbedtuneError, match=r"strneg.jsonl:1: column 'negatives' must be a list of strings, got one string"):
        load_pairs(files["string negatives"])


def test_a_folder_given_as_a_data_file_says_it_is_a_folder(files):
    with pytest.raises(EmbedtuneError, match="is a folder, expected a file"):
        load_pairs(files["folder"])


def test_contradictions_whose_premise_has_no_entailment_are_counted_as_dropped(tmp_path, capsys):
    rows = [("p1", "e1", "entailment"), ("p1", "c1", "contradiction"), ("p2", "c2", "contradiction"), ("p2", "c3", "contradiction")]
    path = tmp_path / "nli.jsonl"
    path.write_text("".join(json.dumps({"sentence1": p, "sentence2": h, "gold_label": label}) + "\n" for p, h, label in rows))
    data = load_nli(str(path))
    assert [(pair.query, pair.positive, pair.negatives) for pair in data.train] == [("p1", "e1", ("c1",))]
    assert "2 hard negatives whose premise has no entailment" in capsys.readouterr().err


def test_nan_metrics_are_written_as_null_json():
    text = json_text({"after": {"spearman": math.nan, "pearson": 0.5}, "rows": [{"x": math.inf}]})
    assert json.loads(text) == {"after": {"spearman": None, "pearson": 0.5}, "rows": [{"x": None}]}
    assert "NaN" not in text and "Infinity" not in text


def compose_tiny(model_dir, pairs, *extra):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                "data=files",
                f"data.train={pairs}",
                f"backbone.path={model_dir}",
                "backbone.max_length=16",
                "batch.size=4",
                "negatives.per_query=0",
                "eval.before=false",
                *extra,
            ],
        )


def test_a_run_whose_every_step_has_learning_rate_zero_is_refused(tiny_bert_dir, files, tmp_path):
    """train.max_steps=1 with warm-up: the only step would run at lr 0 and save the base model as
    'fine-tuned'."""
    with pytest.raises(EmbedtuneError, match=r"gives every step a learning rate of 0: nothing would train"):
        run(compose_tiny(tiny_bert_dir, files["pairs"], "train.max_steps=1"), tmp_path)
    run(compose_tiny(tiny_bert_dir, files["pairs"], "train.max_steps=1", "train.warmup_ratio=0"), tmp_path / "no-warmup")


def test_resume_auto_without_a_state_says_it_starts_from_the_beginning(tiny_bert_dir, files, tmp_path, capsys):
    run(compose_tiny(tiny_bert_dir, files["pairs"], "train.max_steps=2", "resume=auto"), tmp_path)
    assert f"resume=auto: no saved state in {tmp_path / 'state'}, starting from the beginning" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.bin", "trainer_state.json"])
def test_a_damaged_latest_state_falls_back_to_the_one_before(tiny_bert_dir, files, tmp_path, damaged, capsys):
    common = ["train.max_steps=6", "save.state_every_n_steps=2", "train.log_every=1"]
    run(compose_tiny(tiny_bert_dir, files["pairs"], *common), tmp_path)
    latest = tmp_path / "state" / "step-00004"
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["step-00002", "step-00004"]
    (latest / damaged).write_bytes((latest / damaged).read_bytes()[:40])  # cut short, as by a full disk
    capsys.readouterr()
    run(compose_tiny(tiny_bert_dir, files["pairs"], *common, "resume=auto"), tmp_path)
    err = " ".join(capsys.readouterr().err.split())
    assert f"the saved state {latest} is damaged" in err and "trying the one before it" in err
    assert f"resumed at step 2 from {tmp_path / 'state' / 'step-00002'}" in err


def test_when_every_state_is_damaged_resume_stops_naming_them(tiny_bert_dir, files, tmp_path):
    run(compose_tiny(tiny_bert_dir, files["pairs"], "train.max_steps=4", "save.state_every_n_steps=2"), tmp_path)
    (tmp_path / "state" / "step-00002" / "model.safetensors").write_bytes(b"")
    with pytest.raises(EmbedtuneError, match=r"no saved state could be loaded: .*step-00002"):
        run(compose_tiny(tiny_bert_dir, files["pairs"], "train.max_steps=4", f"resume={tmp_path / 'state' / 'step-00002'}"), tmp_path)
