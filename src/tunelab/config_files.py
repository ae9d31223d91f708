"""Reading the YAML files users write (training options, study configs, prompt templates, task files): one
mapping per file, and every failure a UsageError that names the file."""

from __future__ import annotations

from pathlib import Path

import yaml

# A file whose aliases expand it beyond this many values is refused: the "billion laughs" (a few lines of
# nested aliases standing for 9**30 strings) would otherwise hang whatever walks the loaded mapping.
MAX_VALUES = 1_000_000


class _StrictLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(value, sizes: dict[int, int]) -> int:
    """How many values `value` stands for with every alias expanded; shared nodes are counted once each,
    so the walk is linear in the file."""
    if not isinstance(value, dict | list):
        return 1
    if id(value) not in sizes:
        children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        sizes[id(value)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(value)]


def read_mapping(path: str | Path, what: str, keys: str, *, unreadable: str | None = None) -> dict:
    """The mapping a YAML (or JSON) file holds; an empty file is an empty mapping. `what` names the kind of
    file in messages, `keys` its main keys; `unreadable` replaces "cannot read {what}" (e.g. to say that a
    name was neither a known template nor a file)."""
    from tunelab.data.text import find_surrogate, read_file_bytes, surrogate_problem
    from tunelab.errors import DataError, UsageError

    cannot = unreadable or "cannot read " + what
    try:
        # read_file_bytes: a FIFO or a device is refused, not read (or waited on) for ever
        loaded = yaml.load(read_file_bytes(path).decode("utf-8"), Loader=_StrictLoader)  # noqa: S506
        size = _expanded_size(loaded, {})
    except DataError as exc:
        raise UsageError(f"{path}: {cannot}: {exc.problem}") from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"{path}: {cannot}: {exc}") from exc
    except RecursionError:
        raise UsageError(f"{path}: {cannot}: nested too deeply") from None
    if size > MAX_VALUES:
        raise UsageError(
            f"{path}: {cannot}: its aliases expand it to more than {MAX_VALUES:,} values (a YAML bomb?)"
        )
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"{path}: a {what} is a mapping ({keys}), got {type(loaded).__name__}")
    found = find_surrogate(loaded)  # YAML's "\ud800" escape, like JSON's, is no text
    if found:
        raise UsageError(f"{path}: {surrogate_problem(*found)}")
    return loaded
