"""The Python parts of ``scripts/gpu_check.sh``: its input files and its pass/fail checks.

python scripts/gpu_check_tools.py data DATA_DIR WORK_DIR     # SciFact -> the check's pairs files and a small BEIR set
python scripts/gpu_check_tools.py loss-falls TRAIN_LOG       # exit 1 unless every loss is finite and the last is lowest
python scripts/gpu_check_tools.py st-loads FOLDER...         # exit 1 unless each folder embeds in sentence-transformers
python scripts/gpu_check_tools.py summary STEPS_TSV OUT_JSON # the steps' records as one JSON file
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

EVAL_QUERIES = 100  # held-out SciFact claims of the recipe's small BEIR set
CORPUS_SIZE = 400  # their abstracts plus others: enough for mining 7 negatives from ranks 10-100


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def write_data(data_dir: Path, work: Path) -> None:
    """From SciFact: ``weak.jsonl`` (title -> abstract, every document: the reported pretraining
    data), ``sft.jsonl`` (claim -> abstract, claims not held out) and ``beir/`` (a held-out
    set of EVAL_QUERIES claims over a corpus of CORPUS_SIZE abstracts, ``qrels/test.tsv``)."""
    scifact = data_dir / "scifact"
    corpus = {row["_id"]: row for row in _jsonl(scifact / "corpus.jsonl")}
    queries = {row["_id"]: row["text"] for row in _jsonl(scifact / "queries.jsonl")}
    qrels = [
        line.split("\t")[:2] for line in (scifact / "qrels" / "train.tsv").read_text(encoding="utf-8").splitlines()[1:] if line.strip()
    ]
    qrels = [(query, doc) for query, doc in qrels if query in queries and doc in corpus]
    document = lambda doc: f"{corpus[doc]['title']} {corpus[doc]['text']}".strip()  # noqa: E731
    _write_jsonl(
        work / "weak.jsonl",
        [{"query": row["title"], "positive": row["text"]} for row in corpus.values() if row["title"].strip() and row["text"].strip()],
    )
    held_out = sorted({query for query, _ in qrels})[:EVAL_QUERIES]
    _write_jsonl(
        work / "sft.jsonl", [{"query": queries[query], "positive": document(doc)} for query, doc in qrels if query not in held_out]
    )
    judged = [(query, doc) for query, doc in qrels if query in held_out]
    docs = list(dict.fromkeys(doc for _, doc in judged))
    docs += [doc for doc in corpus if doc not in docs][: CORPUS_SIZE - len(docs)]
    beir = work / "beir"
    _write_jsonl(beir / "corpus.jsonl", [{"_id": doc, "title": corpus[doc]["title"], "text": corpus[doc]["text"]} for doc in docs])
    _write_jsonl(beir / "queries.jsonl", [{"_id": query, "text": queries[query]} for query in held_out])
    (beir / "qrels").mkdir(exist_ok=True)
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{query}\t{doc}\t1\n" for query, doc in judged), encoding="utf-8"
    )


def loss_falls(train_log: Path) -> bool:
    """Every logged loss finite, and the last one below the first."""
    losses = [record["loss"] for record in _jsonl(train_log)]
    print(f"{train_log}: losses {[round(loss, 4) for loss in losses]}")
    return len(losses) >= 2 and all(math.isfinite(loss) for loss in losses) and losses[-1] < losses[0]


def sentence_transformers_loads(folders: list[str]) -> bool:
    """Each folder loads in sentence-transformers and embeds two texts into finite, distinct vectors."""
    import torch
    from sentence_transformers import SentenceTransformer

    ok = True
    for folder in folders:
        embeddings = torch.as_tensor(
            SentenceTransformer(folder, device="cuda" if torch.cuda.is_available() else "cpu").encode(
                ["a claim about cells", "an abstract on proteins"]
            )
        )
        good = bool(torch.isfinite(embeddings).all()) and not torch.allclose(embeddings[0], embeddings[1])
        print(f"{folder}: sentence-transformers {tuple(embeddings.shape)} {'ok' if good else 'NOT finite or not distinct'}")
        ok = ok and good
    return ok


def summary(steps_tsv: Path, out: Path) -> None:
    """One JSON object per step (name, status, seconds, time limit), in run order."""
    steps = []
    for line in steps_tsv.read_text(encoding="utf-8").splitlines():
        name, status, seconds, limit = line.split("\t")
        steps.append({"step": name, "status": status, "seconds": int(seconds), "limit_s": int(limit)})
    out.write_text(json.dumps({"steps": steps, "all_ok": all(step["status"] == "ok" for step in steps)}, indent=2) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "data":
        write_data(Path(args[0]), Path(args[1]))
    elif command == "loss-falls":
        return 0 if loss_falls(Path(args[0])) else 1
    elif command == "st-loads":
        return 0 if sentence_transformers_loads(args) else 1
    elif command == "summary":
        summary(Path(args[0]), Path(args[1]))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
