"""Pushing a trained model folder to the Hugging Face Hub (or any Hub-compatible endpoint)."""

from __future__ import annotations

import os

from huggingface_hub import HfApi

# What a pushed model folder holds: weights, config (with auto_map), model code, tokenizer, card,
# generation config, metrics and the trainer state (loss curve). Checkpoints and logs stay local.
PUSHED_FILE_PATTERNS = ["*.safetensors", "*.json", "*.py", "*.model", "README.md"]


class HubPushError(RuntimeError):
    """A push to the Hub failed; the local folder is untouched."""


def check_repo_id(repo_id: str | None) -> str:
    """`repo_id` must be ``owner/name``."""
    if not repo_id or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hub_model_id must be 'owner/name' to push to the Hub, got {repo_id!r}")
    return repo_id


def create_hub_repo(
    repo_id: str, token: str | None = None, private: bool | None = None, endpoint: str | None = None
) -> str:
    """Create (or find) the model repo; raise `HubPushError` naming the endpoint when it fails."""
    check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        return str(api.create_repo(repo_id, private=private, exist_ok=True))
    except Exception as error:  # any network or HTTP failure: report it with where it happened
        raise HubPushError(f"cannot create the Hub repo {repo_id!r} at {api.endpoint}: {error}") from error


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    endpoint: str | None = None,
    commit_message: str = "Upload FWP language model",
) -> str:
    """Upload the model files of `folder` to `repo_id` in one commit and return the commit URL.

    On failure raise `HubPushError` naming the endpoint; `folder` is only read, so the trained files
    stay as they are.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"model folder {str(folder)!r} does not exist")
    create_hub_repo(repo_id, token=token, private=private, endpoint=endpoint)
    api = HfApi(endpoint=endpoint, token=token)
    try:
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            allow_patterns=PUSHED_FILE_PATTERNS,
            ignore_patterns=["checkpoint-*/**", "runs/**"],
            commit_message=commit_message,
        )
    except Exception as error:
        raise HubPushError(
            f"pushing {str(folder)!r} to {repo_id!r} at {api.endpoint} failed: {error}. The local files are intact; "
            "push them again later with huggingface_hub's upload_folder"
        ) from error
    return str(commit.commit_url)


__all__ = ["HubPushError", "check_repo_id", "create_hub_repo", "push_folder_to_hub"]
