"""Merge model folders tensor by tensor, in row blocks, over safetensors files.

Each floating-point tensor is merged in passes over blocks of its rows, computed in float32:
first its Gram matrix (the dot products and norms that slerp, Model Stock and the merge report
need), for magnitude trimming the threshold of each task vector (a two-pass radix select), then
the merged blocks, which go straight to the output file, whose header is written first (tensor
sizes are known up front). Files are read with plain reads of the rows a block needs, not
memory-mapped (a mapped file's pages stay resident, counted in the process's memory, while it
is open: two mapped inputs doubled the peak). So memory holds a few blocks per input, never a
whole tensor, a whole input or a whole output shard.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import math
import re
import shutil
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from embedtune import __version__
from embedtune.console import progress_bar
from embedtune.errors import EmbedtuneError
from embedtune.fileio import atomic_folder, check_output, read_json
from embedtune.merge.methods import (
    combine,
    dare,
    gram,
    linear_coefficients,
    magnitude_threshold,
    model_stock_coefficients,
    slerp_coefficients,
    task_vectors,
    ties_mean,
    trim,
)
from embedtune.model import resolve_model_path, saved_model, saved_settings
from embedtune.model_card import CARD_FILE, card_base_models, merge_card

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 10**9  # transformers' default shard size, "5GB"
BLOCK_ELEMENTS = 1 << 18  # entries per row block and input: 1 MiB in float32
METHODS = ("slerp", "linear", "ties", "model_stock")
SPARSIFIERS = ("magnitude", "dare")
TIES_DENSITY = 0.2  # the TIES paper keeps the top 20% of each task vector
# config.json keys that must agree: the same architecture at the same size
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# not copied from the first input: weights in any format (they would be stale) and hidden files
NOT_COPIED = (
    CARD_FILE,
    "*.safetensors",
    "*.safetensors.index.json",
    "*.bin",
    "*.bin.index.json",
    "*.h5",
    "*.msgpack",
    "*.pt",
    "*.onnx",
    "onnx",
    "openvino",
    ".*",
)
MERGE_RECORD = "embedtune_merge.json"
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}  # safetensors' dtype names; fmt: skip


def merge_models(
    inputs: list[str],
    out: str,
    method: str = "slerp",
    t: float | None = None,
    weights: list[float] | None = None,
    layer_t: list[tuple[str, float]] | None = None,
    only: str | None = None,
    base: str | None = None,
    sparsify: str | None = None,
    density: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    block_elements: int = BLOCK_ELEMENTS,
    show_progress: bool = False,
) -> dict:
    """Merge the model folders ``inputs`` into ``out`` and return counts and distances for a summary.

    ``method`` (the functions are in `embedtune.merge.methods`):
    - "slerp": two models by slerp, more by their weighted spherical mean (`slerp_coefficients`);
      with ``base``, of the task vectors θᵢ − θ_base, added back to the base.
    - "linear": the weighted average (`linear_coefficients`); with ``base`` and ``sparsify``, the
      weighted mean of the sparsified task vectors.
    - "ties": TIES-Merging of the task vectors (`trim` to the top ``density`` magnitudes, then
      `ties_mean`); needs ``base``.
    - "model_stock": Model Stock (`model_stock_coefficients`); needs ``base``, takes no weights.

    ``base``: the parent every input was fine-tuned from (a folder or packaged name). ``sparsify``
    ("magnitude": TIES's trim, the default for "ties"; "dare": DARE's random drop and rescale,
    seeded by ``seed``) keeps ``density`` of each task vector (default 0.2).

    Each input gets a weight: ``weights`` (one per input, >= 0), or for two inputs ``t`` (weights
    1 − t and t: t = 0 is the first model, 1 the second), else all equal. ``layer_t``
    [(regex, t), ...] sets a two-model t per tensor: the first regex found in the tensor's name
    wins, other tensors use the global weights. ``only``: merge just the tensors whose name
    matches this regex; the rest come from the first input.

    The inputs and the base must share an architecture (config.json) and hold the same
    floating-point tensors with the same shapes; the first mismatch raises a one-line
    `EmbedtuneError` naming the file and the tensor, before anything is written. Non-floating
    tensors (position ids) are copied from the first input and must be identical in every input
    that has them. The output holds exactly the first input's tensors in its dtypes, plus every
    other file of the first input (config, tokenizer, sentence-transformers modules), so it
    loads and pools like the first. Differing pooling, prompts or max length between inputs give
    a warning. ``out`` must not be an input or the base, nor exist unless ``overwrite``; it is
    written atomically, with a record of the merge in ``embedtune_merge.json``.
    """
    layer_t = layer_t or []
    density = _check_method(method, base, sparsify, density, t, weights, layer_t)
    base_weights = _resolve_weights(len(inputs), t, weights, layer_t)
    schedule = [(_compile(pattern, "layer_t"), value) for pattern, value in layer_t]
    only_pattern = _compile(only, "only") if only is not None else None
    labels = [*inputs, base] if base is not None else list(inputs)
    folders = [_model_folder(name) for name in labels]
    check_output(out, "--out", folder=True, overwrite=overwrite, inputs=tuple(folders))
    _check_architecture(labels, folders)
    with contextlib.ExitStack() as stack:
        opened = [_open_weights(folder, label, stack) for folder, label in zip(folders, labels)]
        _check_tensors(labels, opened)
        _warn_if_settings_differ(inputs, folders[: len(inputs)])
        base_opened = opened[len(inputs)] if base is not None else None
        merge = Merge(
            method, opened[: len(inputs)], base_opened, base_weights, schedule, only_pattern, sparsify, density, seed, block_elements
        )
        with atomic_folder(out) as tmp:
            counts = _write_merged(merge, tmp, max_shard_bytes, show_progress)
            distances = merge.distances()
            _copy_model_files(folders[0], tmp)
            record = {
                "method": method, "inputs": inputs, "base": base, "weights": base_weights, "layer_t": layer_t, "only": only,
                "sparsify": sparsify, "density": density, "seed": seed if sparsify == "dare" else None, "distances": distances,
                "embedtune_version": __version__,
            }  # fmt: skip
            (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            (tmp / CARD_FILE).write_text(_card(out, inputs, folders, record), encoding="utf-8")
    return {
        "out": str(out),
        "method": method,
        "inputs": len(inputs),
        "labels": list(inputs),
        "base": base,
        **counts,
        "distances": distances,
    }


def _card(out: str, inputs: list[str], folders: list[Path], record: dict) -> str:
    """The merged model's card: its inputs and weights, the method, and (against a parent) the
    task-vector settings; the models the inputs started from are its base models."""
    task_vectors = {}
    if record["base"] is not None:
        task_vectors = {
            "task vectors against": f"`{record['base']}`",
            **({"sparsify": f"{record['sparsify']}, density {record['density']:g}"} if record["sparsify"] else {}),
        }
    return merge_card(
        str(out), saved_model(folders[0]), inputs, record["method"], record["weights"], layer_t=record["layer_t"], only=record["only"],
        base_model_ids=[name for folder in folders[: len(inputs)] for name in card_base_models(folder)], task_vectors=task_vectors,
    )  # fmt: skip


# --- checks ------------------------------------------------------------------------------


def _check_method(method: str, base: str | None, sparsify: str | None, density: float | None, t, weights, layer_t) -> float | None:
    """The options that go with ``method``, checked; returns the density that applies (or None)."""
    if method not in METHODS:
        raise EmbedtuneError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    if method in ("ties", "model_stock") and base is None:
        raise EmbedtuneError(f"{method} merges task vectors: give the model the checkpoints were fine-tuned from as base (--base PARENT)")
    if method == "model_stock" and (t is not None or weights is not None or layer_t):
        raise EmbedtuneError("model_stock sets its own ratio from the angle between the task vectors; it takes no t, weights or layer_t")
    if sparsify is not None:
        if sparsify not in SPARSIFIERS:
            raise EmbedtuneError(f"unknown sparsify '{sparsify}' (choose from {', '.join(SPARSIFIERS)})")
        if method not in ("linear", "ties"):
            raise EmbedtuneError(f"sparsify applies to the task vectors of linear and ties merges, not {method}")
        if base is None:
            raise EmbedtuneError("sparsify drops entries of task vectors: give the parent model as base (--base PARENT)")
    sparsifies = sparsify is not None or method == "ties"
    if density is not None and not sparsifies:
        raise EmbedtuneError("density is the share of each task vector that sparsify keeps; give sparsify (or use ties)")
    if density is not None and not 0 < density <= 1:
        raise EmbedtuneError(f"density must be in (0, 1], the share of each task vector kept; got {density}")
    return (TIES_DENSITY if density is None else density) if sparsifies else None


def _resolve_weights(n: int, t: float | None, weights: list[float] | None, layer_t: list[tuple[str, float]]) -> list[float]:
    """One weight per input from ``t``, ``weights`` or neither (equal weights), checked."""
    if n < 2:
        raise EmbedtuneError(f"merging needs at least two models, got {n}")
    if t is not None and weights is not None:
        raise EmbedtuneError("give t or weights, not both")
    if (t is not None or layer_t) and n != 2:
        raise EmbedtuneError(f"t and layer_t interpolate between two models; for {n} models give weights")
    if t is not None:
        _check_t(t, "t")
    for pattern, value in layer_t:
        _check_t(value, f"layer_t '{pattern}'")
    weights = [1 - t, t] if t is not None else weights or [1.0] * n
    if len(weights) != n:
        raise EmbedtuneError(f"weights: one per model ({n}), got {len(weights)}")
    if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
        raise EmbedtuneError(f"weights must be >= 0 with a positive sum, got {weights}")
    return [float(w) for w in weights]


def _check_t(value: float, name: str) -> None:
    if not 0 <= value <= 1:
        raise EmbedtuneError(f"{name} must be between 0 (first model) and 1 (second model), got {value}")


def _compile(pattern: str, name: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise EmbedtuneError(f"{name}: bad regular expression '{pattern}' ({error})") from None


def _model_folder(name: str) -> Path:
    """The folder of an input (a path or a packaged model's name)."""
    folder = Path(resolve_model_path(name))
    if not folder.is_dir():
        raise EmbedtuneError(f"{name}: no such model folder")
    return folder


def _check_architecture(labels: list[str], folders: list[Path]) -> None:
    """Every input's config.json agrees with the first's on model type and sizes."""
    configs = [read_json(folder / "config.json", "model config") for folder, label in zip(folders, labels)]
    for label, config in zip(labels[1:], configs[1:]):
        for key in ARCHITECTURE_KEYS:
            if config.get(key) != configs[0].get(key):
                raise EmbedtuneError(f"{label}/config.json: {key} is {config.get(key)!r}, {labels[0]} has {configs[0].get(key)!r}")


def _open_weights(folder: Path, label: str, stack: contextlib.ExitStack) -> dict[str, tuple[str, SafetensorsFile]]:
    """Tensor name -> (its file, for messages; the open `SafetensorsFile`), in file order, for a
    folder with ``model.safetensors`` or sharded weights listed in ``model.safetensors.index.json``."""
    if (folder / WEIGHTS).is_file():
        weights = _open(folder / WEIGHTS, f"{label}/{WEIGHTS}", stack)
        return {name: (weights.label, weights) for name in weights.header}
    if (folder / WEIGHTS_INDEX).is_file():
        weight_map = read_json(folder / WEIGHTS_INDEX, "weights index").get("weight_map", {})
        files = {file: _open(folder / file, f"{label}/{file}", stack) for file in dict.fromkeys(weight_map.values())}
        return {name: (files[file].label, files[file]) for name, file in weight_map.items()}
    raise EmbedtuneError(f"{label}: no {WEIGHTS} or {WEIGHTS_INDEX} (merging needs safetensors weights)")


def _open(path: Path, label: str, stack: contextlib.ExitStack) -> SafetensorsFile:
    """An open `SafetensorsFile`, closed with ``stack``."""
    weights = SafetensorsFile(path, label)
    stack.callback(weights.close)
    return weights


class SafetensorsFile:
    """A safetensors file read by plain reads (no memory map): an 8-byte little-endian header
    length, a JSON header {name: {"dtype", "shape", "data_offsets": [begin, end]}} (offsets from
    the end of the header), then the tensors' bytes, row-major and little-endian."""

    def __init__(self, path: Path, label: str):
        self.label = label
        try:
            self.file = path.open("rb")
            (length,) = struct.unpack("<Q", self.file.read(8))
            header = json.loads(self.file.read(length))
            header.pop("__metadata__", None)
            self.header = {
                name: (DTYPES[entry["dtype"]], tuple(entry["shape"]), entry["dtype"], entry["data_offsets"][0])
                for name, entry in header.items()
            }
        except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as error:
            raise EmbedtuneError(f"{label}: unreadable safetensors file ({type(error).__name__}: {error})") from None
        self.data_start = 8 + length

    def close(self) -> None:
        self.file.close()

    def describe(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype such as "F32" or "I64")."""
        _, shape, dtype_name, _ = self.header[name]
        return shape, dtype_name

    def read(self, name: str, start: int = 0, stop: int | None = None) -> Tensor:
        """Tensor ``name``, or its rows start:stop (along the first dimension)."""
        dtype, shape, _, offset = self.header[name]
        if not shape:
            return self._read_bytes(offset, dtype, 1).reshape(())
        stop = shape[0] if stop is None else min(stop, shape[0])
        row = math.prod(shape[1:])
        return self._read_bytes(offset + start * row * dtype.itemsize, dtype, (stop - start) * row).reshape(stop - start, *shape[1:])

    def _read_bytes(self, offset: int, dtype: torch.dtype, count: int) -> Tensor:
        if count == 0:
            return torch.empty(0, dtype=dtype)
        buffer = bytearray(count * dtype.itemsize)
        self.file.seek(self.data_start + offset)
        if self.file.readinto(buffer) != len(buffer):
            raise EmbedtuneError(f"{self.label}: truncated safetensors file")
        return torch.frombuffer(buffer, dtype=dtype)


def _describe(source: tuple[str, SafetensorsFile], name: str) -> tuple[tuple[int, ...], str]:
    """(shape, safetensors dtype such as "F32" or "I64") without reading the tensor."""
    return source[1].describe(name)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))  # F64, F32, F16, BF16, F8_E4M3, ...


def _load(source: tuple[str, SafetensorsFile], name: str) -> Tensor:
    return source[1].read(name)


def _check_tensors(labels: list[str], opened: list[dict[str, tuple[str, object]]]) -> None:
    """Every input holds exactly the first's floating-point tensors, with the same shapes.

    Non-floating tensors (buffers such as position ids, which newer transformers no longer
    save) may be absent, but where two inputs both have one its values must be identical: it is
    copied from the first input, not merged.
    """
    first = opened[0]
    for label, tensors in zip(labels[1:], opened[1:]):
        files = {file for file, _ in tensors.values()}
        where = files.pop() if len(files) == 1 else f"{label}/{WEIGHTS_INDEX}"
        for name, source in first.items():
            shape, dtype = _describe(source, name)
            if name not in tensors:
                if _is_float(dtype):
                    raise EmbedtuneError(f"{where}: no tensor '{name}', {labels[0]} has it")
                continue
            file = tensors[name][0]
            other_shape, other_dtype = _describe(tensors[name], name)
            if other_shape != shape:
                raise EmbedtuneError(f"{file}: tensor '{name}' has shape {other_shape}, {labels[0]} has {shape}")
            if _is_float(other_dtype) != _is_float(dtype):
                raise EmbedtuneError(f"{file}: tensor '{name}' has dtype {other_dtype}, {labels[0]} has {dtype}")
            if not _is_float(dtype) and not torch.equal(_load(source, name), _load(tensors[name], name)):
                raise EmbedtuneError(
                    f"{file}: tensor '{name}' ({dtype}) differs from {labels[0]}'s; non-floating tensors are copied, not merged"
                )
        for name, source in tensors.items():
            if name not in first and _is_float(_describe(source, name)[1]):
                raise EmbedtuneError(f"{source[0]}: tensor '{name}' is not in {labels[0]}")


def _warn_if_settings_differ(labels: list[str], folders: list[Path]) -> None:
    """Warn when an input pools, normalises, truncates or prompts differently from the first,
    whose settings the merged model keeps."""
    first = saved_settings(folders[0])
    for label, folder in zip(labels[1:], folders[1:]):
        other = saved_settings(folder)
        keys = sorted(first.keys() | other.keys())
        differences = [f"{key} {other.get(key)!r} ({labels[0]}: {first.get(key)!r})" for key in keys if other.get(key) != first.get(key)]
        if differences:
            warnings.warn(f"{label}: {', '.join(differences)}; the merged model keeps {labels[0]}'s settings", stacklevel=3)


# --- merge one tensor in row blocks --------------------------------------------------------


class Merge:
    """One merge: the opened inputs and base, the method and its settings. `tensor` merges one
    tensor in row blocks and keeps the counts and the summed Gram matrix for the report."""

    def __init__(
        self,
        method: str,
        inputs: list[dict],
        base: dict | None,
        weights: list[float],
        schedule: list[tuple[re.Pattern, float]],
        only: re.Pattern | None,
        sparsify: str | None,
        density: float | None,
        seed: int,
        block_elements: int,
    ):
        self.method, self.inputs, self.base = method, inputs, base
        self.weights, self.schedule, self.only = weights, schedule, only
        self.sparsify = "magnitude" if method == "ties" and sparsify is None else sparsify
        self.density, self.seed, self.block_elements = density, seed, block_elements
        self.counts = {"tensors": len(inputs[0]), "merged": 0, "lerp_fallbacks": 0, "copied": 0}
        self.total_gram = torch.zeros(len(inputs), len(inputs), dtype=torch.float64)
        self.base_squared = 0.0

    def tensor(self, name: str) -> Iterator[Tensor]:
        """The output blocks of tensor ``name`` in the first input's dtype: merged, or copied from
        the first input when it is not floating-point or ``only`` does not match its name.
        Methods with one coefficient per input get them from the tensor's Gram matrix and
        combine the blocks; sparsified ones work entry by entry."""
        first = self.inputs[0]
        if not _is_float(_describe(first[name], name)[1]) or (self.only is not None and not self.only.search(name)):
            self.counts["copied"] += 1
            return (blocks[0] for _, blocks in self.blocks(name, [first]))
        weights = _tensor_weights(name, self.weights, self.schedule)
        gram_matrix, base_squared = self.statistics(name)
        self.total_gram += gram_matrix
        self.base_squared += base_squared
        self.counts["merged"] += 1
        if self.sparsify is not None:
            return self._sparse_blocks(name, weights)
        coefficients, fell_back = self._coefficients(weights, gram_matrix)
        self.counts["lerp_fallbacks"] += fell_back
        return (combine(coefficients, inputs, base).to(inputs[0].dtype) for _, inputs, base in self._blocks_with_base(name))

    def distances(self) -> dict:
        """How far apart the inputs were over the merged tensors (`_distances`)."""
        return _distances(self.total_gram, self.base_squared, self.base is not None)

    def blocks(self, name: str, sources: list[dict]) -> Iterator[tuple[int, list[Tensor]]]:
        """(flat index of the block's first entry, the block of every source) over blocks of
        rows of tensor ``name``, about ``block_elements`` entries each, in the stored dtype."""
        files = [source[name][1] for source in sources]
        shape, _ = files[0].describe(name)
        if not shape:  # a scalar
            yield 0, [file.read(name) for file in files]
            return
        row = math.prod(shape[1:])
        rows = max(1, self.block_elements // max(row, 1))
        for start in range(0, shape[0], rows):
            yield start * row, [file.read(name, start, start + rows) for file in files]

    def statistics(self, name: str) -> tuple[Tensor, float]:
        """(the Gram matrix of the inputs' task vectors, or of their weights without a base;
        ‖θ_base‖², 0 without a base) of tensor ``name``, summed over row blocks in float64."""
        total, base_squared = torch.zeros(len(self.inputs), len(self.inputs), dtype=torch.float64), 0.0
        for _, inputs, base in self._blocks_with_base(name):
            total += gram(task_vectors(inputs, base))
            if base is not None:
                base_squared += float(base.to(torch.float64).pow(2).sum())
        return total, base_squared

    def _blocks_with_base(self, name: str) -> Iterator[tuple[int, list[Tensor], Tensor | None]]:
        """(flat index of the first entry, the inputs' blocks, the base's block or None)."""
        if self.base is None:
            return ((start, blocks, None) for start, blocks in self.blocks(name, self.inputs))
        return ((start, blocks[:-1], blocks[-1]) for start, blocks in self.blocks(name, [*self.inputs, self.base]))

    def _coefficients(self, weights: list[float], gram_matrix: Tensor) -> tuple[Tensor, bool]:
        """One coefficient per input, and whether slerp fell back to lerp."""
        if self.method == "slerp":
            return slerp_coefficients(gram_matrix, weights)
        if self.method == "model_stock":
            return model_stock_coefficients(gram_matrix), False
        return linear_coefficients(weights), False

    def _sparse_blocks(self, name: str, weights: list[float]) -> Iterator[Tensor]:
        """θ_base + the TIES mean (ties) or the weighted mean (linear) of the task vectors
        trimmed by magnitude or dropped at random (DARE), block by block."""
        n = len(self.inputs)
        thresholds = [self._magnitude_threshold(name, i) for i in range(n)] if self.sparsify == "magnitude" else None
        keys = [_stream_key(self.seed, i, name) for i in range(n)]
        for start, inputs, base in self._blocks_with_base(name):
            base32 = base.to(torch.float32)
            deltas = task_vectors(inputs, base32)
            if thresholds is not None:
                deltas = [trim(delta, threshold) for delta, threshold in zip(deltas, thresholds)]
            else:
                deltas = [dare(delta, self.density, key, start) for delta, key in zip(deltas, keys)]
            merged = ties_mean(deltas, weights) if self.method == "ties" else combine(linear_coefficients(weights), deltas)
            yield (base32 + merged).to(inputs[0].dtype)

    def _magnitude_threshold(self, name: str, index: int) -> float:
        """The trim threshold of input ``index``'s task vector in tensor ``name``."""

        def deltas() -> Iterator[Tensor]:
            for _, (block, base) in self.blocks(name, [self.inputs[index], self.base]):
                yield block.to(torch.float32) - base.to(torch.float32)

        return magnitude_threshold(deltas, self.density)


def _stream_key(seed: int, index: int, name: str) -> int:
    """The DARE random stream of one checkpoint's tensor: a 64-bit hash of (seed, index, name)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}\0{index}\0{name}".encode(), digest_size=8).digest(), "little")


# --- write -------------------------------------------------------------------------------


def _tensor_weights(name: str, weights: list[float], schedule: list[tuple[re.Pattern, float]]) -> list[float]:
    """The weights for one tensor: (1 − t, t) from the first schedule regex found in its name."""
    for pattern, t in schedule:
        if pattern.search(name):
            return [1 - t, t]
    return weights


def _write_merged(merge: Merge, folder: Path, max_shard_bytes: int, show_progress: bool) -> dict:
    """Write every tensor of the first input, in its order, into shards of at most
    ``max_shard_bytes`` (a single tensor may exceed it), named as transformers names them:
    ``model.safetensors`` alone, or ``model-00001-of-0000N.safetensors`` ... with
    ``model.safetensors.index.json``. Returns the counts."""
    first = merge.inputs[0]
    shards = _plan_shards(first, max_shard_bytes)
    files = [WEIGHTS] if len(shards) == 1 else [f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors" for index in range(len(shards))]
    total_bytes = 0
    with progress_bar("merging", len(first), enabled=show_progress) as advance:
        for file, names in zip(files, shards):
            total_bytes += _write_safetensors(folder / file, {name: _describe(first[name], name) for name in names}, merge.tensor, advance)
    if len(shards) > 1:
        weight_map = {name: file for file, names in zip(files, shards) for name in names}
        index_json = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
        (folder / WEIGHTS_INDEX).write_text(json.dumps(index_json, indent=2) + "\n", encoding="utf-8")
    return {**merge.counts, "bytes": total_bytes, "shards": len(shards)}


def _plan_shards(first: dict, max_shard_bytes: int) -> list[list[str]]:
    """The first input's tensor names split, in order, into shards of at most ``max_shard_bytes``
    (a single tensor may exceed it), as transformers shards."""
    shards, size = [[]], 0
    for name, source in first.items():
        shape, dtype = _describe(source, name)
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def _write_safetensors(
    path: Path,
    described: dict[str, tuple[tuple[int, ...], str]],
    tensor_blocks: Callable[[str], Iterator[Tensor]],
    advance: Callable[[], None],
) -> int:
    """Write a safetensors file block by block: the header (every tensor's dtype, shape and byte
    range, known from ``described``) first, then each tensor's blocks in order, little-endian as
    the format requires. Returns the bytes of tensor data."""
    header, offset = {}, 0
    for name, (shape, dtype) in described.items():
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}  # transformers expects format "pt"
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        for name in described:
            for block in tensor_blocks(name):
                file.write(block.contiguous().reshape(-1).view(torch.uint8).numpy())
            advance()
    return offset


def _distances(total_gram: Tensor, base_squared: float, has_base: bool) -> dict:
    """How far apart the inputs were, over the merged tensors: with a base, each task vector's
    relative norm ‖θᵢ − θ_base‖ / ‖θ_base‖; without one, each input's distance to the first,
    ‖θᵢ − θ₁‖ / ‖θ₁‖; and the cosines between the task vectors (without a base, the weights)."""
    norms = total_gram.diagonal().clamp(min=0).sqrt()
    products = torch.outer(norms, norms)
    cosines = torch.where(products > 0, total_gram / products.clamp(min=1e-300), float("nan"))
    if has_base:
        relative = norms / math.sqrt(base_squared) if base_squared > 0 else torch.full_like(norms, float("nan"))
    else:
        relative = (total_gram.diagonal() + total_gram[0, 0] - 2 * total_gram[0]).clamp(min=0).sqrt() / norms[0]
    return {"relative_to": "base" if has_base else "first", "relative_norms": relative.tolist(), "cosines": cosines.tolist()}


def _copy_model_files(source: Path, target: Path) -> None:
    """Copy everything but the weights from ``source``: config.json, tokenizer files,
    sentence-transformers modules (modules.json, 1_Pooling/, 2_Normalize/, ...), embedtune.json."""
    for entry in sorted(source.iterdir()):
        if any(fnmatch.fnmatch(entry.name, pattern) for pattern in NOT_COPIED):
            continue
        if entry.is_dir():
            shutil.copytree(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
