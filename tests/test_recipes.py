"""Every shipped recipe is a valid chain of commands: run each script with `embedtune` and
`accelerate` stubbed to record their arguments, then compose and validate every `train` call's
config and check every other command's flags against its parser. Nothing trains; seconds."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from embedtune.cli import main
from embedtune.cli.train import check_overrides, parse_overrides

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.sh"))
RECORDER = """#!{python}
import json, os, sys
args = sys.argv[1:]
if os.path.basename(sys.argv[0]) == "accelerate":  # accelerate launch [flags] -m embedtune CMD ...
    args = args[args.index("embedtune") + 1 :]
with open(os.environ["RECORD"], "a") as handle:
    handle.write(json.dumps(args) + "\\n")
"""
# What each recipe reads from the environment, and folders its later steps list.
ENVIRONMENT = {
    "MODEL": "/models/base",
    "WEAK_PAIRS": "/data/weak/*.jsonl",
    "SFT_PAIRS": "/data/sft.jsonl",
    "EVAL": "/data/beir",
    "GPUS": "8",
}


def recorded_calls(recipe: Path, tmp_path: Path) -> list[list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("embedtune", "accelerate"):
        stub = bin_dir / name
        stub.write_text(RECORDER.format(python=sys.executable))
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    for step in (100, 200, 300, 400):  # saved models a recipe may list for merging
        (work / "sft" / "models" / f"step-{step:05d}").mkdir(parents=True)
    record = tmp_path / "calls.jsonl"
    env = {**os.environ, **ENVIRONMENT, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RECORD": str(record)}
    result = subprocess.run(["bash", str(recipe), str(work)], cwd=recipe.parents[1], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in record.read_text().splitlines()]


def flags_of(command: str, capsys) -> set[str]:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return {word.strip("[],") for word in capsys.readouterr().out.split() if word.startswith(("--", "[--"))}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_recipe_commands_are_valid(recipe, tmp_path, capsys):
    calls = recorded_calls(recipe, tmp_path)
    assert {"train", "mine", "eval"} <= {call[0] for call in calls}, calls
    shutil.rmtree(tmp_path / "work")  # the stand-ins for later steps' inputs: each train call's folder is new
    for command, *args in calls:
        if command == "train":
            check_overrides(parse_overrides(args))  # one-line SystemExit on a bad key or value
        else:
            unknown = {arg.split("=")[0] for arg in args if arg.startswith("--")} - flags_of(command, capsys)
            assert not unknown, f"{recipe.name}: embedtune {command} has no {sorted(unknown)}"
