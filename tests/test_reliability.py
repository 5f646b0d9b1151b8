"""Crashes, interrupts and NaNs: a run can always continue, and nothing broken is ever saved."""

import json
import math
import re
import signal
import time

import pytest
import torch
from helpers import start_embedtune
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from embedtune.errors import EmbedtuneError
from embedtune.fileio import atomic_folder
from embedtune.losses.infonce import InfoNCE
from embedtune.model import load_embedder
from embedtune.training.config import config_dir
from embedtune.training.run import run
from embedtune.training.step import gradient_norms, nonfinite_gradients


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("rel") / "pairs.jsonl"
    rows = [
        {"query": f"question {i} about {i % 7}", "positive": f"answer {i} text {i * 3}", "negatives": [f"wrong {i}"]} for i in range(48)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_args(model_dir, pairs, out, *extra):
    return [
        "train",
        "data=files",
        f"data.train={pairs}",
        f"backbone.path={model_dir}",
        "backbone.max_length=16",
        "batch.size=8",
        "train.epochs=8",
        "train.log_every=1",
        "save.state_every_n_steps=4",
        "save.keep_last_states=null",
        "eval.before=false",
        f"output_dir={out}",
        *extra,
    ]  # fmt: skip  -- 48 pairs / 8 = 6 steps per epoch, 48 steps over 8 epochs: resume crosses epochs


def wait_for(path, process, timeout=300):
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline
        time.sleep(0.02)


def losses(out):
    return [(r["step"], r["loss"]) for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]


def assert_same_run(reference, resumed):
    assert [s for s, _ in losses(resumed)] == [s for s, _ in losses(reference)]
    for (_, a), (_, b) in zip(losses(reference), losses(resumed)):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
    weights_a, weights_b = load_file(reference / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.allclose(weights_a[name], weights_b[name], atol=1e-6), name


def resume_to_the_end(model_dir, pairs, out, reference):
    """Rerun the interrupted command with resume=auto and check it ends exactly like ``reference``."""
    resumed = start_embedtune(*train_args(model_dir, pairs, out, "resume=auto"))
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr
    assert "resumed at step" in stderr
    assert_same_run(reference, out)


@pytest.fixture(scope="module")
def reference_run(tiny_bert_dir, pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    process = start_embedtune(*train_args(tiny_bert_dir, pairs, out))
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return out


@pytest.mark.slow
def test_sigkill_then_resume_equals_an_uninterrupted_run(tiny_bert_dir, pairs, reference_run, tmp_path):
    out = tmp_path / "run"
    process = start_embedtune(*train_args(tiny_bert_dir, pairs, out))
    wait_for(out / "state" / "step-00008", process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "final").exists(), "the run finished before it was killed: the test proved nothing"
    resume_to_the_end(tiny_bert_dir, pairs, out, reference_run)


@pytest.mark.slow
def test_ctrl_c_saves_a_resumable_state(tiny_bert_dir, pairs, reference_run, tmp_path):
    out = tmp_path / "run"
    process = start_embedtune(*train_args(tiny_bert_dir, pairs, out))
    wait_for(out / "state" / "step-00004", process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "continue with resume=auto" in stderr and not (out / "final").exists()
    resume_to_the_end(tiny_bert_dir, pairs, out, reference_run)


class NaNAtStep:
    """InfoNCE that returns NaN on its ``bad_call``-th call and, with ``repeat_every`` n, on every
    n-th call after it (tests only)."""

    def __init__(self, bad_call: int, repeat_every: int = 0) -> None:
        self.calls, self.bad_call, self.repeat_every, self.inner = 0, bad_call, repeat_every, InfoNCE()
        self.temperature = self.inner.temperature

    def __call__(self, queries, documents, info=None, params=None):
        self.calls += 1
        loss = self.inner(queries, documents, info, params or {})
        after = self.calls - self.bad_call
        bad = after == 0 or (self.repeat_every and after > 0 and after % self.repeat_every == 0)
        return loss * float("nan") if bad else loss


def compose_nan(model_dir, pairs, *extra):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *train_args(model_dir, pairs, "unused")[1:-1],
                "train.epochs=1",
                "loss._target_=test_reliability.NaNAtStep",
                "~loss.temperature",
                "~loss.symmetric",
                "+loss.bad_call=5",
                *extra,
            ],
        )


def test_nan_loss_stops_before_touching_weights_and_keeps_the_last_good_state(tiny_bert_dir, pairs, tmp_path):
    with pytest.raises(EmbedtuneError, match=r"step 5: non-finite loss .*stopped before updating the weights"):
        run(compose_nan(tiny_bert_dir, pairs), tmp_path)
    assert not (tmp_path / "final").exists()
    state = tmp_path / "state" / "step-00004" / "model.safetensors"
    assert all(torch.isfinite(t).all() for t in load_file(state).values())


def test_nan_loss_can_be_skipped(tiny_bert_dir, pairs, tmp_path):
    run(compose_nan(tiny_bert_dir, pairs, "train.on_nonfinite=skip"), tmp_path)
    model = load_embedder(str(tmp_path / "final"))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(math.isfinite(loss) for _, loss in losses(tmp_path))
    assert [step for step, _ in losses(tmp_path)] == [1, 2, 3, 4, 5, 6]  # the skipped batch is not a step


def test_skipping_non_finite_steps_stops_after_a_bound_naming_the_gradient(tiny_bert_dir, pairs, tmp_path):
    """Skipped steps are not steps: a run whose loss stays NaN would never reach train.max_steps."""
    cfg = compose_nan(tiny_bert_dir, pairs, "train.on_nonfinite=skip", "+loss.repeat_every=1", "train.max_nonfinite_in_a_row=3")
    with pytest.raises(EmbedtuneError) as raised:
        run(cfg, tmp_path)
    message = str(raised.value)
    assert "\n" not in message
    assert "step 5: non-finite loss" in message and "3 steps in a row were non-finite (train.max_nonfinite_in_a_row=3)" in message
    assert re.search(r"non-finite gradient in (\d+) of \1 parameter tensors, nearest the output: backbone\.encoder\.layer\.1\.", message), (
        message
    )
    assert not (tmp_path / "final").exists()


def test_a_finite_step_resets_the_count_of_non_finite_steps_in_a_row(tiny_bert_dir, pairs, tmp_path):
    """NaN at calls 3 and 5 (a finite step between them): a bound of 2 in a row is never reached;
    a bound of 1 stops at the first."""
    run(
        compose_nan(
            tiny_bert_dir,
            pairs,
            "train.on_nonfinite=skip",
            "loss.bad_call=3",
            "+loss.repeat_every=2",
            "train.max_steps=4",
            "train.max_nonfinite_in_a_row=2",
        ),
        tmp_path / "two",
    )
    assert [step for step, _ in losses(tmp_path / "two")] == [1, 2, 3, 4]
    with pytest.raises(EmbedtuneError, match=r"step 3: .*1 steps in a row were non-finite"):
        run(
            compose_nan(tiny_bert_dir, pairs, "train.on_nonfinite=skip", "loss.bad_call=3", "train.max_nonfinite_in_a_row=1"),
            tmp_path / "one",
        )


def test_non_finite_gradients_are_named_nearest_the_output_first():
    """Backward meets the last layer first: a NaN that starts there spreads to the layers below."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    for index, layer in enumerate(model):
        layer.weight.grad = torch.full_like(layer.weight, float("nan") if index < 2 else 1.0)
        layer.bias.grad = torch.zeros_like(layer.bias)
    names, norms = gradient_norms(model)
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert torch.allclose(norms[4], torch.tensor(3**0.5))
    assert nonfinite_gradients(names, norms) == "non-finite gradient in 2 of 6 parameter tensors, nearest the output: 1.weight"
    model[1].weight.grad.fill_(0.5)
    model[0].weight.grad.fill_(0.5)
    assert nonfinite_gradients(*gradient_norms(model)) == "every gradient finite"


def test_resume_from_a_folder_that_is_not_a_state_is_a_clear_error(tiny_bert_dir, pairs, tmp_path):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=[*train_args(tiny_bert_dir, pairs, tmp_path)[1:], f"resume={tmp_path}"])
    with pytest.raises(EmbedtuneError, match="not a training state folder"):
        run(cfg, tmp_path)


def test_atomic_folder_leaves_the_previous_version_on_failure(tmp_path):
    target = tmp_path / "model"
    with atomic_folder(target) as tmp:
        (tmp / "weights").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed mid-write")
    assert (target / "weights").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
