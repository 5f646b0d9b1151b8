"""Cross-device negatives: two real processes (gloo, CPU) give the loss and the gradients that one
process computes on the whole batch, and `accelerate launch` with two processes trains end to end.

The gradient convention of `embedtune.training.distributed` is pinned here: every rank computes the global
loss, the gather's backward sums gradients over ranks, DDP averages, and the loss is NOT scaled
by the world size. A gather whose backward kept only the local gradient would give half the
reference gradients below; multiplying the loss by the world size (tevatron) would double the
encoder's and the learnable temperature's gradients. Either fails these tests.
"""

from __future__ import annotations

import faulthandler
import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from embedtune.console import launch_rank
from embedtune.errors import ConfigError
from embedtune.losses.batch import BatchInfo
from embedtune.losses.infonce import InfoNCE
from embedtune.losses.qwen3 import Qwen3Loss
from embedtune.training.distributed import CrossDevice, check_launch, freeze_unused_pooler, gather_batch
from embedtune.training.gradcache import gradcache_step

WORLD, PER_RANK, K, FEATURES, DIM = 2, 3, 2, 12, 8
PAIRS = WORLD * PER_RANK
LOSSES = {"infonce": InfoNCE(temperature=0.05), "qwen3": Qwen3Loss(temperature=0.05)}


# --- a fixed global batch and a tiny model, identical in every process -------------------------


def global_batch() -> dict:
    """PAIRS (query, positive, K negatives) as feature vectors with text ids, labels and scores.

    Two exact duplicates cross the rank boundary: pair 4's first negative (rank 1) is pair 0's
    positive (rank 0), and query 5 (rank 1) is query 1 (rank 0). Only gathered ids let qwen3's
    mask drop them."""
    g = torch.Generator().manual_seed(0)
    data = {
        "queries": torch.randn(PAIRS, FEATURES, generator=g, dtype=torch.float64),
        "positives": torch.randn(PAIRS, FEATURES, generator=g, dtype=torch.float64),
        "negatives": torch.randn(PAIRS, K, FEATURES, generator=g, dtype=torch.float64),
        "query_ids": 1000 + torch.arange(PAIRS),
        "positive_ids": 2000 + torch.arange(PAIRS),
        "negative_ids": 3000 + 10 * torch.arange(PAIRS)[:, None] + torch.arange(K),  # (PAIRS, K)
        "labels": 7 + torch.arange(PAIRS) % 2,
        "scores": 0.5 * torch.arange(PAIRS, dtype=torch.float64),
        "teacher_scores": torch.arange(PAIRS * (1 + K), dtype=torch.float64).reshape(PAIRS, 1 + K),
    }
    data["negatives"][4, 0], data["negative_ids"][4, 0] = data["positives"][0], data["positive_ids"][0]
    data["queries"][5], data["query_ids"][5] = data["queries"][1], data["query_ids"][1]
    return data


def in_loss_layout(data: dict, rows: slice) -> tuple[torch.Tensor, torch.Tensor, BatchInfo]:
    """Query features, document features (positives, then the negatives query by query) and the
    BatchInfo of the pairs ``rows``: one rank's share, or the whole batch for the reference."""
    documents = torch.cat([data["positives"][rows], data["negatives"][rows].flatten(0, 1)])
    info = BatchInfo(
        query_ids=data["query_ids"][rows],
        document_ids=torch.cat([data["positive_ids"][rows], data["negative_ids"][rows].flatten()]),
        negatives_per_query=K,
        labels=data["labels"][rows],
        scores=data["scores"][rows],
        teacher_scores=data["teacher_scores"][rows],
    )
    return data["queries"][rows], documents, info


def rank_rows(rank: int) -> slice:
    return slice(rank * PER_RANK, (rank + 1) * PER_RANK)


class TinyEncoder(nn.Module):
    """Linear map + L2 norm in float64, with a learnable logit scale (log 1/tau) like Embedder's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.linear = nn.Linear(FEATURES, DIM, dtype=torch.float64)
        self.loss_params = nn.ParameterDict({"logit_scale": nn.Parameter(torch.tensor(math.log(1 / 0.05), dtype=torch.float64))})

    def forward(self, features: dict) -> torch.Tensor:  # "input_ids" so GradCache can split it
        return F.normalize(self.linear(features["input_ids"]), dim=-1)


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def reference(loss_fn) -> tuple[float, dict]:
    """One process, the whole batch: the loss and gradients cross-device training must match."""
    model = TinyEncoder()
    queries, documents, info = in_loss_layout(global_batch(), slice(None))
    loss = loss_fn(model({"input_ids": queries}), model({"input_ids": documents}), info, model.loss_params)
    loss.backward()
    return loss.item(), gradients(model)


# --- the two processes ---------------------------------------------------------------------


def _rank_main(rank: int, out: str) -> None:
    """One of two gloo ranks: gather a known layout, then one DDP step per case on half the batch.

    The ranks meet through a file store (no TCP store server thread in rank 0), and each writes
    its stderr, with a Python stack on a fatal signal, to rankN.log for the failure message."""
    os.dup2(os.open(Path(out) / f"rank{rank}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND), 2)
    faulthandler.enable()
    torch.set_num_threads(1)
    store = f"file://{Path(out) / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=rank, world_size=WORLD, timeout=timedelta(seconds=120))
    try:
        queries, documents, info = in_loss_layout(global_batch(), rank_rows(rank))
        all_queries, all_documents, all_info = gather_batch(queries, documents, info)
        results = {"layout": (all_queries, all_documents, vars(all_info))}
        for name, loss_fn in LOSSES.items():
            model = DistributedDataParallel(TinyEncoder())  # averages gradients over the ranks
            embedded_queries, embedded_documents = model({"input_ids": queries}), model({"input_ids": documents})
            loss = CrossDevice(loss_fn)(embedded_queries, embedded_documents, info, model.module.loss_params)
            loss.backward()
            results[name] = (loss.item(), gradients(model.module))
        # GradCache: the same wrapped loss on cached embeddings, gradients replayed in mini-batches,
        # with a learnable temperature, which only the synced last replay lets DDP reduce.
        model = DistributedDataParallel(TinyEncoder())
        batch = {"queries": {"input_ids": queries}, "documents": {"input_ids": documents}, "info": info}
        loss, _, _ = gradcache_step(
            model, batch, CrossDevice(LOSSES["infonce"]), model.module.loss_params, 2, lambda loss: loss.backward(), model.no_sync
        )
        results["gradcache"] = (loss.item(), gradients(model.module))
        torch.save(results, Path(out) / f"rank{rank}.pt")
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(out: Path) -> list[dict]:
    """Start the two ranks and wait for their results; a rank's failure raises with its log."""
    context = mp.start_processes(_rank_main, args=(str(out),), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    try:
        while not context.join(timeout=2):  # raises with the child's traceback when a rank fails
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail("the two gloo ranks did not finish within 300 s" + rank_logs(out))
    except mp.ProcessExitedException as error:
        raise RankDied(f"{error}{rank_logs(out)}", killed_by_signal=error.signal_name is not None) from error
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


class RankDied(Exception):
    def __init__(self, message: str, killed_by_signal: bool) -> None:
        super().__init__(message)
        self.killed_by_signal = killed_by_signal


def rank_logs(out: Path) -> str:
    return "".join(
        f"\n--- rank{rank}.log (end) ---\n{log.read_text()[-3000:]}" for rank in range(WORLD) if (log := out / f"rank{rank}.log").is_file()
    )


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    """The two ranks' results. A rank killed by a signal (an abort inside the transport, not a
    Python error in the code under test) gets one fresh retry, reported as a warning with its log."""
    try:
        return run_ranks(tmp_path_factory.mktemp("ranks"))
    except RankDied as error:
        if not error.killed_by_signal:
            pytest.fail(str(error))
        warnings.warn(f"retrying the two gloo ranks once: {error}", stacklevel=1)
    try:
        return run_ranks(tmp_path_factory.mktemp("ranks"))
    except RankDied as error:
        pytest.fail(str(error))


def test_gathered_layout_is_queries_then_all_positives_then_all_negatives(two_ranks):
    data = global_batch()
    expected_queries, expected_documents, expected_info = in_loss_layout(data, slice(None))
    # spelled out: all 6 positives in rank order, then the 12 negatives query by query
    assert torch.equal(expected_documents[:PAIRS], data["positives"])
    assert torch.equal(expected_documents[PAIRS:], data["negatives"].flatten(0, 1))
    for rank, result in enumerate(two_ranks):
        queries, documents, info = result["layout"]
        assert torch.equal(queries, expected_queries), rank
        assert torch.equal(documents, expected_documents), rank
        assert info.keys() == vars(expected_info).keys()
        for name, value in vars(expected_info).items():
            assert torch.equal(info[name], value) if isinstance(value, torch.Tensor) else info[name] == value, (rank, name)
        assert info["document_ids"][:PAIRS].tolist() == list(range(2000, 2000 + PAIRS))  # not rank 0's [pos, neg], rank 1's [pos, neg]


def assert_same(candidate: tuple[float, dict], expected: tuple[float, dict]) -> None:
    (loss, grads), (expected_loss, expected_grads) = candidate, expected
    assert loss == pytest.approx(expected_loss, rel=1e-9, abs=1e-9)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-7, atol=1e-9, msg=name)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_two_ranks_give_the_loss_and_gradients_of_one_process_on_the_whole_batch(two_ranks, name):
    expected = reference(LOSSES[name])
    assert expected[1]["loss_params.logit_scale"].abs() > 1e-6  # the temperature's gradient is checked too
    for result in two_ranks:
        assert_same(result[name], expected)


def test_two_ranks_with_gradcache_match_one_process(two_ranks):
    expected = reference(LOSSES["infonce"])
    assert "loss_params.logit_scale" in expected[1]
    for result in two_ranks:
        assert_same(result["gradcache"], expected)


def test_duplicates_across_ranks_change_qwen3(two_ranks):
    """Guards the qwen3 case: the cross-rank duplicates must matter, so equal losses above mean
    the gathered ids are laid out right (with fresh ids nothing would be masked)."""
    model = TinyEncoder()
    queries, documents, info = in_loss_layout(global_batch(), slice(None))
    fresh = BatchInfo(query_ids=torch.arange(PAIRS), document_ids=100 + torch.arange(documents.shape[0]), negatives_per_query=K)
    with torch.no_grad():
        unmasked = LOSSES["qwen3"](model({"input_ids": queries}), model({"input_ids": documents}), fresh, model.loss_params).item()
    assert unmasked != pytest.approx(two_ranks[0]["qwen3"][0], rel=1e-6)


# --- one process: everything is a no-op ------------------------------------------------------


def test_in_one_process_cross_device_is_the_plain_loss():
    model = TinyEncoder()
    queries, documents, info = in_loss_layout(global_batch(), slice(None))
    q, d = model({"input_ids": queries}), model({"input_ids": documents})
    assert gather_batch(q, d, info) == (q, d, info)
    assert CrossDevice(LOSSES["qwen3"])(q, d, info, model.loss_params).item() == LOSSES["qwen3"](q, d, info, model.loss_params).item()


def test_processes_that_each_train_alone_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2"):
        check_launch(num_processes=1)
    check_launch(num_processes=2)
    monkeypatch.setenv("RANK", "1")
    assert launch_rank() == 1


def test_the_unused_pooler_is_frozen_and_nothing_else(tiny_bert_dir):
    """A BERT pooler never gets a gradient from pooled hidden states; trainable, DDP would wait
    for it (the end-to-end run below fails at its second step without this)."""
    from embedtune.model import load_embedder

    model = load_embedder(str(tiny_bert_dir), max_length=16)
    freeze_unused_pooler(model)
    frozen = sorted(name for name, p in model.named_parameters() if not p.requires_grad)
    assert frozen == ["backbone.pooler.dense.bias", "backbone.pooler.dense.weight"]
    freeze_unused_pooler(TinyEncoder())  # no backbone, no pooler: nothing to do


# --- end to end: accelerate launch, two CPU processes --------------------------------------

# `python -m embedtune` (runpy runs embedtune/__main__.py exactly as -m does), with a clock that
# advances one second per reading in embedtune.training.run: a log window reads it at its start and at
# its end, so with train.log_every=1 pairs_per_s is exactly the pairs of one step, all processes.
FAKE_CLOCK_MAIN = """
import itertools, runpy, types
import embedtune.training.run_log
ticks = itertools.count()
embedtune.training.run_log.time = types.SimpleNamespace(perf_counter=lambda: float(next(ticks)))
runpy.run_module("embedtune", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_with_cross_device_negatives(tiny_bert_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    rows = [
        {"query": f"question {i}", "positive": f"answer about topic {i}", "negatives": [f"distractor {i} a", f"distractor {i} b"]}
        for i in range(16)
    ]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    main = tmp_path / "fake_clock_main.py"
    main.write_text(FAKE_CLOCK_MAIN)
    out = tmp_path / "run"
    # `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher);
    # --multi_gpu starts two through torchrun and ACCELERATE_USE_CPU makes them a gloo group on CPU.
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]  # fmt: skip
    train = ["train", "data=files", f"data.train={pairs}", f"backbone.path={tiny_bert_dir}", "backbone.max_length=16", "loss=qwen3",
             "batch.size=4", "negatives.per_query=2", "negatives.cross_device=true", "train.max_steps=2", "train.log_every=1",
             "eval.before=false", f"output_dir={out}"]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launch, str(main), *train], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "4 pairs x 2 process(es)" in " ".join(result.stderr.split())  # the main process's summary line
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    assert [r["pairs_per_s"] for r in records] == [8.0, 8.0]  # 4 pairs x 2 processes per 1-tick window
    assert (out / "final" / "embedtune.json").is_file()
    assert sorted(tmp_path.rglob("train_log.jsonl")) == [out / "train_log.jsonl"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fake_clock_main.py", "pairs.jsonl", "run"]  # no per-rank folders
