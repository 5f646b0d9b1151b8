"""The LM that writes the pairs: any Hugging Face causal LM folder or a llama.cpp ``.gguf`` file
(dequantised on load), prompted through its chat template when it has one, sampled in left-padded
batches, each batch under its own seed so that a batch comes out the same whether it runs in one
go or again after a resume."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embedtune.errors import ConfigError, EmbedtuneError
from embedtune.model import gguf_options, resolve_model_path
from embedtune.synth.templates import Template


@dataclass(frozen=True)
class Sampling:
    """How the LM samples (the `embedtune synth` flags of the same names).

    Args:
        temperature: softmax temperature; 0 decodes greedily.
        top_p: nucleus sampling's probability mass (1: off).
        max_new_tokens: the longest answer; one cut off here is rejected as ``unfinished``.
        max_source_tokens: the source is cut to this many tokens in the prompt (the pair's
            positive keeps the whole text): prompt length is what a CPU pays for.
        seed: batch b samples under a seed drawn from (seed, b).
    """

    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 48
    max_source_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_source_tokens < 1:
            raise ConfigError(f"--max-source-tokens must be >= 1, got {self.max_source_tokens}")


def batch_seed(seed: int, batch: int) -> int:
    """The torch seed of batch ``batch``: independent streams per batch (numpy's SeedSequence
    mixes both numbers), so skipping finished batches on a resume changes no other batch."""
    return int(np.random.SeedSequence([seed, batch]).generate_state(1)[0])


def require_gguf() -> None:
    """A one-line `EmbedtuneError` naming the extra when a ``.gguf`` model needs the missing
    gguf package (only GGUF files need it, so it is not a core dependency)."""
    if importlib.util.find_spec("gguf") is None:
        raise EmbedtuneError("a .gguf model needs the gguf package: pip install 'embedtune[synth]' (or pip install gguf)")


def resolve_generator(name_or_path: str) -> str:
    """The LM's folder or ``.gguf`` file, checked without loading it: a packaged name (the
    SmolLM2-135M-Instruct GGUF) resolves to its file, a folder needs a config.json, a GGUF file
    the gguf package."""
    path = resolve_model_path(name_or_path)
    if path.endswith(".gguf"):
        require_gguf()
    elif Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise EmbedtuneError(f"{name_or_path}: not a model folder (no config.json)")
    return path


@dataclass
class Generator:
    """A causal LM and its tokenizer (left padding, a pad token), ready to answer prompts."""

    model: torch.nn.Module
    tokenizer: object

    def prompt(self, template: Template, source: str, max_source_tokens: int) -> str:
        """The template's prompt for ``source`` cut to ``max_source_tokens`` tokens, through the
        tokenizer's chat template (generation prompt added) when it has one."""
        ids = self.tokenizer(source, add_special_tokens=False)["input_ids"]
        if len(ids) > max_source_tokens:
            source = self.tokenizer.decode(ids[:max_source_tokens]).strip()
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(template.messages(source), tokenize=False, add_generation_prompt=True)
        return template.plain_prompt(source)

    @torch.inference_mode()
    def generate(self, prompts: list[str], sampling: Sampling, batch: int) -> list[tuple[str, bool]]:
        """One left-padded batch: per prompt the decoded new tokens (never the prompt) and
        whether the LM ended it itself (an end-of-sequence token) rather than max_new_tokens."""
        chat = bool(getattr(self.tokenizer, "chat_template", None))  # a chat template writes its own special tokens
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not chat)
        inputs = {name: tensor.to(self.model.device) for name, tensor in inputs.items()}
        torch.manual_seed(batch_seed(sampling.seed, batch))
        sample = sampling.temperature > 0
        output = self.model.generate(
            **inputs,
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=0,  # off: --top-p alone truncates (transformers would otherwise add its default top-50)
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        new = output[:, inputs["input_ids"].shape[1] :].cpu()  # (batch, new tokens)
        stops = self.model.generation_config.eos_token_id
        stops = torch.tensor(stops if isinstance(stops, list) else [stops])
        finished = torch.isin(new, stops).any(dim=1).tolist()
        return list(zip(self.tokenizer.batch_decode(new, skip_special_tokens=True), finished))


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_generator(path: str, device: str = "cpu", dtype: str = "float32") -> Generator:
    """Load the causal LM at ``path`` (a folder or a ``.gguf`` file, as `resolve_generator`
    returns it) in ``dtype`` (a `DTYPES` name) on ``device``, or raise a one-line `EmbedtuneError`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf: dict = {}
    if path.endswith(".gguf"):
        path, gguf = str(Path(path).parent), {"gguf_file": Path(path).name}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **gguf)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **gguf_options(gguf))
    except (OSError, ImportError, ValueError) as error:
        raise EmbedtuneError(f"cannot load the generator '{path}': {str(error).splitlines()[0]}") from None
    tokenizer.padding_side = "left"  # new tokens follow every prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return Generator(model.to(device).eval(), tokenizer)
