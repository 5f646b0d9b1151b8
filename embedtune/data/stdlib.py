"""The embedded default data set: Python's own standard library, turned into retrieval pairs.

Every machine that runs embedtune has the standard library's source on disk, so it is real text
that needs no download. Each documented function or method becomes one pair:

- query: the docstring's summary (its first sentence), e.g. "Return the number of items in the queue."
- document: the function's source with the docstring removed, so the answer is never a copy of
  the question.

Modules are split into train and eval by a stable hash of the module name, so no evaluation
module is ever trained on and the split is the same on every run and every machine with the same
Python. Functions of the same module are each other's natural hard negatives (same vocabulary,
different behaviour); up to ``max_negatives`` of them are attached to each training pair.
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from pathlib import Path

from embedtune.data.types import Pair, RetrievalSet, TrainEvalData

# Packages that are tests, demos or vendored code rather than library API.
_SKIPPED_PARTS = {"test", "tests", "idlelib", "turtledemo", "lib2to3", "site-packages", "ensurepip", "pydoc_data"}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _summary(docstring: str) -> str:
    """First sentence of a docstring's first paragraph, on one line."""
    paragraph = docstring.strip().split("\n\n")[0]
    text = " ".join(line.strip() for line in paragraph.splitlines())
    return _SENTENCE_END.split(text, maxsplit=1)[0].strip()


def _source_without_docstring(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str:
    doc_node = node.body[0]
    start, end = node.lineno - 1, node.end_lineno
    body = lines[start : doc_node.lineno - 1] + lines[doc_node.end_lineno : end]
    indent = len(body[0]) - len(body[0].lstrip())
    return "\n".join(line[indent:] for line in body).strip()


def _module_pairs(path: Path, root: Path, min_summary_words: int, min_body_lines: int) -> list[tuple[str, str, str]]:
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []  # a few stdlib files are intentionally invalid (test fixtures, other encodings)
    module = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
    lines = source.splitlines()
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        docstring = ast.get_docstring(node)
        if not docstring or len(node.body) < 2:
            continue
        summary = _summary(docstring)
        code = _source_without_docstring(node, lines)
        if len(summary.split()) < min_summary_words or code.count("\n") + 1 < min_body_lines:
            continue
        pairs.append((module, summary, code))
    return pairs


def collect(root: Path | None = None, min_summary_words: int = 4, min_body_lines: int = 3) -> list[tuple[str, str, str]]:
    """All (module, summary, code) triples of the standard library, deduplicated by summary and code."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    seen_queries: set[str] = set()
    seen_docs: set[str] = set()
    triples = []
    for path in sorted(root.rglob("*.py")):
        if _SKIPPED_PARTS.intersection(path.relative_to(root).parts):
            continue
        for module, summary, code in _module_pairs(path, root, min_summary_words, min_body_lines):
            if summary in seen_queries or code in seen_docs:
                continue  # duplicates would be false negatives in a batch and leak across the split
            seen_queries.add(summary)
            seen_docs.add(code)
            triples.append((module, summary, code))
    return triples


def _stable_order(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")


def split_modules(triples: list[tuple[str, str, str]], eval_fraction: float) -> set[str]:
    """Top-level packages held out for evaluation: taken in a fixed hash order until they hold
    ``eval_fraction`` of all pairs. Whole packages (email, json, ...) stay on one side."""
    sizes: dict[str, int] = {}
    for module, _, _ in triples:
        top = module.split(".")[0]
        sizes[top] = sizes.get(top, 0) + 1
    held_out, count = set(), 0
    for top in sorted(sizes, key=_stable_order):
        if count >= eval_fraction * len(triples):
            break
        held_out.add(top)
        count += sizes[top]
    return held_out


def load(
    eval_fraction: float = 0.2,
    max_negatives: int = 3,
    max_train_pairs: int | None = None,
    max_eval_queries: int | None = None,
    seed: int = 0,
    root: str | None = None,
) -> TrainEvalData:
    """Build the stdlib training pairs and the held-out retrieval set.

    Args:
        eval_fraction: share of pairs (by whole top-level package) held out for evaluation.
        max_negatives: hard negatives per training pair, drawn from the same module (topped up
            from other modules when the module is too small).
        max_train_pairs / max_eval_queries: optional caps for quick runs and tests.
        seed: fixes which siblings become negatives and which pairs a cap keeps.
        root: a different source tree to mine (defaults to the running Python's stdlib).
    """
    triples = collect(Path(root) if root else None)
    held_out = split_modules(triples, eval_fraction)
    rng = random.Random(seed)
    train_triples = [t for t in triples if t[0].split(".")[0] not in held_out]
    eval_triples = [t for t in triples if t[0].split(".")[0] in held_out]

    code_by_module: dict[str, list[str]] = {}
    for module, _, code in train_triples:
        code_by_module.setdefault(module, []).append(code)
    all_code = [code for _, _, code in train_triples]
    train = []
    for module, summary, code in train_triples:
        siblings = [other for other in code_by_module[module] if other != code]
        negatives = rng.sample(siblings, min(max_negatives, len(siblings)))
        while len(negatives) < max_negatives and len(all_code) > max_negatives:  # small module: top up
            other = rng.choice(all_code)
            if other != code and other not in negatives:
                negatives.append(other)
        train.append(Pair(summary, code, tuple(negatives)))
    rng.shuffle(train)
    if max_train_pairs is not None:
        train = train[:max_train_pairs]

    corpus = {f"d{i}": code for i, (_, _, code) in enumerate(eval_triples)}
    query_ids = list(range(len(eval_triples)))
    if max_eval_queries is not None and max_eval_queries < len(query_ids):
        query_ids = sorted(rng.sample(query_ids, max_eval_queries))
    queries = {f"q{i}": eval_triples[i][1] for i in query_ids}
    qrels = {f"q{i}": {f"d{i}": 1} for i in query_ids}
    held_out_set = RetrievalSet(f"stdlib-heldout ({len(held_out)} packages)", queries, corpus, qrels)
    return TrainEvalData(train=train, eval=held_out_set, source="python-stdlib")
