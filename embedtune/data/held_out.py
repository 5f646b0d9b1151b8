"""Held-out sets, loaded as what they are: a BEIR folder or a (query, positive) pairs file is a
retrieval task, a file of scored sentence pairs is an STS task. `load_held_out` is the one loader
behind every data preset's ``data.eval`` and behind `embedtune eval` / `embedtune diagnose`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedtune.data.rows import Columns, iter_rows, load_pairs, row_text
from embedtune.data.sts_files import is_sts_file, load_sts
from embedtune.data.types import Pair, RetrievalSet, ScoredPairSet
from embedtune.errors import DataError
from embedtune.fileio import write_text_atomic


def load_held_out(source: str, split: str = "test", columns: Columns = Columns(negatives=None)) -> RetrievalSet | ScoredPairSet:
    """A BEIR folder (qrels ``split``) or a pairs file (``columns``) as retrieval, a file of scored
    pairs (STS Benchmark layout, or ``sentence1, sentence2, score`` columns) as STS."""
    if Path(source).is_dir():
        return load_beir(source, split)
    if is_sts_file(source):
        return ScoredPairSet(Path(source).name, load_sts(source))
    return pairs_as_retrieval_set(load_pairs(source, columns), Path(source).name)


def document_text(row: dict[str, Any], where: str) -> str:
    """A BEIR corpus row's text: its ``title`` joined in front of its ``text``, as BEIR does."""
    title, text = row.get("title") or "", row.get("text") or ""
    if not isinstance(title, str) or not isinstance(text, str) or not (title + text).strip():
        raise DataError(f"{where}: document needs a non-empty string 'title' or 'text'")
    return f"{title} {text}".strip()


def pairs_as_retrieval_set(pairs: list[Pair], name: str) -> RetrievalSet:
    """Turn held-out pairs into a retrieval task: each query must find its positive among all
    positives (and hard negatives) of the file. Repeated texts share one id, so a query whose
    positive appears twice is not penalised."""
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for pair in pairs:
        for text in (pair.positive, *pair.negatives):
            doc_ids.setdefault(text, f"d{len(doc_ids)}")
        qid = query_ids.setdefault(pair.query, f"q{len(query_ids)}")
        qrels.setdefault(qid, {})[doc_ids[pair.positive]] = 1
    return RetrievalSet(
        name=name,
        queries={qid: text for text, qid in query_ids.items()},
        corpus={did: text for text, did in doc_ids.items()},
        qrels=qrels,
        source_pairs=pairs,
    )


def load_beir(folder: str, split: str = "test") -> RetrievalSet:
    """A BEIR-layout folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
    (``_id``, ``text``) and ``qrels/<split>.tsv`` (query-id, corpus-id, score; header row).
    Titles are joined to texts as BEIR does. Only queries with a positive judgement are kept."""
    root = Path(folder)
    qrels_path = root / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (root / "qrels").glob("*.tsv")) if (root / "qrels").is_dir() else []
        raise DataError(f"{qrels_path}: no such file (splits here: {', '.join(available) or 'none'})")
    corpus = {}
    for where, row in iter_rows(str(root / "corpus.jsonl")):
        doc_id = str(row.get("_id", ""))
        if not doc_id:
            raise DataError(f"{where}: missing '_id'")
        corpus[doc_id] = document_text(row, where)
    all_queries = {}
    for where, row in iter_rows(str(root / "queries.jsonl")):
        if not str(row.get("_id", "")):
            raise DataError(f"{where}: missing '_id'")
        all_queries[str(row["_id"])] = row_text(row, "text", where)
    qrels: dict[str, dict[str, int]] = {}
    with qrels_path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.rstrip("\n").split("\t")
            if number == 1 and not fields[-1].lstrip("-").isdigit():
                continue  # header
            if len(fields) < 3 or not fields[2].lstrip("-").isdigit():
                raise DataError(f"{qrels_path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score'")
            query_id, doc_id, score = fields[0], fields[1], int(fields[2])
            if query_id not in all_queries:
                raise DataError(f"{qrels_path}:{number}: unknown query id '{query_id}'")
            if doc_id not in corpus:
                raise DataError(f"{qrels_path}:{number}: unknown corpus id '{doc_id}'")
            if score > 0:
                qrels.setdefault(query_id, {})[doc_id] = score
    if not qrels:
        raise DataError(f"{qrels_path}: no positive judgements")
    queries = {qid: all_queries[qid] for qid in qrels}
    return RetrievalSet(f"{root.name}/{split}", queries, corpus, qrels)


def write_beir(benchmark: RetrievalSet, folder: str | Path, split: str = "test") -> None:
    """Write a retrieval set as a BEIR folder, the layout `load_beir` reads back."""
    root = Path(folder)
    write_text_atomic(
        root / "corpus.jsonl", "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in benchmark.corpus.items())
    )
    write_text_atomic(root / "queries.jsonl", "".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t in benchmark.queries.items()))
    rows = [f"{qid}\t{did}\t{rel}\n" for qid, judged in benchmark.qrels.items() for did, rel in judged.items()]
    write_text_atomic(root / "qrels" / f"{split}.tsv", "query-id\tcorpus-id\tscore\n" + "".join(rows))
