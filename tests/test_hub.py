"""`hub.repo_id=user/name` uploads final/ with its card after training; a run that cannot upload
(offline, no token, the Hub unreachable, an existing repository) stops before training with one
line. No network: the Hub calls are stubbed."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
from helpers import embedtune
from hydra import compose, initialize_config_dir

from embedtune.errors import ConfigError
from embedtune.hub import check_upload
from embedtune.model_card import front_matter
from embedtune.training.config import config_dir, validate
from embedtune.training.run import run


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"query": f"what is item {i}", "positive": f"item {i} is thing {i}"}) + "\n" for i in range(24)))
    return path


def compose_run(model_dir, pairs, *extra):
    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        return compose("train", overrides=[
            "data=files", f"data.train={pairs}", f"data.eval={pairs}", f"backbone.path={model_dir}", "backbone.max_length=16",
            "batch.size=4", "train.max_steps=2", "negatives.per_query=0", *extra,
        ])  # fmt: skip


@pytest.fixture
def online_hub(monkeypatch):
    """A Hub that answers: not offline, a token, whoami and repo_exists stubbed; create_repo and
    upload_folder record their calls (and the card as it is when uploaded)."""
    calls = []
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, *a, **k: {"name": "me"})
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_exists", lambda self, repo_id, **k: repo_id == "me/existing")

    def create_repo(self, repo_id, **options):
        calls.append(("create_repo", repo_id, options))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **options):
        calls.append(
            (
                "upload_folder",
                repo_id,
                {**options, "folder_path": folder_path, "card": open(f"{folder_path}/README.md", encoding="utf-8").read()},
            )
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_training_with_a_repo_id_uploads_final_with_its_card(tiny_bert_dir, pairs, tmp_path, online_hub):
    out = tmp_path / "run"
    result = run(compose_run(tiny_bert_dir, pairs, "hub.repo_id=me/tiny-model", "hub.private=true"), out)
    assert [call[0] for call in online_hub] == ["create_repo", "upload_folder"]
    (_, repo, created), (_, uploaded_repo, uploaded) = online_hub
    assert repo == uploaded_repo == "me/tiny-model" and created["private"] is True and created["exist_ok"] is True
    assert uploaded["folder_path"] == str(out / "final")
    meta = front_matter(uploaded["card"])  # the card that went up is the finished one: it has the held-out numbers
    assert {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]} == result["after"]
    assert "SentenceTransformer('me/tiny-model')" in uploaded["card"]


def test_an_existing_repository_needs_exist_ok(online_hub):
    with pytest.raises(ConfigError, match="hub.repo_id=me/existing: the repository exists on the Hub; pass hub.exist_ok=true"):
        check_upload("me/existing", exist_ok=False)
    check_upload("me/existing", exist_ok=True)
    check_upload("me/new", exist_ok=False)


def test_no_token_and_unreachable_hub_are_one_line_errors(online_hub, monkeypatch, tmp_path):
    def unreachable(self, *args, **kwargs):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", unreachable)
    with pytest.raises(ConfigError, match=r"^hub.repo_id=me/x: cannot reach the Hugging Face Hub \(ConnectionError: \[Errno -2\]"):
        check_upload("me/x", exist_ok=False)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(ConfigError, match="^hub.repo_id=me/x: no Hugging Face token; set HF_TOKEN"):
        check_upload("me/x", exist_ok=False)


def test_offline_run_with_a_repo_id_fails_before_training(tiny_bert_dir, pairs, tmp_path):
    out = tmp_path / "run"
    result = embedtune(
        "train", "data=files", f"data.train={pairs}", f"backbone.path={tiny_bert_dir}", "hub.repo_id=me/tiny-model", f"output_dir={out}"
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("embedtune train: error: hub.repo_id=me/tiny-model: HF_HUB_OFFLINE is set")
    assert not out.exists()  # nothing trained, nothing written


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["hub.repo_id=not a repo id"], "hub.repo_id must be null or a Hub repository id (user/name)"),
        (["hub.repo_id=me/model", "hub.private=maybe"], "hub.private must be true or false"),
    ],
)
def test_bad_hub_settings_name_the_option(tiny_bert_dir, pairs, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_run(tiny_bert_dir, pairs, *overrides))


def test_a_sweep_with_a_repo_id_is_refused(tiny_bert_dir, pairs, tmp_path):
    result = embedtune(
        "train",
        "-m",
        "loss.temperature=0.02,0.1",
        "data=files",
        f"data.train={pairs}",
        f"backbone.path={tiny_bert_dir}",
        "hub.repo_id=me/m",
        f"output_dir={tmp_path / 's'}",
    )
    assert result.returncode != 0 and "hub.repo_id=me/m in a sweep would upload every run to one repository" in result.stderr
    assert not (tmp_path / "s-sweep").exists()
