"""Peak memory and time of one GradCache training step of all-MiniLM-L6-v2 at a given batch size.

    python scripts/bench_gradcache.py --batch 1024 --mini-batch 32 --max-length 128

Texts are real (the stdlib pairs), documents padded/truncated to --max-length tokens so every
document really is that long. Prints one line: batch, mini-batch, seconds, peak RSS (GiB).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import time

import torch

from embedtune.data.collate import PairCollator
from embedtune.data.stdlib import load
from embedtune.gradcache import gradcache_step
from embedtune.losses.infonce import InfoNCE
from embedtune.model import load_embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--mini-batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    options = parser.parse_args()
    pairs = load(max_train_pairs=options.batch).train
    model = load_embedder("all-MiniLM-L6-v2", max_length=options.max_length).train()
    collate = PairCollator(model.tokenizer, options.max_length, options.max_length)
    batch = collate(pairs[: options.batch])
    batch["documents"] = model.tokenizer([p.positive for p in pairs[: options.batch]], padding="max_length", truncation=True, max_length=options.max_length, return_tensors="pt")
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    loss, _, _ = gradcache_step(model, batch, InfoNCE(), model.loss_params, options.mini_batch, lambda l: l.backward(), contextlib.nullcontext)
    optimizer.step()
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"batch {options.batch} mini-batch {options.mini_batch} max_length {options.max_length}: loss {loss.item():.4f}, "
          f"{seconds:.1f} s/step, peak RSS {peak:.2f} GiB (after loading: {baseline:.2f} GiB)")


if __name__ == "__main__":
    main()
