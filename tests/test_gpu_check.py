"""scripts/gpu_check.sh in its CPU mode (tiny models, 2-3 steps each): every step runs and
writes the result files the GPU run will bring back; the time budget bounds it."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
STEPS = ["bisect", "decoder", "bench", "default", "recipe", "ddp", "fsdp"]
RESULT_FILES = {
    "summary.json",
    "gpu_check.log",
    "nan_bisect.json",
    "bench.json",
    "decoder_train_log.jsonl",
    "default_eval.json",
    "recipe_eval.json",
}


def run_check(out: Path, data: Path, **environment) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_TINY": "1", "GPU_CHECK_DATA": str(data), **environment}
    return subprocess.run(["bash", str(SCRIPT)], check=False, capture_output=True, text=True, env=env, timeout=1500)


def test_a_spent_time_budget_skips_every_step_and_still_writes_the_summary(shared_data, tmp_path):
    done = run_check(tmp_path / "out", shared_data, GPU_CHECK_BUDGET_S="0")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [step["step"] for step in summary["steps"]] == STEPS
    statuses = {step["step"]: step["status"] for step in summary["steps"]}
    assert statuses.pop("fsdp") in ("skipped (FSDP needs a GPU)", "skipped (time budget spent)")
    assert set(statuses.values()) == {"skipped (time budget spent)"} and not summary["all_ok"]


@pytest.mark.slow
def test_tiny_check_runs_every_step_and_writes_its_result_files(shared_data, tmp_path):
    """About 4 minutes on 2 CPU cores."""
    out = tmp_path / "out"
    done = run_check(out, shared_data)
    assert done.returncode == 0, done.stderr[-2000:]
    files = {path.name for path in out.iterdir()}
    assert files == RESULT_FILES and len(files) <= 8  # the device tool brings back at most 8 files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in files)

    statuses = {step["step"]: step["status"] for step in json.loads((out / "summary.json").read_text())["steps"]}
    assert list(statuses) == STEPS
    assert statuses.pop("fsdp") == "skipped (FSDP needs a GPU)"  # accelerate's FSDP plugin refuses a CPU
    assert set(statuses.values()) == {"ok"}, statuses

    bisect = json.loads((out / "nan_bisect.json").read_text())
    assert {"reported", "padding_right", "fp32", "gradcache_off", "checkpointing_off", "backend_math", "backend_cudnn"} <= set(
        bisect["variants"]
    )
    assert {"reported", "padding_right", "fp32", "backend_math"} <= set(bisect["verdict"]["finite"])  # a CPU stays finite, as reported
    assert "backend_cudnn" in bisect["verdict"]["could_not_run"]  # no cuDNN on a CPU
    left = next(record for record in bisect["kernels"] if record["padding"] == "left" and record["width"] == 64)
    assert left["empty_rows"] > 0 and left["math"]["out_empty_rows"] == "zeros"  # CPU math writes zeros for empty rows

    losses = [json.loads(line)["loss"] for line in (out / "decoder_train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and losses[-1] < losses[0]
    decoder = json.loads((out / "bench.json").read_text())["gpu-decoder"]
    assert decoder["embedtune"]["finite"] and decoder["sentence-transformers"]["finite"]
    assert json.loads((out / "default_eval.json").read_text())["after"]["ndcg@10"] > 0
    models = [row["model"] for row in json.loads((out / "recipe_eval.json").read_text())["rows"]]
    for stage in ("/pretrain/final", "/sft/models/step-", "/sft/final", "/merged"):  # every stage evaluated
        assert any(stage in model for model in models), (stage, models)
