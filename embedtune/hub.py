"""Publishing a trained model on the Hugging Face Hub (``embedtune train ... hub.repo_id=user/name``).

Whether the upload can happen is checked before training (`check_upload`), so a run that cannot
publish stops in a second with one line instead of after hours of training; the upload itself
(`upload_model`) sends the saved folder, model card included, as one commit.
"""

from __future__ import annotations

from pathlib import Path

from embedtune.errors import ConfigError, EmbedtuneError


def check_upload(repo_id: str, exist_ok: bool) -> None:
    """Raise `ConfigError` with one line unless ``repo_id`` can be written now: not offline
    (``HF_HUB_OFFLINE``), a token (``HF_TOKEN`` or ``hf auth login``) that the Hub accepts, the Hub
    reachable, and no existing repository unless ``exist_ok`` (then the upload adds a commit;
    the Hub keeps the earlier ones)."""
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    option = f"hub.repo_id={repo_id}"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise ConfigError(
            f"{option}: HF_HUB_OFFLINE is set, so nothing can be uploaded; unset it, or train without hub.repo_id and upload final/ later"
        )
    if huggingface_hub.get_token() is None:
        raise ConfigError(f"{option}: no Hugging Face token; set HF_TOKEN or run `hf auth login` (a token with write access)")
    api = HfApi()
    try:
        api.whoami()  # the token is valid and the Hub answers
        exists = api.repo_exists(repo_id)
    except HfHubHTTPError as error:
        raise ConfigError(f"{option}: the Hub refused the token ({_first_line(error)})") from None
    except Exception as error:  # httpx's connection errors, timeouts, offline mode
        raise ConfigError(f"{option}: cannot reach the Hugging Face Hub ({type(error).__name__}: {_first_line(error)})") from None
    if exists and not exist_ok:
        raise ConfigError(
            f"{option}: the repository exists on the Hub; pass hub.exist_ok=true to add this model to it as a new commit, or pick another hub.repo_id"
        )


def upload_model(folder: Path, repo_id: str, private: bool, message: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder`` (weights, tokenizer, sentence-transformers
    files, README.md) as one commit; return the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except Exception as error:
        raise EmbedtuneError(
            f"upload of {folder} to the Hub repository {repo_id} failed ({type(error).__name__}: {_first_line(error)}); "
            f"the model is saved: upload it later with `hf upload {repo_id} {folder}`"
        ) from None
    return str(url)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]
