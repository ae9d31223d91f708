"""Whether Python code shipped with a model (a config's `auto_map`) may run, and loading errors as users read
them.

One switch for the whole process (transformers' trust_remote_code), set from `--trust-remote-code` by the
command line on every call, so that every loader (config, tokenizer, model) obeys it alike. Off unless asked.
"""

from __future__ import annotations

from tunelab.errors import ModelError

_REMOTE_CODE = {"trusted": False}
REMOTE_CODE_HINT = (
    "it ships its own Python code, which tunelab does not run unless you pass --trust-remote-code "
    "(do so only for a source you trust)"
)


def trust_remote_code(enabled: bool) -> None:
    _REMOTE_CODE["trusted"] = bool(enabled)


def remote_code_trusted() -> bool:
    return _REMOTE_CODE["trusted"]


def short(message: str, limit: int = 600) -> str:
    """A library's message cut to a readable length (some list every model type transformers knows)."""
    message = message.strip()
    return message if len(message) <= limit else message[:limit].rstrip() + " [...]"


def load_error(spec: str, what: str, exc: Exception) -> ModelError:
    """A loading failure as a ModelError; a refusal to run shipped code says how to allow it."""
    text = str(exc)
    if "trust_remote_code" in text and not remote_code_trusted():
        return ModelError(f"{spec}: cannot load {what}: {REMOTE_CODE_HINT}")
    if "ignore_mismatched_sizes" in text:  # transformers points at a load report tunelab keeps quiet
        return ModelError(
            f"{spec}: cannot load {what}: the shapes of the tensors in its weights do not match its "
            "config.json (a changed hidden_size, intermediate_size, vocab_size, head count or num_labels?)"
        )
    if "couldn't connect to" in text:  # transformers' words for a Hub it could not reach (after retries)
        return ModelError(
            f"{spec}: cannot load {what}: the Hub cannot be reached and no copy is in the local cache (give "
            "a local model folder, or download it where there is a network; HF_HUB_OFFLINE=1 skips the "
            "Hub's retries)"
        )
    return ModelError(f"{spec}: cannot load {what}: {short(text)}")
