"""docs/tasks.md, the reference of the task-file format, stays true: it names every key a task file of each
kind accepts (each kind's COMMON_KEYS, KIND_KEYS and DATA_KEYS, the `data:` section's own keys, and the nested
keys of split files, `hub:`, `card:`, prompt templates and the zeroshot/finetune options), and each of its
example task files loads with tunelab's own task loader."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT

from tunelab.errors import UsageError
from tunelab.options import FINETUNE_EXTRAS, KINDS, TRAIN_OPTIONS, ZEROSHOT_OPTIONS, for_kind
from tunelab.tasks import load_task
from tunelab.tasks.base import _kinds
from tunelab.tasks.classification import ClassificationPrompt
from tunelab.tasks.extractive_qa.generation import QAPrompt

DOC = ROOT / "docs" / "tasks.md"
DATA_SECTION_KEYS = ("relative_to", "splits", "dataset", "config")  # base.py: Task.from_definition
KIND_CLASSES = _kinds()  # the registry of task kinds: kind -> Task subclass
MINIMAL = {  # the least a task of each kind needs, to which a test adds one key
    "classification": "kind: classification\nlabels: [a, b]\n",
    "extractive_qa": "kind: extractive_qa\n",
}


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def yaml_blocks(text: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def known_keys(tmp_path, kind: str, extra: str) -> list[str]:
    """The keys the loader lists as known where `extra` puts an unknown key ("known here: ...")."""
    path = tmp_path / "probe.yaml"
    path.write_text(MINIMAL[kind] + extra)
    with pytest.raises(UsageError, match=r"zz_unknown") as caught:
        load_task(str(path))
    found = re.search(r"\(known here: ([^)]*)\)", str(caught.value))
    assert found, str(caught.value)
    return found.group(1).split(", ")


def missing_from_doc(keys) -> list[str]:
    text = doc_text()
    return sorted({k for k in keys if f"`{k}`" not in text})


def test_the_registry_has_every_kind():
    assert set(KIND_CLASSES) == set(KINDS)
    assert all(cls.kind == kind for kind, cls in KIND_CLASSES.items())


@pytest.mark.parametrize("kind", sorted(KIND_CLASSES))
def test_every_key_of_each_kind_is_documented(kind):
    cls = KIND_CLASSES[kind]
    keys = cls.COMMON_KEYS + cls.KIND_KEYS + cls.DATA_KEYS + DATA_SECTION_KEYS
    assert missing_from_doc(keys) == []


@pytest.mark.parametrize("kind", sorted(KIND_CLASSES))
def test_the_keys_the_loader_knows_are_the_documented_ones(tmp_path, kind):
    """The loader's own lists of known keys (top level, `data:`, a split's file, `hub:`, `card:`) are the
    class attributes and DATA_SECTION_KEYS above, and all of them are documented."""
    cls = KIND_CLASSES[kind]
    data = "data: {splits: {dev: d}, zz_unknown: 1}\n"
    assert known_keys(tmp_path, kind, "zz_unknown: 1\n") == list(cls.COMMON_KEYS + cls.KIND_KEYS)
    assert known_keys(tmp_path, kind, data) == list(DATA_SECTION_KEYS + cls.DATA_KEYS)
    nested = [
        known_keys(tmp_path, kind, "data: {splits: {dev: {file: d, zz_unknown: 1}}}\n"),
        known_keys(tmp_path, kind, "data: {splits: {dev: d}}\nhub: {zz_unknown: 1}\n"),
        known_keys(tmp_path, kind, "data: {splits: {dev: d}}\ncard: {zz_unknown: 1}\n"),
    ]
    assert missing_from_doc(key for keys in nested for key in keys) == []


@pytest.mark.parametrize("kind", sorted(KIND_CLASSES))
def test_every_zeroshot_finetune_and_prompt_key_is_documented(kind):
    options = [*for_kind(ZEROSHOT_OPTIONS, kind), *for_kind(FINETUNE_EXTRAS, kind), *TRAIN_OPTIONS]
    prompt = ClassificationPrompt if kind == "classification" else QAPrompt
    assert missing_from_doc(options + prompt.keys()) == []


def test_each_example_task_file_loads(tmp_path):
    blocks = yaml_blocks(doc_text())
    assert blocks, "docs/tasks.md has no ```yaml examples"
    kinds = []
    for i, block in enumerate(blocks):
        path = tmp_path / f"example-{i}.yaml"
        path.write_text(block, encoding="utf-8")
        task = load_task(str(path))
        task.prompt(None)  # its default template is valid
        kinds.append(task.kind)
    assert sorted(set(kinds)) == sorted(KIND_CLASSES), "one example per kind of task"
