"""Bisect the NaN gradient of bf16 + GradCache decoder training (issue 13), one switch at a time.

    python scripts/nan_bisect.py --json runs/bisect.json                       # Qwen3-0.6B shape, on the GPU
    python scripts/nan_bisect.py --size tiny --batch 16 --mini-batch 8 --json runs/bisect.json   # CPU smoke

Reported on an H200 (torch 2.11+cu130): a random Qwen3-0.6B-shaped decoder, bf16 autocast over
float32 weights, GradCache 1,024 / 64, gradient checkpointing, left padding, max length 512,
queries 64 tokens: the loss is finite, the gradient norm NaN at every step; on a CPU all finite.

Two parts, each written to the JSON as soon as it is done:

1. kernels: `scaled_dot_product_attention` alone, at the model's head shape in bf16, for each
   backend (the default choice, then math, efficient, flash and cudnn pinned through
   `torch.nn.attention.sdpa_kernel`), on causal masks of left-padded rows (whose pad positions'
   rows are fully masked) and right-padded rows (none are), at widths 64, 128, 192 and 512. The
   upstream gradient is zero at pad positions, as pooling makes it. Recorded: which backend the
   default picks, and whether the output (real and pad rows) and each of dQ, dK, dV are finite.
2. steps: embedtune's own `Embedder` (last-token pooling) and `gradcache_step` on real
   (title, abstract) pairs from SciFact, the optimizer stepping between steps, for the reported
   set-up and for variants that change one switch each: GradCache off, checkpointing off,
   fp32, right padding (what embedtune's collator now does), left padding to a multiple of 128,
   and each SDPA backend pinned. Recorded per step: loss, gradient norm, finiteness, the
   non-finite parameter gradients in the order backward meets them (the first is where the
   NaN enters), and the width of every forward pass.

The model's weights are restored before every variant, so all start from the same point.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from random_decoder import build, tokenizer
from torch.nn.attention import SDPBackend, sdpa_kernel

from embedtune.losses.batch import BatchInfo, text_ids
from embedtune.losses.infonce import InfoNCE
from embedtune.model import Embedder
from embedtune.training.build import adamw
from embedtune.training.gradcache import gradcache_step

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BACKENDS = {
    "math": SDPBackend.MATH,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
KERNEL_WIDTHS = (64, 128, 192, 512)
# The reported run; each variant changes one of these.
REPORTED = {
    "gradcache": True,
    "checkpointing": True,
    "precision": "bf16",
    "padding": "left",
    "pad_to_multiple_of": None,
    "backend": "default",
}
VARIANTS = {
    "reported": {},
    "gradcache_off": {"gradcache": False},
    "checkpointing_off": {"checkpointing": False},
    "fp32": {"precision": "fp32"},
    "padding_right": {"padding": "right"},
    "left_padded_to_128": {"pad_to_multiple_of": 128},
    **{f"backend_{name}": {"backend": name} for name in BACKENDS},
    "padding_right_backend_cudnn": {"padding": "right", "backend": "cudnn"},
}


def backend_context(name: str) -> contextlib.AbstractContextManager:
    """Pin one SDPA backend (``default`` leaves torch's own choice)."""
    return contextlib.nullcontext() if name == "default" else sdpa_kernel(BACKENDS[name])


def default_backend(query, key, value, mask) -> str:
    """The backend torch picks for these inputs when none is pinned."""
    try:
        index = torch._fused_sdp_choice(query, key, value, attn_mask=mask)
    except (AttributeError, RuntimeError) as error:
        return f"unknown ({type(error).__name__})"
    return {int(backend): name.lower() for name, backend in SDPBackend.__members__.items()}.get(index, str(index))


def padded_causal_mask(lengths: list[int], width: int, side: str, device) -> torch.Tensor:
    """The boolean mask transformers builds for SDPA: causal and key-padding, (batch, 1, width, width)."""
    positions = torch.arange(width, device=device)  # (width,)
    length = torch.tensor(lengths, device=device)[:, None]  # (batch, 1)
    keys = positions >= width - length if side == "left" else positions < length  # (batch, width): real tokens
    causal = positions[:, None] >= positions[None, :]  # (width, width)
    return causal[None, None] & keys[:, None, None, :]


def kernel_matrix(heads: int, head_dim: int, device: str, dtype: torch.dtype) -> list[dict]:
    """SDPA forward and backward, finite or not, per backend x padding side x width."""
    results = []
    generator = torch.Generator(device=device).manual_seed(0)
    for width in KERNEL_WIDTHS:
        lengths = [width, width // 2, 3, width - 5]  # one row without padding, three padded
        for side in ("left", "right"):
            mask = padded_causal_mask(lengths, width, side, device)
            real = mask.any(dim=-1, keepdim=True)  # (batch, 1, width, 1): rows with a key to attend to
            shape = (len(lengths), heads, width, head_dim)
            inputs = [torch.randn(shape, generator=generator, device=device, dtype=dtype) for _ in range(3)]  # query, key, value
            upstream = torch.randn(shape, generator=generator, device=device, dtype=dtype) * real  # zero at empty rows
            record = {"width": width, "padding": side, "empty_rows": int((~real).sum()), "default_picks": default_backend(*inputs, mask)}
            for name in ("default", *BACKENDS):
                query, key, value = (tensor.detach().clone().requires_grad_() for tensor in inputs)
                try:
                    with backend_context(name):
                        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
                        out.backward(upstream)
                except RuntimeError as error:
                    record[name] = {"error": str(error).splitlines()[0][:160]}
                    continue
                record[name] = {
                    "out_real_rows_finite": bool(torch.isfinite(out.masked_select(real)).all()),
                    "out_empty_rows": _summary(out.masked_select(~real)),
                    **{f"d{part}_finite": bool(torch.isfinite(tensor.grad).all()) for part, tensor in zip("qkv", (query, key, value))},
                }
            results.append(record)
    return results


def _summary(values: torch.Tensor) -> str:
    """'none', 'zeros', 'finite' or 'non-finite' for the outputs of empty rows."""
    if values.numel() == 0:
        return "none"
    if not torch.isfinite(values).all():
        return "non-finite"
    return "zeros" if bool((values == 0).all()) else "finite"


def scifact_pairs(data_dir: Path) -> list[tuple[str, str]]:
    """(title, abstract) pairs of the SciFact corpus: the reported run's data."""
    rows = [json.loads(line) for line in (data_dir / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["title"], row["text"]) for row in rows if row["title"].strip() and row["text"].strip()]


def step_batches(pairs: list[tuple[str, str]], tok, size: int, count: int, query_max_length: int) -> list[list[tuple[str, str]]]:
    """``count`` random batches of ``size`` pairs, each holding the pair with the longest title:
    its queries then pad to the longest title, as most of the report's 1,024-pair batches did
    (77% of them hold a title of 64+ tokens), whatever the batch size here."""
    lengths = [len(ids) for ids in tok([title for title, _ in pairs], truncation=True, max_length=query_max_length)["input_ids"]]
    longest = pairs[max(range(len(pairs)), key=lengths.__getitem__)]
    rng = random.Random(0)
    return [[longest, *rng.sample([pair for pair in pairs if pair != longest], size - 1)] for _ in range(count)]


def tokenized(tok, texts: list[str], max_length: int, side: str, multiple: int | None, device) -> dict[str, torch.Tensor]:
    """A batch truncated to ``max_length``, padded on ``side`` to its longest text (rounded up to ``multiple``)."""
    encoded = tok(texts, truncation=True, max_length=max_length)
    features = tok.pad(encoded, padding=True, pad_to_multiple_of=multiple, padding_side=side, return_tensors="pt")
    return {name: value.to(device) for name, value in features.items()}


def nonfinite_in_backward_order(model: torch.nn.Module) -> list[str]:
    """Parameters with a non-finite gradient, last registered first: roughly the order in which
    backward reaches them, so the first is where the NaN entered."""
    named = [(name, p) for name, p in model.named_parameters() if p.grad is not None]
    return [name for name, p in reversed(named) if not torch.isfinite(p.grad).all()]


def run_variant(model: Embedder, initial: dict, batches_of_pairs: list, options, switches: dict) -> dict:
    """Steps of one variant from the initial weights; per step what went finite and what not."""
    model.load_state_dict(initial)
    model.backbone.gradient_checkpointing_disable()
    if switches["checkpointing"]:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    device = next(model.parameters()).device
    optimizer = adamw(model, options.lr, 0.01)
    loss_fn = InfoNCE(temperature=0.05)
    widths: set[int] = set()
    record_width = model.backbone.register_forward_pre_hook(
        lambda _, args, kwargs: widths.add(int(kwargs["input_ids"].shape[1])), with_kwargs=True
    )

    def forward(features: dict[str, torch.Tensor]) -> torch.Tensor:  # what Accelerate's autocast wrapper does
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=switches["precision"] == "bf16"):
            return model(features)

    steps = []
    for pairs in batches_of_pairs:
        widths.clear()
        queries = tokenized(
            model.tokenizer, [q for q, _ in pairs], options.query_max_length, switches["padding"], switches["pad_to_multiple_of"], device
        )
        documents = tokenized(
            model.tokenizer, [d for _, d in pairs], options.max_length, switches["padding"], switches["pad_to_multiple_of"], device
        )
        info = BatchInfo(query_ids=text_ids([q for q, _ in pairs]), document_ids=text_ids([d for _, d in pairs])).to(device)
        batch = {"queries": queries, "documents": documents, "info": info}
        start = time.perf_counter()
        try:
            with backend_context(switches["backend"]):  # forward, checkpoint recomputation and backward alike
                if switches["gradcache"]:
                    loss, _, _ = gradcache_step(
                        forward,
                        batch,
                        loss_fn,
                        model.loss_params,
                        options.mini_batch,
                        lambda value: value.backward(),
                        contextlib.nullcontext,
                    )
                else:
                    loss = loss_fn(forward(queries), forward(documents), info, model.loss_params)
                    loss.backward()
        except RuntimeError as error:  # a pinned backend that cannot run these inputs
            steps.append({"error": str(error).splitlines()[0][:200]})
            optimizer.zero_grad()
            break
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
        nonfinite = nonfinite_in_backward_order(model)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step = {
            "loss": loss.item(),
            "grad_norm": grad_norm,
            "finite": math.isfinite(loss.item()) and math.isfinite(grad_norm),
            "nonfinite_params": len(nonfinite),
            "first_nonfinite_in_backward": nonfinite[:6],
            "backbone_widths": sorted(widths),  # of every backbone pass; a width of 64 mod 128 is one suspect (pytorch#196678)
            "seconds": round(time.perf_counter() - start, 2),
        }
        steps.append(step)
        if step["finite"]:
            optimizer.step()
        optimizer.zero_grad()
    record_width.remove()
    return {"switches": switches, "steps": steps, "finite": all(step.get("finite") for step in steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("qwen3-0.6b", "tiny"), default="qwen3-0.6b")
    parser.add_argument("--json", type=Path, default=Path("runs/nan_bisect.json"))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="the shared real data (SciFact)")
    parser.add_argument("--batch", type=int, default=256, help="pairs per step (default 256)")
    parser.add_argument("--mini-batch", type=int, default=64, help="GradCache mini-batch (default 64)")
    parser.add_argument("--steps", type=int, default=2, help="steps per variant (default 2)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--query-max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--only", default=",".join(VARIANTS), help="comma-separated variants (default: all)")
    options = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = tokenizer()
    backbone = build(options.size, len(tok), device)
    config = backbone.config
    result: dict = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
        "size": options.size,
        "batch": options.batch,
        "mini_batch": options.mini_batch,
    }

    def write() -> None:
        options.json.parent.mkdir(parents=True, exist_ok=True)
        options.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    started = time.perf_counter()
    result["kernels"] = kernel_matrix(
        config.num_attention_heads, config.head_dim, device, torch.bfloat16 if device == "cuda" else torch.float32
    )
    write()
    print(f"kernels: {time.perf_counter() - started:.0f} s", flush=True)
    model = Embedder(backbone, tok, pooling="last_token", max_length=options.max_length)
    initial = {name: value.detach().clone() for name, value in model.state_dict().items()}
    batches_of_pairs = step_batches(scifact_pairs(options.data_dir), tok, options.batch, options.steps, options.query_max_length)
    result["variants"] = {}
    for name in options.only.split(","):
        switches = {**REPORTED, **VARIANTS[name]}
        result["variants"][name] = run_variant(model, initial, batches_of_pairs, options, switches)
        write()
        steps = result["variants"][name]["steps"]
        print(
            f"{name:>28}: "
            + "; ".join(
                s.get("error") or f"loss {s['loss']:.3f} grad {s['grad_norm']:.3g} ({s['nonfinite_params']} non-finite, {s['seconds']} s)"
                for s in steps
            ),
            flush=True,
        )
    result["verdict"] = verdict(result)
    result["wall_s"] = time.perf_counter() - started
    write()
    print(json.dumps(result["verdict"], indent=1))


def verdict(result: dict) -> dict:
    """The bisection in a few lines: which variants stayed finite, which did not, which could not
    run, and which kernel cases gave a non-finite gradient."""
    variants = result["variants"]
    errors = {name for name, variant in variants.items() if any("error" in step for step in variant["steps"])}
    bad_kernels = [
        f"{name} {record['padding']} width {record['width']}: "
        + ",".join(part for part in ("dq", "dk", "dv") if not record[name][f"{part}_finite"])
        for record in result["kernels"]
        for name in ("default", *BACKENDS)
        if "error" not in record[name] and not all(record[name][f"{part}_finite"] for part in ("dq", "dk", "dv"))
    ]
    return {
        "finite": sorted(name for name, variant in variants.items() if variant["finite"] and name not in errors),
        "non_finite": sorted(name for name, variant in variants.items() if not variant["finite"] and name not in errors),
        "could_not_run": sorted(errors),
        "kernel_cases_with_non_finite_gradients": bad_kernels,
        "default_backend_picks": sorted(
            {f"{record['padding']} width {record['width']}: {record['default_picks']}" for record in result["kernels"]}
        ),
    }


if __name__ == "__main__":
    main()
