"""Reading the YAML files users write (training options, study configs, prompt templates): one mapping per
file, and every failure a UsageError that names the file."""

from __future__ import annotations

from pathlib import Path


def read_mapping(path: str | Path, what: str, keys: str, *, unreadable: str | None = None) -> dict:
    """The mapping a YAML (or JSON) file holds; an empty file is an empty mapping. `what` names the kind of
    file in messages, `keys` its main keys; `unreadable` replaces "cannot read {what}" (e.g. to say that a
    name was neither a known template nor a file)."""
    import yaml

    from tunelab.data.text import find_surrogate, read_file_bytes, surrogate_problem
    from tunelab.errors import DataError, UsageError

    try:
        # read_file_bytes: a FIFO or a device is refused, not read (or waited on) for ever
        loaded = yaml.safe_load(read_file_bytes(path).decode("utf-8"))
    except DataError as exc:
        raise UsageError(f"{path}: {unreadable or 'cannot read ' + what}: {exc.problem}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: {unreadable or 'cannot read ' + what}: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: a {what} is a mapping ({keys}), got {type(loaded).__name__}")
    found = find_surrogate(loaded)  # YAML's "\ud800" escape, like JSON's, is no text
    if found:
        raise UsageError(f"{path}: {surrogate_problem(*found)}")
    return loaded
