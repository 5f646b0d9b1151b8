"""Pictures are written, non-empty PNGs; PCA by hand; `embedtune report` on a run and a sweep."""

import json

import numpy as np
import pytest

from embedtune.cli import main

pytest.importorskip("matplotlib")  # pictures are an optional extra

from embedtune.cli.report import sweep_overrides  # noqa: E402
from embedtune.eval import plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.is_file() and path.stat().st_size > 2000 and path.read_bytes().startswith(PNG)


def test_pca_of_points_on_a_line_is_the_position_along_it():
    direction = np.array([1.0, 2.0, 2.0]) / 3
    positions = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    projected, share = plots.pca_2d(positions[:, None] * direction + np.array([5.0, 0.0, 1.0]))
    assert share[0] == pytest.approx(1.0) and share[1] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.abs(projected[:, 0]), np.abs(positions)) and np.allclose(projected[:, 1], 0, atol=1e-12)
    assert np.sign(projected[0, 0]) == -np.sign(projected[-1, 0])


def test_every_plot_writes_a_png(tmp_path):
    generator = np.random.default_rng(0)
    histograms = {
        "base": (generator.normal(0.6, 0.1, 50), generator.normal(0.5, 0.1, 500)),
        "tuned": (generator.normal(0.8, 0.1, 50), generator.normal(0.1, 0.1, 500)),
    }
    assert is_png(plots.similarity_histograms(histograms, tmp_path / "hist.png", "positive vs random pairs"))
    points = generator.normal(size=(40, 16))
    assert is_png(plots.pca_scatter({"base": points, "tuned": points * 2}, ["a", "b"] * 20, tmp_path / "pca.png", "PCA"))
    log = [
        {"step": s, "loss": 2 / s, "lr": 1e-5, "pairs_per_s": 30.0, "embedding_std": 0.9, "similarity_gap": 0.1 * s} for s in range(1, 6)
    ]
    assert is_png(plots.training_curves({"run": log}, tmp_path / "curves.png", "training"))
    rows = [
        {"data": "x", "name": "x", "task": "sts", "model": m, "dim": d, "spearman": 0.8 - 0.1 / d - (m == "b") * 0.1}
        for m in "ab"
        for d in (64, 128, 384)
    ]
    assert is_png(plots.quality_vs_dims(rows, tmp_path / "dims.png"))
    assert is_png(
        plots.quality_vs_value(["0.02", "0.05", "0.1"], [0.61, 0.65, 0.63], tmp_path / "sweep.png", "loss.temperature", "ndcg@10")
    )
    assert is_png(plots.quality_vs_value(["a=1,b=2", "a=2,b=2"], [0.6, 0.5], tmp_path / "sweep2.png", "run", "ndcg@10"))


def test_sweep_folder_names_parse_into_overrides():
    assert sweep_overrides("3_loss.temperature=0.05") == {"loss.temperature": "0.05"}
    assert sweep_overrides("0_mrl.dims=[64,128],train.lr=1e-5") == {"mrl.dims": "[64,128]", "train.lr": "1e-5"}
    assert sweep_overrides("final") == {"run": "final"}


def write_run(folder, temperature, after, losses):
    folder.mkdir(parents=True)
    metrics = lambda value: {"ndcg@10": value, "mrr@10": value - 0.05, "recall@10": value + 0.1}  # noqa: E731
    (folder / "eval.json").write_text(
        json.dumps({"data": "toy/test", "before": metrics(0.5), "after": metrics(after), "steps": len(losses)})
    )
    records = [
        {
            "step": i + 1,
            "loss": loss,
            "lr": 1e-5,
            "pairs_per_s": 10.0,
            "embedding_std": 0.9,
            "similarity_gap": 0.3,
            "temperature": temperature,
        }
        for i, loss in enumerate(losses)
    ]
    (folder / "train_log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    curve = [{"step": 0, **metrics(0.5)}, {"step": len(losses), **metrics(after)}]  # eval.every_n_steps's eval_log.jsonl
    (folder / "eval_log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in curve))


def test_report_of_a_run_draws_curves_and_prints_before_after(tmp_path, capsys):
    write_run(tmp_path / "sft", 0.05, 0.6, [2.0, 1.5, 1.2])
    main(["report", str(tmp_path / "sft")])
    out = capsys.readouterr().out
    assert "3 log records, last at step 3" in out and "fine-tuned" in out and "+0.1000" in out
    assert is_png(tmp_path / "sft" / "training_curves.png")


def test_report_of_a_sweep_ranks_runs_and_draws_quality_vs_value(tmp_path, capsys):
    sweep = tmp_path / "sft-sweep"
    for number, (temperature, after) in enumerate([(0.02, 0.61), (0.05, 0.66), (0.1, 0.64)]):
        write_run(sweep / f"{number}_loss.temperature={temperature}", temperature, after, [2.0, 1.0 + temperature])
    main(["report", str(sweep), "--out-dir", str(tmp_path / "pictures")])
    out = capsys.readouterr().out
    assert "best: 1_loss.temperature=0.05 (ndcg@10 0.6600)" in out
    table_rows = [line for line in out.splitlines() if "0.6" in line and "│" in line]
    assert [row.split("│")[2].strip() for row in table_rows] == ["0.05", "0.1", "0.02"]  # best first
    assert is_png(tmp_path / "pictures" / "sweep.png") and is_png(tmp_path / "pictures" / "training_curves.png")


def test_report_of_an_sts_sweep_ranks_by_spearman(tmp_path, capsys):
    sweep = tmp_path / "sts-sweep"
    for number, (lr, spearman) in enumerate([("1e-5", 0.871), ("2e-5", 0.876)]):
        folder = sweep / f"{number}_train.lr={lr}"
        folder.mkdir(parents=True)
        scores = lambda value: {"spearman": value, "pearson": value - 0.01}  # noqa: E731
        (folder / "eval.json").write_text(
            json.dumps({"data": "sts-dev.csv", "before": scores(0.867), "after": scores(spearman), "steps": 2})
        )
    main(["report", str(sweep), "--out-dir", str(tmp_path / "pictures")])
    out = capsys.readouterr().out
    assert "best: 1_train.lr=2e-5 (spearman 0.8760)" in out and "+0.0090" in out
    assert is_png(tmp_path / "pictures" / "sweep.png")


def test_report_of_a_folder_without_runs_fails_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert (
        capsys.readouterr().err.strip()
        == f"embedtune report: error: {tmp_path}: neither a run folder (train_log.jsonl) nor a sweep folder (*/eval.json)"
    )
