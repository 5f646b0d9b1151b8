"""Linear probe (`embedtune eval --probe`): the logistic regression against a closed-form case, a
numpy gradient and scikit-learn; noisy accuracy against the Gaussian margin formula; the
stratified split; bad rows and classes; the command end to end on a tiny model."""

import json
import math

import numpy as np
import pytest
import torch

from embedtune.cli import main
from embedtune.errors import DataError
from embedtune.eval.probe import (
    DEFAULT_DRAWS,
    DEFAULT_NOISE,
    fit_logistic_regression,
    load_labelled,
    load_probe_set,
    noise_key,
    noisy_accuracy,
    predict,
    probe,
    stratified_split,
)


def phi(z: float) -> float:
    """The standard normal CDF."""
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def blobs(num_classes: int, per_class: int, dim: int, spread: float, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Gaussian clusters around orthogonal unit directions e_0 .. e_{C-1}, labelled c0, c1, ..."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.eye(num_classes, dim)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return centers[y] + spread * torch.randn(len(y), dim, generator=generator), [f"c{i}" for i in y.tolist()]


# --- the logistic regression ---------------------------------------------------------------


def test_fit_matches_the_closed_form_of_two_symmetric_points():
    # x = -1 (class 0), x = +1 (class 1). By symmetry bias = 0 and weight = [[-a], [a]]; each point's
    # loss is log(1 + exp(-2a)) and the penalty l2/(2n) * 2a^2 = l2 a^2 / 2 with n = 2, so the
    # optimum solves d/da: -2 / (1 + exp(2a)) + l2 * a = 0, found here by bisection.
    l2 = 0.5
    low, high = 0.0, 10.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if -2 / (1 + math.exp(2 * middle)) + l2 * middle < 0 else (low, middle)
    weight, bias = fit_logistic_regression(torch.tensor([[-1.0], [1.0]]), torch.tensor([0, 1]), 2, l2)
    assert weight[:, 0].tolist() == pytest.approx([-low, low], abs=1e-6)
    assert bias.tolist() == pytest.approx([0.0, 0.0], abs=1e-8)


def test_fit_is_a_stationary_point_of_the_objective_by_numpy_gradient():
    x, labels = blobs(3, 30, 8, spread=0.8)  # overlapping clusters: a finite, non-trivial optimum
    y = np.array([int(label[1:]) for label in labels])
    l2 = 2.0
    weight, bias = fit_logistic_regression(x, torch.tensor(y), 3, l2)
    X, W, b = x.double().numpy(), weight.numpy(), bias.numpy()
    logits = X @ W.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    residual = p - np.eye(3)[y]  # d(mean CE)/d(logits) * n
    n = len(y)
    assert np.abs(residual.T @ X / n + l2 / n * W).max() < 1e-7
    assert np.abs(residual.mean(axis=0)).max() < 1e-7


def test_fit_matches_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, labels = blobs(4, 25, 12, spread=0.7, seed=1)
    y = np.array([int(label[1:]) for label in labels])
    weight, bias = fit_logistic_regression(x, torch.tensor(y), 4, l2=0.5)
    reference = linear_model.LogisticRegression(C=2.0, tol=1e-12, max_iter=10_000).fit(x.double().numpy(), y)
    assert np.abs(reference.coef_ - weight.numpy()).max() < 1e-5
    assert np.abs(reference.intercept_ - bias.numpy()).max() < 1e-5
    assert predict(weight, bias, x).tolist() == reference.predict(x.double().numpy()).tolist()


def test_fit_leaves_torch_thread_count_as_it_found_it():
    before = torch.get_num_threads()
    fit_logistic_regression(torch.tensor([[-1.0], [1.0]]), torch.tensor([0, 1]), 2)  # small: runs on one thread
    assert torch.get_num_threads() == before


def test_fit_rejects_a_non_positive_penalty():
    with pytest.raises(ValueError, match="l2 must be > 0"):
        fit_logistic_regression(torch.zeros(2, 1), torch.tensor([0, 1]), 2, l2=0.0)


# --- accuracy, clean and noisy --------------------------------------------------------------


def test_separable_clusters_score_one_and_large_noise_falls_to_chance():
    x, labels = blobs(4, 40, 16, spread=0.02)
    train = [i for i in range(len(labels)) if i % 4]
    test = [i for i in range(len(labels)) if not i % 4]
    result = probe(x[train], [labels[i] for i in train], x[test], [labels[i] for i in test], noise=(0.01, 50.0), draws=20)
    assert result["accuracy"] == 1.0
    assert result[noise_key(0.01)] == 1.0
    assert result[noise_key(50.0)] == pytest.approx(0.25, abs=0.05)  # the noise swamps the signal: a guess among 4
    assert result["chance"] == 0.25 and result["majority"] == 0.25


@pytest.mark.parametrize("dim", [4, 512])
@pytest.mark.parametrize(("margin", "sigma"), [(0.1, 0.1), (0.1, 0.05), (0.05, 0.2)])
def test_noisy_accuracy_is_the_gaussian_tail_of_the_margin_whatever_the_dimension(dim, margin, sigma):
    # Points at distance `margin` on either side of the boundary x_0 = 0. Noise N(0, sigma^2) per
    # dimension, not re-normalised: only its x_0 component matters, so a point survives with
    # probability Phi(margin / sigma), in 4 dimensions as in 512.
    weight, bias = torch.zeros(2, dim, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    weight[0, 0], weight[1, 0] = -1.0, 1.0
    x = torch.zeros(200, dim)
    x[:100, 0], x[100:, 0] = -margin, margin
    y = torch.tensor([0] * 100 + [1] * 100)
    assert noisy_accuracy(weight, bias, x, y, sigma, draws=100, seed=3) == pytest.approx(phi(margin / sigma), abs=0.01)


def test_noisy_accuracy_is_seeded_and_shares_its_draws_across_sigmas():
    weight, bias = torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    x, y = torch.tensor([[-0.1, 0.0], [0.1, 0.0]] * 20), torch.tensor([0, 1] * 20)
    assert noisy_accuracy(weight, bias, x, y, 0.0) == 1.0
    assert noisy_accuracy(weight, bias, x, y, 0.1, seed=7) == noisy_accuracy(weight, bias, x, y, 0.1, seed=7)
    # the same standard-normal draws, scaled: a point flipped at sigma stays flipped at 2 sigma
    assert noisy_accuracy(weight, bias, x, y, 0.2, draws=50) <= noisy_accuracy(weight, bias, x, y, 0.1, draws=50)


def test_probe_normalises_embeddings_so_their_scale_does_not_matter():
    x, labels = blobs(3, 20, 8, spread=0.5)
    small = probe(x, labels, x[::3], labels[::3], noise=(0.1,))
    large = probe(100 * x, labels, 100 * x[::3], labels[::3], noise=(0.1,))
    assert small == pytest.approx(large)


# --- data ----------------------------------------------------------------------------------


def test_stratified_split_puts_every_class_on_both_sides_deterministically():
    labels = ["a"] * 2 + ["b"] * 5 + ["c"] * 10
    train, test = stratified_split(labels, 0.2, seed=0)
    assert sorted(train + test) == list(range(17)) and not set(train) & set(test)
    assert sorted(labels[i] for i in test) == ["a", "b", "c", "c"]  # round(0.4) -> at least 1, round(1), round(2)
    assert {labels[i] for i in train} == {"a", "b", "c"}
    assert stratified_split(labels, 0.2, seed=0) == (train, test)
    assert any(stratified_split(labels, 0.2, seed=seed)[1] != test for seed in range(1, 5))
    assert [labels[i] for i in stratified_split(labels, 0.9, seed=0)[0]] == ["a", "b", "c"]  # at most count - 1 to test


def test_labelled_rows_from_jsonl_csv_tsv_and_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text('{"text": "one", "label": "x"}\n{"text": "two", "label": 2}\n')
    (tmp_path / "a.csv").write_text('sentence,topic\none,x\n"two, too",2\n')
    (tmp_path / "a.tsv").write_text("sentence\ttopic\none\tx\ntwo\t2\n")
    pq.write_table(pa.table({"text": ["one", "two"], "label": [1.0, 2.0]}), tmp_path / "a.parquet")
    assert load_labelled(str(tmp_path / "a.jsonl")) == (["one", "two"], ["x", "2"])
    assert load_labelled(str(tmp_path / "a.csv"), "sentence", "topic") == (["one", "two, too"], ["x", "2"])
    assert load_labelled(str(tmp_path / "a.tsv"), "sentence", "topic") == (["one", "two"], ["x", "2"])
    assert load_labelled(str(tmp_path / "a.parquet")) == (["one", "two"], ["1", "2"])  # integer classes stored as floats


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"text": "b"}', r"probe.jsonl:2: missing column 'label' \(row has: text\)"),
        ('{"label": "x"}', r"probe.jsonl:2: missing column 'text' \(row has: label\)"),
        ('{"text": "  ", "label": "x"}', "probe.jsonl:2: column 'text' is empty"),
        ('{"text": 3, "label": "x"}', "probe.jsonl:2: column 'text' must be a string, got int"),
        ('{"text": "b", "label": ["x"]}', "probe.jsonl:2: column 'label' must be a string or a number, got list"),
        ('{"text": "b", "label": true}', "probe.jsonl:2: column 'label' must be a string or a number, got bool"),
        ('{"text": "b", "label": ""}', "probe.jsonl:2: column 'label' is empty"),
        ('{"text": "b", "label": null}', "probe.jsonl:2: column 'label' must be a string or a number, got NoneType"),
        ('{"text": "b", "label": NaN}', "probe.jsonl:2: column 'label' must be a string or a number, got NaN"),
    ],
)
def test_a_bad_row_names_file_and_line(tmp_path, row, message):
    path = tmp_path / "probe.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n' + row + "\n")
    with pytest.raises(DataError, match=message):
        load_labelled(str(path))


def test_probe_set_errors_name_the_class(tmp_path):
    lonely = tmp_path / "lonely.jsonl"
    lonely.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n" for i, label in enumerate("aab")))
    with pytest.raises(DataError, match=r"lonely.jsonl: class 'b' has a single example; every class needs at least 2"):
        load_probe_set(str(lonely))
    lonelier = tmp_path / "lonelier.jsonl"
    lonelier.write_text("".join(json.dumps({"text": f"t{i}", "label": label}) + "\n" for i, label in enumerate("aabc")))
    with pytest.raises(DataError, match=r"lonelier.jsonl: classes 'b', 'c' have a single example"):
        load_probe_set(str(lonelier))
    single = tmp_path / "single.jsonl"
    single.write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n')
    with pytest.raises(DataError, match=r"single.jsonl: a probe needs at least 2 classes, got 1"):
        load_probe_set(str(single))
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "c", "label": "a"}\n{"text": "d", "label": "z"}\n')
    with pytest.raises(DataError, match=r"test.jsonl: label 'z' does not occur in the training file"):
        load_probe_set(str(lonely), str(test))
    test.write_text('{"text": "c", "label": "a"}\n{"text": "d", "label": "b"}\n')  # a separate test file: one example is enough
    separate = load_probe_set(str(lonely), str(test))
    assert (separate.train_labels, separate.test_labels, separate.classes) == (["a", "a", "b"], ["a", "b"], ["a", "b"])


# --- the command ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Three easy classes of short texts, 10 each."""
    root = tmp_path_factory.mktemp("probe")
    topics = {"animal": "the cat and the dog", "money": "stock market prices", "code": "python function returns"}
    rows = [{"text": f"{words} {i}", "label": label} for label, words in topics.items() for i in range(10)]
    (root / "labelled.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "test.jsonl").write_text(
        "".join(json.dumps({"text": f"{words} again", "label": label}) + "\n" for label, words in topics.items())
    )
    (root / "pairs.jsonl").write_text(
        "".join(json.dumps({"query": f"what is {i}", "positive": f"{i} is a number"}) + "\n" for i in range(6))
    )
    return root


def test_eval_probe_without_data_writes_json_and_csv(tiny_bert_dir, labelled, tmp_path, capsys):
    out, table = tmp_path / "probe.json", tmp_path / "probe.csv"
    main(
        [
            "eval",
            "--model",
            str(tiny_bert_dir),
            str(tiny_bert_dir),
            "--probe",
            str(labelled / "labelled.jsonl"),
            "--out",
            str(out),
            "--csv",
            str(table),
        ]
    )
    printed = " ".join(capsys.readouterr().out.split())  # the table's title wraps at the terminal width
    assert "linear probe: labelled.jsonl (3 classes, 24 train / 6 test texts)" in printed and "noise σ=0.2" in printed
    result = json.loads(out.read_text())
    assert result["probe"] == {
        "train": str(labelled / "labelled.jsonl"),
        "test": None,
        "test_fraction": 0.2,
        "noise": [0.05, 0.1, 0.2],
        "draws": 10,
        "l2": 1.0,
        "seed": 0,
    }
    rows = result["rows"]
    assert [(row["task"], row["dim"]) for row in rows] == [("probe", 32), ("probe", 32)]
    assert rows[0] == rows[1]  # the same model twice: the same split, fit and noise
    for key in ("accuracy", "accuracy_sigma_0.05", "accuracy_sigma_0.1", "accuracy_sigma_0.2"):
        assert 0 <= rows[0][key] <= 1
    assert rows[0]["chance"] == pytest.approx(1 / 3) and rows[0]["majority"] == pytest.approx(1 / 3)
    assert (
        table.read_text().splitlines()[0]
        == "data,name,task,model,dim,accuracy,accuracy_sigma_0.05,accuracy_sigma_0.1,accuracy_sigma_0.2,majority,chance"
    )


def test_eval_probe_beside_data_with_a_separate_test_file(tiny_bert_dir, labelled, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "both.json", tmp_path / "dims.png"
    main(["eval", "--model", str(tiny_bert_dir), "--data", str(labelled / "pairs.jsonl"), "--probe", str(labelled / "labelled.jsonl"),
          "--probe-test", str(labelled / "test.jsonl"), "--probe-noise", "--dims", "32", "16", "--out", str(out), "--plot", str(plot)])  # fmt: skip
    assert plot.read_bytes().startswith(b"\x89PNG")  # a panel per data set, the probe's accuracy among them
    assert "linear probe: labelled.jsonl → test.jsonl (3 classes, 30 train / 3 test texts)" in " ".join(capsys.readouterr().out.split())
    rows = json.loads(out.read_text())["rows"]
    assert [(row["task"], row["dim"]) for row in rows] == [("retrieval", 32), ("retrieval", 16), ("probe", 32), ("probe", 16)]
    assert not any(key.startswith("accuracy_sigma") for key in rows[2])  # --probe-noise alone: clean accuracy only


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "embedtune eval: error: nothing to evaluate: give --data and/or --probe"),
        (["--probe", "x.jsonl", "--test-fraction", "1"], "embedtune eval: error: --test-fraction must be in (0, 1), got 1.0"),
        (["--probe", "x.jsonl", "--probe-noise", "-0.1"], "embedtune eval: error: --probe-noise must be >= 0, got -0.1"),
        (["--probe", "x.jsonl", "--probe-draws", "0"], "embedtune eval: error: --probe-draws must be >= 1, got 0"),
        (["--probe-test", "x.jsonl", "--data", "y"], "embedtune eval: error: --probe-test needs --probe"),
        (["--probe", "missing.jsonl"], "embedtune eval: error: missing.jsonl: no such file"),
    ],
)
def test_eval_probe_option_errors_are_one_line(tiny_bert_dir, capsys, extra, message):
    with pytest.raises(SystemExit) as raised:
        main(["eval", "--model", str(tiny_bert_dir), *extra])
    assert raised.value.code == 2 and capsys.readouterr().err.strip().startswith(message)


def test_eval_probe_names_a_bad_row(tiny_bert_dir, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\na,x\nb,\n")
    with pytest.raises(SystemExit):
        main(["eval", "--model", str(tiny_bert_dir), "--probe", str(bad)])
    assert capsys.readouterr().err.strip() == f"embedtune eval: error: {bad}:3: column 'label' is empty"


def test_eval_help_states_the_probe_defaults_the_code_uses(capsys):
    # the help is written before torch is imported, so it spells the defaults out: keep them true
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        f"(default: {' '.join(map(str, DEFAULT_NOISE))};" in text and f"noise draws averaged per sigma (default: {DEFAULT_DRAWS})" in text
    )
