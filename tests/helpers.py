"""The `embedtune` command run as a user runs it, for the tests that check it end to end."""

from __future__ import annotations

import os
import subprocess
import sys


def _command(args: tuple[str, ...]) -> list[str]:
    return [sys.executable, "-m", "embedtune", *args]


def _environment() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "500"}  # offline; rich wraps no line


def embedtune(*args: str, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m embedtune ARGS`` to completion, output captured as text."""
    return subprocess.run(_command(args), capture_output=True, text=True, cwd=cwd, env=_environment(), timeout=timeout)


def start_embedtune(*args: str) -> subprocess.Popen:
    """``python -m embedtune ARGS`` in the background, for tests that signal or kill it."""
    return subprocess.Popen(_command(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_environment())
