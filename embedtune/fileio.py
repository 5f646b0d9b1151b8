"""Files a command writes and reads back.

- `check_output`: before anything runs, an output path is refused in one line when it would
  replace something without the user's say-so, is one of the inputs, or cannot be written.
- `atomic_folder` / `atomic_file`: an output is either absent, the previous complete version or
  the new one; the temporary siblings a killed process left behind are cleared by the next
  writer (or, for a folder caught between its two renames, put back).
- `read_json` / `json_text`: JSON read back or refused in one line; written without bare NaN.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedtune.errors import DataError, EmbedtuneError


def check_output(path: str | Path, option: str, *, folder: bool, overwrite: bool, inputs: tuple = ()) -> Path:
    """``path`` as a `Path`, or an `EmbedtuneError` naming ``option`` when writing there would
    fail or lose something: it is one of ``inputs``; it exists and ``overwrite`` is false; it is
    a file where a folder goes or the reverse; the nearest existing folder above it is a file or
    not writable."""
    target = Path(path)
    for source in inputs:
        if source and _same_path(target, Path(source)):
            raise EmbedtuneError(f"{option} {target} is also an input ({source}): write the output elsewhere")
    if target.exists():
        if folder and not target.is_dir():
            raise EmbedtuneError(f"{option} {target} is a file, expected a folder")
        if not folder and target.is_dir():
            raise EmbedtuneError(f"{option} {target} is a folder, expected a file")
        if not overwrite:
            raise EmbedtuneError(f"{option} {target} exists; pass --overwrite to replace it")
    above = target.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise EmbedtuneError(f"{option} {target}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise EmbedtuneError(f"{option} {target}: {above} is not writable")
    return target


def _same_path(first: Path, second: Path) -> bool:
    """Whether two paths name the same file (a link or another spelling counts as the same)."""
    try:
        return first.exists() and second.exists() and first.samefile(second)
    except OSError:
        return False


STALE_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


def clear_stale_siblings(target: Path) -> None:
    """Remove the temporary siblings of ``target`` (``.NAME.tmp-PID``, ``.NAME.old-PID``) that
    a process no longer running left behind; a ``.old`` copy whose target is missing (a kill
    between the two renames of `atomic_folder`) is renamed back instead: it is the last
    complete version."""
    if not target.parent.is_dir():
        return
    for sibling in target.parent.iterdir():
        match = STALE_SIBLING.match(sibling.name)
        if not match or match["name"] != target.name or _running(int(match["pid"])):
            continue
        if match["kind"] == "old" and not target.exists():
            sibling.rename(target)
        elif sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces ``folder``.

    A crash or exception inside the block leaves ``folder`` untouched (the partial temporary
    folder is removed), so nothing ever loads a half-written model.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_siblings(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)  # two renames: a crash between them leaves the old copy recoverable
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write one file to; on success it replaces ``path`` by an
    atomic rename, on an exception it is removed and ``path`` stays as it was."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale_siblings(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write a text file via a temporary sibling and an atomic rename."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON value in ``path``, or a `DataError` naming the file, ``what`` it should be and
    where it is broken."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise DataError(f"{path}: unreadable {what} ({error.strerror or error})") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: unreadable {what} (invalid JSON: {error.msg} at line {error.lineno} column {error.colno})") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: unreadable {what} (not UTF-8 text at byte {error.start})") from None


def json_text(value: Any) -> str:
    """``value`` as indented JSON text, with NaN and infinities written as null: bare ``NaN`` is
    not JSON, and other tools refuse to read it."""
    return json.dumps(_finite_or_none(value), indent=2) + "\n"


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value
