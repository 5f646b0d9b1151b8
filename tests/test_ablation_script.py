"""scripts/ablation.py with embedtune replaced by a fake that writes each command's outputs: which
commands each arm runs, that the table is the mean ± std of the runs' scores, and that a rerun
of a finished ablation runs nothing."""

import importlib.util
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablation.py"
SCORES = {"sft": [0.60, 0.62, 0.61], "filtered": [0.64, 0.66, 0.65], "pretrain": [0.63, 0.63, 0.64]}


def load_script():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ablation"] = module  # its dataclass resolves annotations through sys.modules
    spec.loader.exec_module(module)
    return module


class FakeEmbedtune:
    """Stands in for `subprocess.run([python, -m, embedtune, ...])`: records the arguments and
    writes what the real command would (eval.json with a known score, the mined file, ...)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, command, check, env):
        args = command[3:]
        self.calls.append(args)
        flags = dict(zip(args, args[1:]))
        overrides = dict(arg.split("=", 1) for arg in args if "=" in arg and not arg.startswith("-"))
        if args[0] == "data":
            (Path(flags["--out"]) / "eval").mkdir(parents=True)
            (Path(flags["--out"]) / "train.jsonl").write_text("{}\n")
        elif args[0] == "mine":
            Path(flags["--out"]).write_text("{}\n")
        elif args[0] == "merge":
            Path(flags["--out"]).mkdir()
        elif args[0] == "train":
            out = Path(overrides["output_dir"])
            arm, seed = out.name.rsplit("-s", 1)
            score = SCORES.get(arm, [0.5] * 3)[int(seed) - 1]
            out.mkdir(parents=True)
            (out / "eval.json").write_text(json.dumps({"after": {"ndcg@10": score}}))
        elif args[0] == "eval":
            metric = "spearman" if flags["--data"].endswith(".csv") else "ndcg@10"
            Path(flags["--out"]).write_text(json.dumps({metric: 0.8 if metric == "spearman" else 0.7}))
        return subprocess.CompletedProcess(command, 0)


def run_ablation(monkeypatch, tmp_path, *arms: str) -> FakeEmbedtune:
    module = load_script()
    fake = FakeEmbedtune()
    monkeypatch.setattr(module.subprocess, "run", fake)
    argv = ["ablation.py", "--work", str(tmp_path / "work"), "--arms", *arms, "--sts", "sts-dev.csv", "--data-dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    return fake


def test_each_arm_runs_its_commands_and_the_table_is_mean_and_std_over_seeds(monkeypatch, tmp_path):
    fake = run_ablation(monkeypatch, tmp_path, "base", "sft", "filtered", "pretrain", "soup")
    trains = {Path(dict(a.split("=", 1) for a in call if "=" in a)["output_dir"]).name: call for call in fake.calls if call[0] == "train"}
    arms = ("sft", "filtered", "pretrain", "pretrain-stage1")  # pretrain-stage1-sN: the pretrain arm's weak-pair stage
    assert sorted(trains) == sorted(f"{arm}-s{seed}" for arm in arms for seed in (1, 2, 3))
    assert "stage=pretrain" in trains["pretrain-stage1-s1"] and "stage=sft" in trains["pretrain-s1"]
    assert "negatives.per_query=0" in trains["sft-s2"] and "negatives.per_query=1" in trains["filtered-s2"]
    assert f"data.train={tmp_path / 'work' / 'mined-filtered.jsonl'}" in trains["pretrain-s3"]
    assert "backbone.path=" + str(tmp_path / "work" / "pretrain-stage1-s3" / "final") in trains["pretrain-s3"]
    mines = [call for call in fake.calls if call[0] == "mine"]
    assert len(mines) == 1 and "--relative-margin" in mines[0]  # mined once, shared by filtered and pretrain
    (merge,) = [call for call in fake.calls if call[0] == "merge"]
    assert merge[1:5] == ["--linear", *(str(tmp_path / "work" / f"filtered-s{seed}" / "final") for seed in (1, 2, 3))]

    table = (tmp_path / "work" / "ablation.md").read_text()
    for arm, scores in SCORES.items():
        mean, std = statistics.mean(scores), statistics.stdev(scores)
        change = "" if arm == "sft" else f" {mean - statistics.mean(SCORES['sft']):+.4f} |"
        assert f"| 3 | {mean:.4f} ± {std:.4f} |{change}" in table
    assert table.count("| 0.8000 |") == 5  # STS for base, soup and each arm's first seed


def test_a_finished_ablation_reruns_nothing(monkeypatch, tmp_path):
    run_ablation(monkeypatch, tmp_path, "sft", "filtered")
    first = (tmp_path / "work" / "ablation.md").read_text()
    assert run_ablation(monkeypatch, tmp_path, "sft", "filtered").calls == []
    assert (tmp_path / "work" / "ablation.md").read_text() == first


@pytest.mark.parametrize("arm", ["mined", "bm25", "hybrid"])
def test_mining_arms_use_their_ranking_and_filter(monkeypatch, tmp_path, arm):
    fake = run_ablation(monkeypatch, tmp_path, arm)
    (mine,) = [call for call in fake.calls if call[0] == "mine"]
    method, filters = {
        "mined": ("dense", ["--margin=-inf"]),
        "bm25": ("bm25", ["--relative-margin", "0.05", "--drop-short"]),
        "hybrid": ("hybrid", ["--relative-margin", "0.05", "--drop-short"]),
    }[arm]
    assert mine[mine.index("--method") + 1] == method and mine[-len(filters) :] == filters


def test_a_failing_command_stops_the_ablation_with_one_line(monkeypatch, tmp_path):
    module = load_script()
    monkeypatch.setattr(module.subprocess, "run", lambda command, check, env: subprocess.CompletedProcess(command, 2))
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--work", str(tmp_path / "work"), "--arms", "sft"])
    with pytest.raises(SystemExit, match=r"^ablation: data failed \(exit 2\); its message is above$"):
        module.main()


def test_stdlib_mines_among_the_training_positives(monkeypatch, tmp_path):
    module = load_script()
    fake = FakeEmbedtune()
    monkeypatch.setattr(module.subprocess, "run", fake)
    monkeypatch.setattr(
        sys, "argv", ["ablation.py", "--work", str(tmp_path / "work"), "--data", "stdlib", "--arms", "filtered", "--seeds", "1"]
    )
    module.main()
    (split,) = [call for call in fake.calls if call[0] == "data"]
    (mine,) = [call for call in fake.calls if call[0] == "mine"]
    assert "--beir" not in split and "--corpus" not in mine  # no corpus: `embedtune mine` searches the positives


def test_synth_arm_pretrains_on_the_synthetic_pairs_with_the_weak_stages_budget(monkeypatch, tmp_path):
    module = load_script()
    fake = FakeEmbedtune()
    monkeypatch.setattr(module.subprocess, "run", fake)
    argv = ["ablation.py", "--work", str(tmp_path / "work"), "--arms", "pretrain", "synth", "--seeds", "1", "--synth", "synth.jsonl",
            "--pretrain-steps", "7", "--data-dir", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    trains = {Path(dict(a.split("=", 1) for a in call if "=" in a)["output_dir"]).name: call for call in fake.calls if call[0] == "train"}
    assert sorted(trains) == ["pretrain-s1", "pretrain-stage1-s1", "synth-s1", "synth-stage1-s1"]
    assert "data=weak" in trains["pretrain-stage1-s1"] and "data.train=synth.jsonl" in trains["synth-stage1-s1"]
    assert all("train.max_steps=7" in trains[f"{arm}-stage1-s1"] for arm in ("pretrain", "synth"))
    assert "backbone.path=" + str(tmp_path / "work" / "synth-stage1-s1" / "final") in trains["synth-s1"]
    assert "filtered, after pre-training on synthetic queries" in (tmp_path / "work" / "ablation.md").read_text()


def test_synth_arm_without_its_pairs_file_is_refused(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "argv", ["ablation.py", "--work", str(tmp_path / "work"), "--arms", "synth"])
    with pytest.raises(SystemExit):
        load_script().main()
    assert "the synth arm needs --synth PAIRS_FILE" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
