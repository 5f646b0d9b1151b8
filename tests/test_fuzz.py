"""Property-based: random malformed rows and option values give a clear one-line error or a
correct result, never a traceback from deep inside."""

import json

from hydra import compose, initialize_config_dir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedtune.data.rows import load_pairs
from embedtune.errors import EmbedtuneError
from embedtune.training.config import config_dir, validate

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=6,
)
rows = st.dictionaries(st.sampled_from(["query", "positive", "negatives", "other"]), json_values, max_size=4)
lines = st.one_of(rows.map(json.dumps), st.text(max_size=30).filter(lambda line: "\n" not in line and "\r" not in line))


def expected_valid(row) -> bool:
    def text(value):
        return isinstance(value, str) and value.strip() != ""

    if not isinstance(row, dict) or not text(row.get("query")) or not text(row.get("positive")):
        return False
    negatives = row.get("negatives", [])
    if negatives is None or negatives == "":
        return True
    if isinstance(negatives, str):
        return True  # a single negative, or a JSON list in a string: checked by the loader
    return isinstance(negatives, list) and all(text(n) for n in negatives)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, min_size=1, max_size=5))
def test_random_rows_load_or_fail_with_one_line_naming_the_row(tmp_path, file_lines):
    path = tmp_path / "fuzz.jsonl"
    path.write_text("\n".join(file_lines) + "\n", encoding="utf-8")
    try:
        pairs = load_pairs(str(path))
    except EmbedtuneError as error:
        message = str(error)
        assert "\n" not in message and message.startswith(str(path))
        return
    parsed = [json.loads(line) for line in file_lines if line.strip()]
    assert len(pairs) == len(parsed)
    for pair, row in zip(pairs, parsed):
        assert expected_valid(row)
        assert (pair.query, pair.positive) == (row["query"], row["positive"])


OPTIONS = [
    "batch.size",
    "train.lr",
    "train.epochs",
    "train.max_steps",
    "train.warmup_ratio",
    "loss.temperature",
    "negatives.per_query",
    "mrl.dims",
    "train.mixed_precision",
    "save.state_every_n_steps",
    "pooling.mode",
]
values = st.one_of(
    st.integers(-3, 3), st.floats(-1, 1, allow_nan=False), st.sampled_from(["abc", "null", "[1,2]", "[]", "true", "bf16", "mean"])
)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(OPTIONS), values)
def test_random_option_values_validate_or_fail_naming_the_option(option, value):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        try:
            cfg = compose("train", overrides=[f"{option}={value}"])
        except Exception:  # Hydra refusing a value is reported by the CLI's own one-line check
            return
    try:
        validate(cfg)
    except EmbedtuneError as error:
        message = str(error)
        assert "\n" not in message
        assert option.split(".")[0] in message or "loss" in message or "mrl" in message, message
