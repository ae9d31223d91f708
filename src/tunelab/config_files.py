"""Reading the YAML files users write (training options, study configs, prompt templates): one mapping per
file, and every failure a UsageError that names the file."""

from __future__ import annotations

from pathlib import Path


def read_mapping(path: str | Path, what: str, keys: str, *, unreadable: str | None = None) -> dict:
    """The mapping a YAML (or JSON) file holds; an empty file is an empty mapping. `what` names the kind of
    file in messages, `keys` its main keys; `unreadable` replaces "cannot read {what}" (e.g. to say that a
    name was neither a known template nor a file)."""
    import yaml

    from tunelab.errors import UsageError

    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: {unreadable or 'cannot read ' + what}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: a {what} is a mapping ({keys}), got {type(loaded).__name__}")
    return loaded
