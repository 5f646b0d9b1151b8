"""Embedding-space diagnostics against closed forms, and `embedtune diagnose` as a user runs it."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import embedtune

from embedtune.eval.diagnostics import alignment, diagnose, embedding_std, geometry, random_cosine, uniformity, verdict


def test_identical_vectors_have_uniformity_zero_and_are_collapsed():
    points = F.normalize(torch.ones(10, 8), dim=-1)
    numbers = diagnose(points[:5], points[5:])
    assert numbers["uniformity"] == pytest.approx(0.0, abs=1e-6)
    assert numbers["alignment"] == pytest.approx(0.0, abs=1e-6)
    assert numbers["embedding_std"] == pytest.approx(0.0, abs=1e-6)
    assert numbers["random_cosine"] == pytest.approx(1.0) and numbers["centroid_norm"] == pytest.approx(1.0)
    assert verdict(numbers).startswith("collapsed: all embeddings nearly identical")


def test_orthonormal_basis_closed_forms():
    # Positive pairs (e_i, e_{n+i}) of the 2n basis vectors of R^2n. Every two different
    # vectors are orthogonal: ||x - y||^2 = 2, so alignment = 2, uniformity = log exp(-2 * 2) = -4,
    # random cosine 0, positive cosine 0, gap 0. Each dimension holds one 1 among 2n values:
    # unbiased variance ((1 - 1/N)^2 + (N - 1)/N^2) / (N - 1) = 1/N, std x sqrt(N) = 1.
    # The mean vector is (1/N, ..., 1/N), of length 1/sqrt(N).
    n = 6
    basis = torch.eye(2 * n)
    numbers = diagnose(basis[:n], basis[n:])
    assert numbers["alignment"] == pytest.approx(2.0)
    assert numbers["uniformity"] == pytest.approx(-4.0)
    assert numbers["random_cosine"] == pytest.approx(0.0, abs=1e-12)
    assert numbers["embedding_std"] == pytest.approx(1.0)
    assert numbers["centroid_norm"] == pytest.approx(1 / math.sqrt(2 * n))
    assert numbers["positive_cosine"] == pytest.approx(0.0) and numbers["similarity_gap"] == pytest.approx(0.0)
    assert verdict(numbers) == "positives not separated: they score only +0.00 cosine above random pairs"


def test_alignment_uniformity_and_random_cosine_by_hand():
    theta = 0.3  # a positive pair at angle theta: ||x - y||^2 = 2 - 2 cos(theta)
    assert alignment(torch.tensor([[1.0, 0.0]]), torch.tensor([[math.cos(theta), math.sin(theta)]])) == pytest.approx(
        2 - 2 * math.cos(theta)
    )
    # points e1, e1, e2: pairs at squared distance 0, 2, 2; cosines 1, 0, 0
    points = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert uniformity(points) == pytest.approx(math.log((1 + 2 * math.exp(-4)) / 3))
    assert random_cosine(points) == pytest.approx(1 / 3)


def test_anisotropic_cloud_is_flagged_and_a_healthy_space_is_not():
    generator = torch.Generator().manual_seed(0)
    direction = F.normalize(torch.randn(64, generator=generator), dim=0)
    cone = F.normalize(
        direction + 0.5 * F.normalize(torch.randn(200, 64, generator=generator), dim=-1), dim=-1
    )  # cosine to each other about 0.8
    numbers = diagnose(cone[:100], cone[100:])
    assert 0.6 < numbers["random_cosine"] < 0.95
    assert verdict(numbers).startswith(f"anisotropic: random pairs average cosine {numbers['random_cosine']:.2f}")

    spread = F.normalize(torch.randn(100, 64, generator=generator), dim=-1)
    positives = F.normalize(spread + 0.3 * F.normalize(torch.randn(100, 64, generator=generator), dim=-1), dim=-1)
    numbers = diagnose(spread, positives)
    assert abs(numbers["random_cosine"]) < 0.1 and numbers["similarity_gap"] > 0.8 and 0.8 < numbers["embedding_std"] < 1.2
    assert verdict(numbers) == "healthy"


def test_geometry_keeps_the_training_log_definitions():
    generator = torch.Generator().manual_seed(1)
    queries = F.normalize(torch.randn(4, 8, generator=generator), dim=-1)
    documents = F.normalize(torch.randn(8, 8, generator=generator), dim=-1)  # 4 positives, then 4 hard negatives
    scores = queries @ documents[:4].T
    expected_gap = scores.diagonal().mean() - (scores.sum() - scores.diagonal().sum()) / 12
    result = geometry(queries, documents)
    assert result["similarity_gap"] == pytest.approx(expected_gap.item(), abs=1e-6)
    assert result["embedding_std"] == pytest.approx(documents.std(dim=0).mean().item() * math.sqrt(8), abs=1e-6)
    assert embedding_std(documents) == result["embedding_std"]


def test_diagnose_command_writes_numbers_verdicts_and_plots(tiny_bert_dir, tmp_path):
    pytest.importorskip("matplotlib")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"query": f"what is item {i}", "positive": f"item {i} is thing {i}", "topic": f"t{i % 3}"}) + "\n" for i in range(30)
        )
    )
    sts = tmp_path / "sts.tsv"
    sts.write_text("".join(f"g\ts\t2012\t{i}\t{i % 5}\ta cat number {i}\ta dog number {i}\n" for i in range(20)))
    command = [
        "diagnose",
        "--model",
        str(tiny_bert_dir),
        "--data",
        str(pairs),
        str(sts),
        "--label-column",
        "topic",
        "--plots",
        "--out-dir",
        str(tmp_path / "d"),
    ]
    result = embedtune(*command)
    assert result.returncode == 0, result.stderr
    assert "geometry: pairs.jsonl (30 positive pairs)" in result.stdout and "uniform" in result.stdout
    rows = json.loads((tmp_path / "d" / "diagnostics.json").read_text())["rows"]
    assert [(row["task"], row["pairs"]) for row in rows] == [("retrieval", 30), ("sts", 8)]  # sts: gold score 3 or 4, the top quarter
    assert all(row["verdict"] and -4.1 < row["uniformity"] <= 0 for row in rows)
    for name in ("similarity_pairs.png", "similarity_sts.png", "pca.png"):
        assert (tmp_path / "d" / name).read_bytes().startswith(b"\x89PNG")


def test_eval_with_diagnose_gives_the_table_the_geometry_and_the_pictures_in_one_command(tiny_bert_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from embedtune.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"what is item {i}", "positive": f"item {i} is thing {i}"}) + "\n" for i in range(12)))
    main(
        [
            "eval",
            "--model",
            "all-MiniLM-L6-v2",
            str(tiny_bert_dir),
            "--data",
            str(pairs),
            "--max-length",
            "16",
            "--out",
            str(tmp_path / "eval.json"),
            "--diagnose",
            str(tmp_path / "d"),
        ]
    )
    out = capsys.readouterr().out
    assert "retrieval: pairs.jsonl" in out and "geometry: pairs.jsonl (12 positive pairs)" in out
    assert {row["model"] for row in json.loads((tmp_path / "eval.json").read_text())["rows"]} == {"all-MiniLM-L6-v2", str(tiny_bert_dir)}
    rows = json.loads((tmp_path / "d" / "diagnostics.json").read_text())["rows"]
    assert [row["model"] for row in rows] == ["all-MiniLM-L6-v2", str(tiny_bert_dir)]
    assert all(row["verdict"] and row["pairs"] == 12 for row in rows)
    for name in ("similarity_pairs.png", "pca.png"):
        assert (tmp_path / "d" / name).read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_bert_dir), "--probe", str(pairs), "--diagnose", str(tmp_path / "e")])
    assert capsys.readouterr().err.strip() == "embedtune eval: error: --diagnose needs --data (the pairs whose geometry to look at)"


def test_eval_dtype_reaches_every_model_it_loads_diagnose_included(tiny_bert_dir, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import embedtune.model
    from embedtune.cli import main

    loaded, load = [], embedtune.model.load_embedder
    monkeypatch.setattr(
        embedtune.model, "load_embedder", lambda *args, **kwargs: loaded.append(kwargs.get("dtype")) or load(*args, **kwargs)
    )
    monkeypatch.setattr(embedtune.model, "has_fast_bfloat16", lambda device: True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": f"what is item {i}", "positive": f"item {i} is thing {i}"}) + "\n" for i in range(12)))
    main(["eval", "--model", str(tiny_bert_dir), "--data", str(pairs), "--dtype", "auto", "--diagnose", str(tmp_path / "d")])
    assert loaded == ["bfloat16", "bfloat16"]  # eval's model, then diagnose's
    assert (tmp_path / "d" / "diagnostics.json").is_file()
