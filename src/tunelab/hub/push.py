"""`tunelab push`: upload an exported folder to a Hub model repo. The token comes from the `token` argument,
HF_TOKEN or the user's `hf auth login` (tunelab.models.registry.hub_token); it is never printed or logged, and
Hub errors become one clear message without it."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import UsageError
from tunelab.hub.card import REPO_ID
from tunelab.models.registry import hub_token

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
# Never uploaded: hidden files and folders (.git, .cache, editor droppings). huggingface_hub adds its own
# DEFAULT_IGNORE_PATTERNS; the dry run applies both, exactly as upload_folder does.
HIDDEN_PATTERNS = (".*", "*/.*")


def validate_repo_id(repo_id: str) -> str:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id as hub_validate

    if not isinstance(repo_id, str) or not REPO_ID.fullmatch(repo_id):
        raise UsageError(
            f"--repo-id {repo_id!r}: expected USER/NAME (or ORG/NAME): letters, digits, '-', '_', '.'"
        )
    try:
        hub_validate(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"--repo-id {repo_id!r}: {exc}") from None
    return repo_id


def upload_plan(folder: str | Path) -> list[dict]:
    """The files `upload_folder` will send, listed and filtered exactly as it does: [{"path", "size"}]."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    root = Path(folder).expanduser().resolve()
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
    keep = filter_repo_objects(files, ignore_patterns=list(HIDDEN_PATTERNS) + list(DEFAULT_IGNORE_PATTERNS))
    return [{"path": rel, "size": files[rel].stat().st_size} for rel in keep]


def check_folder(folder: str | Path) -> Path:
    """A folder fit to push: a README.md model card with YAML metadata, and weights."""
    from huggingface_hub import ModelCard

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: not a folder")
    if "base_model_path" in _meta(folder):
        # export leaves local paths out; a fine-tuning output holds them, and its predictions and logs
        raise UsageError(
            f"{folder}: a fine-tuning output folder (its tunelab.json names a local base model folder), "
            f"not an export: run `tunelab export {folder} --out DIR` and push DIR"
        )
    readme = folder / "README.md"
    if not readme.is_file():
        raise UsageError(f"{folder}: no README.md model card; make the folder with `tunelab export`")
    try:
        card = ModelCard.load(readme)
    except Exception as exc:  # noqa: BLE001 - ValueError for bad YAML, and whatever a broken file raises
        raise UsageError(f"{readme}: not a valid model card: {exc}") from None
    if not card.data.to_dict():
        raise UsageError(
            f"{readme}: the model card has no YAML metadata (--- block); make it with `tunelab export`"
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise UsageError(f"{folder}: no weights (model.safetensors or adapter_model.safetensors)")
    return folder


def _meta(folder: Path) -> dict:
    """The folder's tunelab.json, or {} when it has none (or none that reads as an object)."""
    try:
        meta = json.loads((folder / "tunelab.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _hub_error(exc: BaseException, repo_id: str, token: str | None) -> UsageError:
    from huggingface_hub.errors import OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, OfflineModeIsEnabled):
        msg = "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): unset it to push"
    elif status == 401:
        msg = (
            "the Hub refused the token (HTTP 401): log in again with `hf auth login` or set HF_TOKEN "
            "to a token with write access"
        )
    elif status == 403:
        msg = (
            f"not allowed to write to {repo_id} (HTTP 403): the token needs write access, and the namespace "
            "must be your user or an organisation you can write to"
        )
    elif status == 404:
        msg = f"{repo_id} not found (HTTP 404): check the user or organisation name"
    elif status is not None:
        msg = f"the Hub answered HTTP {status}: {exc}"
    elif isinstance(exc, (OSError, ConnectionError)) or "connect" in type(exc).__name__.lower():
        msg = f"cannot reach the Hub ({type(exc).__name__}): {exc}"
    else:
        msg = f"{type(exc).__name__}: {exc}"
    msg = f"push to {repo_id} failed: {msg}"
    if token:
        msg = msg.replace(token, "***")
    return UsageError(msg)


def _hub_api():
    from huggingface_hub import HfApi

    return HfApi()


def push(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    api=None,
) -> dict:
    """Upload an exported folder to the Hub model repo `repo_id` (created if missing; `private` applies only
    then). The token comes from `token`, HF_TOKEN or the user's login, and is never printed. `dry_run`: only
    say which files would go where, touching neither the network nor the token.

    Returns {"repo_id", "url", "private", "dry_run", "files": [{"path", "size"}], "total_bytes"} (+
    "commit")."""
    validate_repo_id(repo_id)
    folder = check_folder(folder)
    files = upload_plan(folder)
    result = {
        "repo_id": repo_id,
        "url": f"https://huggingface.co/{repo_id}",
        "private": private,
        "dry_run": dry_run,
        "folder": str(folder),
        "files": files,
        "total_bytes": sum(f["size"] for f in files),
    }
    if dry_run:
        return result
    token = hub_token(token)
    if not token:
        raise UsageError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)"
        )
    api = api if api is not None else _hub_api()
    try:
        repo = api.create_repo(
            repo_id=repo_id, repo_type="model", private=private, exist_ok=True, token=token
        )
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            token=token,
            ignore_patterns=list(HIDDEN_PATTERNS),
            commit_message=f"Upload {folder.resolve().name} with tunelab",
        )
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - HTTP, network and validation errors of huggingface_hub alike
        raise _hub_error(exc, repo_id, token) from None
    url = getattr(repo, "url", None)
    result["url"] = str(url) if url else result["url"]
    commit_url = getattr(info, "commit_url", None)
    if commit_url:
        result["commit"] = str(commit_url)
    return result
