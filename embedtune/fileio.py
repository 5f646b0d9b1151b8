"""Files a run keeps: atomic writes (an output is either absent, the previous complete version, or
the new one) and JSON read back or refused in one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from embedtune.errors import DataError


@contextlib.contextmanager
def atomic_folder(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder to write into; on success it replaces ``folder``.

    A crash or exception inside the block leaves ``folder`` untouched (the partial temporary
    folder is removed), so nothing ever loads a half-written model.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
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
