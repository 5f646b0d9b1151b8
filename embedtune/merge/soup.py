"""Merge model folders tensor by tensor over safetensors files.

All inputs are opened lazily (``safe_open`` maps the files, nothing is read up front); each output
tensor is read from every input, merged and added to the current output shard, which is written
once it reaches ``max_shard_bytes``. Peak memory is about one output shard plus a few float64
copies of one tensor per input, so a model larger than RAM merges with a smaller
``max_shard_bytes``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from embedtune import __version__
from embedtune.errors import EmbedtuneError
from embedtune.fileio import atomic_folder, read_json
from embedtune.merge.methods import linear_soup, slerp_soup
from embedtune.model import resolve_model_path, saved_settings
from embedtune.console import progress_bar

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 10**9  # transformers' default shard size, "5GB"
METHODS = ("slerp", "linear")
# config.json keys that must agree: the same architecture at the same size
ARCHITECTURE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
# not copied from the first input: weights in any format (they would be stale) and hidden files
NOT_COPIED = ("*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.h5", "*.msgpack", "*.pt", "*.onnx", "onnx", "openvino", ".*")
MERGE_RECORD = "embedtune_merge.json"


def merge_models(
    inputs: list[str],
    out: str,
    method: str = "slerp",
    t: float | None = None,
    weights: list[float] | None = None,
    layer_t: list[tuple[str, float]] | None = None,
    only: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    show_progress: bool = False,
) -> dict:
    """Merge the model folders ``inputs`` into ``out`` and return counts for a summary.

    ``method``: "slerp" (`slerp_soup`: two models by slerp, more by their spherical mean) or
    "linear" (`linear_soup`, the weighted average). Each input gets a weight: ``weights`` (one per
    input, >= 0), or for two inputs ``t`` (weights 1 − t and t: t = 0 is the first model, 1 the
    second), else all equal. ``layer_t`` [(regex, t), ...] sets a two-model t per tensor: the
    first regex found in the tensor's name wins, other tensors use the global weights.
    ``only``: merge just the tensors whose name matches this regex; the rest come from the first
    input.

    The inputs must share an architecture (config.json) and hold the same floating-point tensors
    with the same shapes; the first mismatch raises a one-line `EmbedtuneError` naming the file
    and the tensor, before anything is written. Non-floating tensors (position ids) are copied
    from the first input and must be identical in every input that has them. The output holds
    exactly the first input's tensors in its dtypes, plus every other file of the first input
    (config, tokenizer, sentence-transformers modules), so it loads and pools like the first.
    Differing pooling, prompts or max length between inputs give a warning. ``out`` is written
    atomically, with a record of the merge in ``embedtune_merge.json``.
    """
    if method not in METHODS:
        raise EmbedtuneError(f"unknown merge method '{method}' (choose from {', '.join(METHODS)})")
    layer_t = layer_t or []
    base_weights = _resolve_weights(len(inputs), t, weights, layer_t)
    schedule = [(_compile(pattern, "layer_t"), value) for pattern, value in layer_t]
    only_pattern = _compile(only, "only") if only is not None else None
    folders = [_model_folder(name, out) for name in inputs]
    _check_architecture(inputs, folders)
    with contextlib.ExitStack() as stack:
        opened = [_open_weights(folder, label, stack) for folder, label in zip(folders, inputs)]
        _check_tensors(inputs, opened)
        _warn_if_settings_differ(inputs, folders)
        with atomic_folder(out) as tmp:
            counts = _write_merged(opened, method, base_weights, schedule, only_pattern, tmp, max_shard_bytes, show_progress)
            _copy_model_files(folders[0], tmp)
            record = {"method": method, "inputs": inputs, "weights": base_weights, "layer_t": layer_t, "only": only, "embedtune_version": __version__}
            (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {"out": str(out), "method": method, "inputs": len(inputs), **counts}


# --- checks ------------------------------------------------------------------------------


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


def _model_folder(name: str, out: str) -> Path:
    """The folder of an input (a path or a packaged model's name), which must not be ``out``."""
    folder = Path(resolve_model_path(name))
    if not folder.is_dir():
        raise EmbedtuneError(f"{name}: no such model folder")
    if folder.resolve() == Path(out).resolve():
        raise EmbedtuneError(f"{name}: the output folder is one of the inputs; write the merge to a new folder")
    return folder


def _check_architecture(labels: list[str], folders: list[Path]) -> None:
    """Every input's config.json agrees with the first's on model type and sizes."""
    configs = [read_json(folder / "config.json", "model config") for folder, label in zip(folders, labels)]
    for label, config in zip(labels[1:], configs[1:]):
        for key in ARCHITECTURE_KEYS:
            if config.get(key) != configs[0].get(key):
                raise EmbedtuneError(f"{label}/config.json: {key} is {config.get(key)!r}, {labels[0]} has {configs[0].get(key)!r}")


def _open_weights(folder: Path, label: str, stack: contextlib.ExitStack) -> dict[str, tuple[str, object]]:
    """Tensor name -> (its file, for messages; a lazy ``safe_open`` handle), in file order, for a
    folder with ``model.safetensors`` or sharded weights listed in ``model.safetensors.index.json``."""
    if (folder / WEIGHTS).is_file():
        handle = _open(folder / WEIGHTS, label, stack)
        return {name: (f"{label}/{WEIGHTS}", handle) for name in handle.keys()}
    if (folder / WEIGHTS_INDEX).is_file():
        weight_map = read_json(folder / WEIGHTS_INDEX, "weights index").get("weight_map", {})
        handles = {file: _open(folder / file, label, stack) for file in dict.fromkeys(weight_map.values())}
        return {name: (f"{label}/{file}", handles[file]) for name, file in weight_map.items()}
    raise EmbedtuneError(f"{label}: no {WEIGHTS} or {WEIGHTS_INDEX} (merging needs safetensors weights)")


def _open(path: Path, label: str, stack: contextlib.ExitStack):
    """A lazy ``safe_open`` handle, closed with ``stack``."""
    try:
        return stack.enter_context(safe_open(str(path), framework="pt"))
    except Exception as error:  # safetensors' SafetensorError, OSError
        raise EmbedtuneError(f"{label}/{path.name}: unreadable safetensors file ({error})") from None


def _describe(source: tuple[str, object], name: str) -> tuple[tuple[int, ...], str]:
    """(shape, safetensors dtype such as "F32" or "I64") without reading the tensor."""
    view = source[1].get_slice(name)
    return tuple(view.get_shape()), view.get_dtype()


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))  # F64, F32, F16, BF16, F8_E4M3, ...


def _load(source: tuple[str, object], name: str) -> Tensor:
    return source[1].get_tensor(name)


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
                raise EmbedtuneError(f"{file}: tensor '{name}' ({dtype}) differs from {labels[0]}'s; non-floating tensors are copied, not merged")
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


# --- merge and write ---------------------------------------------------------------------


def _tensor_weights(name: str, weights: list[float], schedule: list[tuple[re.Pattern, float]]) -> list[float]:
    """The weights for one tensor: (1 − t, t) from the first schedule regex found in its name."""
    for pattern, t in schedule:
        if pattern.search(name):
            return [1 - t, t]
    return weights


def _merge_tensor(name: str, opened: list[dict], method: str, weights: list[float], only: re.Pattern | None) -> tuple[Tensor, bool, bool]:
    """(tensor, merged, fell back to lerp) for one name. The first input's tensor is copied when
    it is not floating-point or ``only`` does not match the name; else every input's is merged."""
    first = _load(opened[0][name], name)
    if not first.is_floating_point() or (only is not None and not only.search(name)):
        return first, False, False
    tensors = [first, *(_load(tensors[name], name) for tensors in opened[1:])]
    if method == "linear":
        return linear_soup(tensors, weights), True, False
    merged, fell_back = slerp_soup(tensors, weights)
    return merged, True, fell_back


def _write_merged(
    opened: list[dict],
    method: str,
    weights: list[float],
    schedule: list[tuple[re.Pattern, float]],
    only: re.Pattern | None,
    folder: Path,
    max_shard_bytes: int,
    show_progress: bool,
) -> dict:
    """Merge every tensor of the first input, in its order, into shards of at most
    ``max_shard_bytes`` (a single tensor may exceed it); return the counts."""
    counts = {"tensors": len(opened[0]), "merged": 0, "lerp_fallbacks": 0, "copied": 0, "bytes": 0}
    shards: list[list[str]] = []
    shard: dict[str, Tensor] = {}
    shard_bytes = 0
    with progress_bar("merging", len(opened[0]), enabled=show_progress) as advance:
        for name in opened[0]:
            tensor, merged, fell_back = _merge_tensor(name, opened, method, _tensor_weights(name, weights, schedule), only)
            counts["merged" if merged else "copied"] += 1
            counts["lerp_fallbacks"] += fell_back
            size = tensor.numel() * tensor.element_size()
            if shard and shard_bytes + size > max_shard_bytes:
                shards.append(_save_shard(shard, folder, len(shards)))
                shard, shard_bytes = {}, 0
            shard[name] = tensor
            shard_bytes += size
            counts["bytes"] += size
            advance()
    shards.append(_save_shard(shard, folder, len(shards)))
    _name_shards(folder, shards, counts["bytes"])
    return {**counts, "shards": len(shards)}


def _save_shard(shard: dict[str, Tensor], folder: Path, index: int) -> list[str]:
    """Write a shard under a temporary name; return its tensor names."""
    save_file(shard, str(folder / f".shard-{index}.safetensors"), metadata={"format": "pt"})  # transformers expects format "pt"
    return list(shard)


def _name_shards(folder: Path, shards: list[list[str]], total_bytes: int) -> None:
    """Rename the shards as transformers does: ``model.safetensors`` alone, or
    ``model-00001-of-0000N.safetensors`` ... with ``model.safetensors.index.json``."""
    if len(shards) == 1:
        (folder / ".shard-0.safetensors").rename(folder / WEIGHTS)
        return
    weight_map = {}
    for index, names in enumerate(shards):
        file = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        (folder / f".shard-{index}.safetensors").rename(folder / file)
        weight_map.update(dict.fromkeys(names, file))
    index_json = {"metadata": {"total_size": total_bytes}, "weight_map": weight_map}
    (folder / WEIGHTS_INDEX).write_text(json.dumps(index_json, indent=2) + "\n", encoding="utf-8")


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
