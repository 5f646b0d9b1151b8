"""The three-stage recipe chains through folders: pretrain -> mine -> sft -> merge -> eval."""

import json

import pytest
from helpers import embedtune

from embedtune.data.rows import load_pairs
from embedtune.model import load_embedder


def succeeds(*args):
    result = embedtune(*args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.mark.slow
def test_pretrain_mine_sft_merge_eval_chain(tiny_bert_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"query": f"how do I do task {i}", "positive": f"def task_{i}(): return {i} * {i}"}) + "\n" for i in range(32))
    )
    common = ["data=files", f"data.eval={pairs}", "backbone.max_length=24", "train.log_every=1", "eval.before=false"]

    succeeds(
        "train",
        "stage=pretrain",
        f"data.train={pairs}",
        f"backbone.path={tiny_bert_dir}",
        "batch.size=8",
        "train.max_steps=2",
        *common,
        f"output_dir={tmp_path / 'pretrain'}",
    )
    mined = succeeds(
        "mine",
        "--model",
        str(tmp_path / "pretrain" / "final"),
        "--data",
        str(pairs),
        "--out",
        str(tmp_path / "mined.jsonl"),
        "--num-negatives",
        "2",
        "--range-min",
        "0",
        "--margin",
        "-1",
    )
    assert "removed" in mined.stdout + mined.stderr
    mined_pairs = load_pairs(str(tmp_path / "mined.jsonl"))
    assert len(mined_pairs) == 32 and all(len(p.negatives) == 2 and p.positive not in p.negatives for p in mined_pairs)

    sft = tmp_path / "sft"
    # mined from the 32 positives, every negative is another pair's positive: batches of 8 cannot avoid
    # repeating texts, and training says so instead of looping
    refused = embedtune(
        "train",
        "stage=sft",
        f"data.train={tmp_path / 'mined.jsonl'}",
        f"backbone.path={tiny_bert_dir}",
        "negatives.per_query=2",
        "batch.size=8",
        *common,
        f"output_dir={tmp_path / 'refused'}",
    )
    assert refused.returncode == 2 and "without repeating a text" in refused.stderr
    succeeds(
        "train",
        "stage=sft",
        "batch.no_duplicates=false",
        f"data.train={tmp_path / 'mined.jsonl'}",
        "backbone=hf",
        f"backbone.path={tmp_path / 'pretrain' / 'final'}",
        "negatives.per_query=2",
        "batch.size=8",
        "train.max_steps=4",
        "save.model_every_n_steps=2",
        *common,
        f"output_dir={sft}",
    )
    assert (sft / "models" / "step-00002").is_dir()
    pretrained, tuned = load_embedder(str(tmp_path / "pretrain" / "final")), load_embedder(str(sft / "final"))
    assert tuned.max_length == 24 and not all(
        (a == b).all() for a, b in zip(pretrained.backbone.parameters(), tuned.backbone.parameters())
    ), "sft started from the pretrained model and changed it"

    succeeds("merge", "--slerp", str(sft / "models" / "step-00002"), str(sft / "final"), "--t", "0.5", "--out", str(tmp_path / "merged"))
    report = succeeds(
        "eval",
        "--model",
        str(tmp_path / "pretrain" / "final"),
        str(sft / "final"),
        str(tmp_path / "merged"),
        "--data",
        str(pairs),
        "--out",
        str(tmp_path / "eval.json"),
    )
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert len(rows) == 3 and all(0 <= row["ndcg@10"] <= 1 for row in rows)
    assert "merged" in report.stdout
