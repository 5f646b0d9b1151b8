"""Nothing a user has is lost: every command that writes checks its output path before it starts.

For each command and each way an output path can go wrong — it exists, it is one of the inputs,
it is a file where a folder goes (or the reverse), it lies under a file — the command must stop
with one line naming the option, exit 2, and leave every file as it was. "Under a file" stands in
for a read-only folder: run as root, permission bits do not stop writes, but no one can create a
file inside a file. The commands are run in-process, so every case costs milliseconds: all of
them stop before any model or data set is loaded.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from embedtune.cli import main

CASES = ("exists", "same as input", "wrong kind", "under a file")


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes, and every folder."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder" for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def world(tmp_path):
    """A user's folder: a pairs file, a BEIR folder, a finished-looking run, a plain file."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"q{i}", "positive": f"d{i}"}) + "\n" for i in range(4)))
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text('{"_id": "d1", "text": "doc"}\n')
    (beir / "queries.jsonl").write_text('{"_id": "q1", "text": "query"}\n')
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "train_log.jsonl").write_text('{"step": 1, "epoch": 1.0, "loss": 1.0, "lr": 0.1, "pairs_per_s": 1.0}\n')
    (run / "training_curves.png").write_bytes(b"the user's picture")
    (tmp_path / "notes.txt").write_text("the user's notes")
    return tmp_path


def outputs(world: Path, case: str) -> dict[str, tuple[list[str], str] | None]:
    """Per command: the arguments that point its output at ``case``, and the option the error
    must name (None where the case cannot arise for that command: see `COMBINATIONS`)."""
    pairs, notes, run = str(world / "pairs.jsonl"), str(world / "notes.txt"), world / "run"
    existing_file = {"exists": notes, "same as input": pairs, "wrong kind": str(world / "beir"), "under a file": f"{notes}/sub/out.json"}[
        case
    ]
    existing_folder = {"exists": str(run), "same as input": None, "wrong kind": notes, "under a file": f"{notes}/sub"}[case]
    model = ["--model", "all-MiniLM-L6-v2"]
    table = {
        "eval": ([*model, "--data", pairs, "--out", existing_file], "--out"),
        "mine": (
            [
                *model,
                "--data",
                pairs,
                "--out",
                {"exists": str(world / "mined.jsonl"), "wrong kind": str(world / "beir.jsonl")}.get(case, existing_file),
            ],
            "--out",
        ),
        "diagnose": ([*model, "--data", pairs, "--out-dir", existing_folder], "--out-dir")
        if existing_folder and case != "exists"
        else None,
        "report": ([str(run), "--out-dir", existing_folder], "--out-dir") if existing_folder and case != "exists" else None,
        "data": (["--out", existing_folder], "--out") if existing_folder and case != "exists" else None,
        "train": (["data=files", f"data.train={pairs}", f"output_dir={existing_folder or pairs}"], "output_dir"),
        "merge": (["--linear", str(run / "final"), str(run / "final"), "--out", existing_folder or str(run / "final")], "--out"),
    }
    if case == "wrong kind":
        (world / "beir.jsonl").mkdir()  # a folder named like the file mine would write
    (world / "mined.jsonl").write_text("the user's mined pairs\n")
    if case == "exists":  # what each command would write into an existing folder
        table["report"] = ([str(run)], "--out-dir")  # training_curves.png is there
        (world / "data-out").mkdir()
        (world / "data-out" / "train.jsonl").write_text("the user's pairs\n")
        table["data"] = (["--out", str(world / "data-out")], "--out")
        (world / "diag").mkdir()
        (world / "diag" / "diagnostics.json").write_text("{}")
        table["diagnose"] = ([*model, "--data", pairs, "--out-dir", str(world / "diag")], "--out-dir")
    return table


# The folders diagnose, report and data write into are never inputs of theirs.
COMBINATIONS = [(command, case) for command in ("eval", "mine", "diagnose", "report", "data", "train", "merge") for case in CASES
                if not (case == "same as input" and command in ("diagnose", "report", "data"))]  # fmt: skip


@pytest.mark.parametrize("command, case", COMBINATIONS)
def test_a_bad_output_path_stops_the_command_before_anything_is_written(world, command, case, capsys):
    args, option = outputs(world, case)[command]
    before = snapshot(world)
    with pytest.raises(SystemExit) as stopped:
        main([command, *args])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"embedtune {command}: error: {option}"), error
    expected = {
        "exists": ("exists", "holds"),
        "same as input": ("is also an input", "is a file"),
        "wrong kind": ("expected a", "is a file"),
        "under a file": ("is a file, not a folder",),
    }[case]
    assert any(words in error for words in expected), error
    assert snapshot(world) == before  # nothing written, nothing replaced


def test_overwrite_lets_an_existing_output_be_replaced(world, capsys):
    """With --overwrite the same arguments pass the check (and fail later, on the fake model)."""
    args = ["--model", str(world / "no-such-model"), "--data", str(world / "pairs.jsonl"), "--out", str(world / "notes.txt")]
    with pytest.raises(SystemExit):
        main(["eval", *args, "--overwrite"])
    assert "no such model folder" in capsys.readouterr().err


def test_train_into_a_finished_run_is_refused_unless_overwrite_or_resume(world, capsys):
    common = ["train", "data=files", f"data.train={world / 'pairs.jsonl'}", f"output_dir={world / 'run'}"]
    with pytest.raises(SystemExit):
        main(common)
    assert "holds an earlier run (final, train_log.jsonl): pass overwrite=true" in capsys.readouterr().err
    from embedtune.cli.train import check_overrides, parse_overrides

    for consent in ("overwrite=true", "resume=auto"):
        assert len(check_overrides(parse_overrides([*common[1:], consent]))) == 1  # accepted


def test_stale_temporary_siblings_of_dead_processes_are_cleared_by_the_next_writer(tmp_path):
    from embedtune.fileio import atomic_folder

    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    (tmp_path / f".model.tmp-{dead}").mkdir()
    (tmp_path / f".model.tmp-{dead}" / "weights").write_text("half")
    (tmp_path / f".other.tmp-{dead}").mkdir()  # another output's: not this writer's to clear
    with atomic_folder(tmp_path / "model") as folder:
        (folder / "weights").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".other.tmp-{dead}", "model"]


def test_a_folder_caught_between_its_two_renames_is_put_back(tmp_path):
    """A kill after `atomic_folder` moved the old version aside and before the new one arrived
    leaves only ``.NAME.old-PID``: the next writer restores it instead of deleting it."""
    from embedtune.fileio import clear_stale_siblings

    dead = 2**22 + 12345
    (tmp_path / f".model.old-{dead}").mkdir()
    (tmp_path / f".model.old-{dead}" / "weights").write_text("the last complete version")
    clear_stale_siblings(tmp_path / "model")
    assert (tmp_path / "model" / "weights").read_text() == "the last complete version"
