"""Streaming multi-source input: one source per batch, weighted, sharded by rank, endless."""

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from embedtune.data.pair_stream import MixedPairStream, Source, load
from embedtune.data.rows import Columns
from embedtune.errors import ConfigError, DataError
from embedtune.training.config import config_dir
from embedtune.training.run import run


def write_jsonl(path, prefix, count, start=0):
    path.write_text(
        "".join(json.dumps({"query": f"{prefix} q{i}", "positive": f"{prefix} p{i}"}) + "\n" for i in range(start, start + count))
    )
    return path


@pytest.fixture
def two_sources(tmp_path):
    write_jsonl(tmp_path / "web-0.jsonl", "web", 30)
    write_jsonl(tmp_path / "web-1.jsonl", "web", 30, start=30)  # a second shard of the same source
    rows = [{"query": f"qa q{i}", "positive": f"qa p{i}"} for i in range(25)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "qa.parquet")
    return [Source(str(tmp_path / "web-*.jsonl"), 3.0, "web"), Source(str(tmp_path / "qa.parquet"), 1.0, "qa")]


def take(stream, count):
    iterator = iter(stream)
    return [next(iterator) for _ in range(count)]


def test_each_batch_comes_from_one_source_and_weights_are_followed(two_sources):
    stream = MixedPairStream(two_sources, Columns(), batch_size=4, seed=1)
    batches = take(stream, 400)
    origins = Counter()
    for batch in batches:
        prefixes = {pair.query.split()[0] for pair in batch}
        assert len(prefixes) == 1 and len(batch) == 4
        origins[prefixes.pop()] += 1
    assert 2.4 < origins["web"] / origins["qa"] < 3.7  # weights 3 : 1 (seeded, so deterministic)
    assert stream.batches_per_source == {"web": origins["web"], "qa": origins["qa"]}


def test_sources_loop_over_all_shards_endlessly(two_sources):
    web_only = MixedPairStream(two_sources[:1], Columns(), batch_size=10)
    queries = [pair.query for batch in take(web_only, 9) for pair in batch]  # 90 pairs from 60 rows
    assert queries[:60] == [f"web q{i}" for i in range(60)]  # shard 0 then shard 1, in order
    assert queries[60:] == [f"web q{i}" for i in range(30)]  # then from the start again


def test_ranks_take_disjoint_slices_of_the_same_global_batch(two_sources):
    whole = take(MixedPairStream(two_sources, Columns(), batch_size=6, seed=4), 20)
    rank0 = take(MixedPairStream(two_sources, Columns(), batch_size=3, seed=4, rank=0, world_size=2), 20)
    rank1 = take(MixedPairStream(two_sources, Columns(), batch_size=3, seed=4, rank=1, world_size=2), 20)
    assert [a + b for a, b in zip(rank0, rank1)] == whole


def test_no_text_repeats_within_a_streamed_batch(tmp_path):
    rows = [{"query": f"q{i % 3}", "positive": f"p{i}"} for i in range(30)]  # only 3 distinct queries
    (tmp_path / "dup.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for batch in take(MixedPairStream([Source(str(tmp_path / "dup.jsonl"))], Columns(), batch_size=3), 20):
        assert len({pair.query for pair in batch}) == 3


def test_bad_row_in_a_stream_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", "x", 5)
    path.write_text(path.read_text() + '{"query": "only a query"}\n')
    with pytest.raises(DataError, match=r"s.jsonl:6: missing column 'positive'"):
        take(MixedPairStream([Source(str(path))], Columns(), batch_size=2), 10)


def test_load_rejects_missing_paths_and_bad_weights(tmp_path):
    with pytest.raises(DataError, match="no file matches"):
        load([{"path": str(tmp_path / "nothing-*.jsonl")}])
    write_jsonl(tmp_path / "a.jsonl", "a", 3)
    with pytest.raises(DataError, match=r"data.sources\[0\]: weight must be > 0"):
        load([{"path": str(tmp_path / "a.jsonl"), "weight": 0}])


def test_streamed_training_run(tiny_bert_dir, two_sources, tmp_path):
    sources = f"[{{path: '{two_sources[0].path}', weight: 3}}, {{path: '{two_sources[1].path}', weight: 1}}]"
    overrides = [
        "stage=pretrain",
        "data=stream",
        f"data.sources={sources}",
        f"backbone.path={tiny_bert_dir}",
        "backbone.max_length=16",
        "batch.size=4",
        "train.log_every=1",
    ]
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        with pytest.raises(ConfigError, match="set train.max_steps"):
            run(compose("train", overrides=overrides), tmp_path / "no-steps")
        result = run(compose("train", overrides=[*overrides, "train.max_steps=3"]), tmp_path / "run")
    assert result["steps"] == 3
    assert len((tmp_path / "run" / "train_log.jsonl").read_text().splitlines()) == 3
