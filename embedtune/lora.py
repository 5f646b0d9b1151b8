"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models") via peft.

Only the low-rank adapters train; the backbone's own weights stay frozen, which cuts optimizer
memory to a few MB for a 0.6B decoder. Saving merges the adapters into a copy of the weights, so
the saved model is a plain Hugging Face model that sentence-transformers loads without peft.
peft is optional (``pip install embedtune[lora]``) and imported only when LoRA is used.
"""

from __future__ import annotations

import copy

from torch import nn

from embedtune.errors import ConfigError


def apply_lora(backbone: nn.Module, r: int, alpha: float, dropout: float, target_modules: list[str]) -> nn.Module:
    """Wrap ``backbone`` with LoRA adapters of rank ``r`` (scale ``alpha / r``) on the named
    linear layers (``q_proj``... for decoders, ``query``/``key``/``value`` for BERT); every
    other parameter gets ``requires_grad=False``."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ConfigError("lora.enabled=true needs peft: pip install 'embedtune[lora]'") from None
    names = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)}
    missing = [target for target in target_modules if target not in names]
    if missing:
        raise ConfigError(f"lora.target_modules: {missing[0]!r} is no linear layer of this backbone (it has {', '.join(sorted(names))})")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    return get_peft_model(backbone, config)


def merged_backbone(backbone: nn.Module) -> nn.Module:
    """The backbone with its LoRA adapters folded into the weights (W + B A * alpha / r), as a
    plain model; the training copy keeps its adapters. A backbone without LoRA is returned as is."""
    if not hasattr(backbone, "merge_and_unload"):
        return backbone
    return copy.deepcopy(backbone).merge_and_unload()
