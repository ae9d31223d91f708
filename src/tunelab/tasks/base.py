"""What a task is: a small object, mostly configuration, with code only where a kind of task needs code.

A task has a name and a title, a kind (`classification` or `extractive_qa`: tasks/classification/,
tasks/extractive_qa/), its data (split -> candidate files, relative to the data folder or to its task file,
and what each file is), zero-shot and fine-tuning defaults, and its Hub metadata. The kind supplies the rest:
how files are read, the zero-shot method and prompt, the fine-tuning head, features and loss, prediction,
metrics, the report section (tunelab.report, by kind) and the model card's wording (tunelab.hub.card, by
kind).

Built-in tasks (tasks/builtin.py) are written in the same format as a user's task file, and read by the same
code (`load_task`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tunelab.data.folder import first_existing, resolve_data_dir, split_name
from tunelab.data.hub import DEFAULT_SPLITS, DatasetRef, load_rows
from tunelab.errors import UsageError
from tunelab.options import (
    FINETUNE_EXTRAS,
    KINDS,
    TRAIN_OPTIONS,
    ZEROSHOT_OPTIONS,
    TrainConfig,
    check_mapping,
    for_kind,
)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_DATASET_WHERE = re.compile(
    r"(?P<id>[^:\[]+?)(?::(?P<config>[^ ]+))? \[(?P<split>[^\]]+)\]"
)  # DatasetRef.where
RELATIVE_TO = ("task_file", "data_dir")


# Task files are checked by hand (not a JSON Schema): the kinds add keys and cross-field rules, and each error
# names the file, the key and the problem in one line.
class Definition:
    """A task definition being read: typed access to its keys; every error names the file, the key and the
    problem."""

    def __init__(self, mapping: Any, where: str, prefix: str = ""):
        if not isinstance(mapping, dict):
            key = prefix.rstrip(".") or "the top level"
            raise UsageError(f"{where}: {key} must be a mapping, got {type(mapping).__name__}")
        self.mapping, self.where, self.prefix = mapping, where, prefix

    def error(self, key: str, problem: str) -> UsageError:
        return UsageError(f"{self.where}: {self.prefix}{key}: {problem}")

    def get(
        self, key: str, types: type | tuple[type, ...], default: Any = None, *, required: bool = False
    ) -> Any:
        if key not in self.mapping or self.mapping[key] is None:
            if required:
                raise self.error(key, "missing (required)")
            return default
        value = self.mapping[key]
        if types is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise self.error(key, f"must be {_type_names(types)}, got {value!r}")
        if not isinstance(value, types):
            raise self.error(key, f"must be {_type_names(types)}, got {value!r}")
        return value

    def text(self, key: str, default: str) -> str:
        """A string shown to people (a title, a unit): blank is an error, as it would leave a gap in text."""
        value = self.get(key, str, default)
        if not value.strip():
            raise self.error(key, f"must not be blank, got {value!r}")
        return value

    def section(self, key: str) -> Definition:
        """The mapping under `key` ({} when absent or null); anything else there is an error."""
        value = self.mapping.get(key)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {value!r}")
        return Definition(value, self.where, f"{self.prefix}{key}.")

    def strings(self, key: str, *, required: bool = False) -> list[str] | None:
        value = self.get(key, list, required=required)
        if value is not None and (not value or not all(isinstance(v, str) and v for v in value)):
            raise self.error(key, f"must be a non-empty list of strings, got {value!r}")
        return value

    def only(self, allowed: tuple[str, ...] | list[str]) -> None:
        unknown = sorted(str(k) for k in self.mapping if k not in allowed)
        if unknown:
            from tunelab.options import did_you_mean

            keys = [self.prefix + k for k in unknown]
            raise UsageError(
                f"{self.where}: unknown keys {keys}{did_you_mean(unknown, allowed)} (known here: "
                f"{', '.join(allowed)})"
            )


def _type_names(types) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "a list",
        dict: "a mapping",
    }
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(names.get(t, t.__name__) for t in types)


@dataclass(frozen=True)
class DataFile:
    """One candidate file of a split, and what it is."""

    path: str  # relative to the data folder or the task file's folder (see Task.relative_to), or absolute
    name: str | None = None  # what it is, for model cards and reports
    official: bool = (
        False  # it is the published split of the Hub dataset (scores comparable with published ones)
    )
    note: str | None = None  # a caveat, said wherever its scores are shown

    @classmethod
    def read(cls, spec: Any, d: Definition, key: str) -> DataFile:
        if isinstance(spec, str) and spec:
            return cls(spec)
        if not isinstance(spec, dict):
            raise d.error(key, f"a file is a path or a mapping {{file, name, official, note}}, got {spec!r}")
        f = Definition(spec, d.where, f"{d.prefix}{key}.")
        f.only(("file", "name", "official", "note"))
        return cls(
            f.get("file", str, required=True),
            f.get("name", str),
            f.get("official", bool, False),
            f.get("note", str),
        )


@dataclass(frozen=True)
class HubInfo:
    """Where the task's data is published on the Hugging Face Hub (for model cards and `from_hub`)."""

    dataset: str | None = None
    config: str | None = None
    splits: dict[str, str] = field(
        default_factory=lambda: {"train": "train", "dev": "validation", "test": "test"}
    )
    columns: dict[str, str] = field(
        default_factory=dict
    )  # the Hub's names of the data's columns, where they differ


@dataclass
class FineTuning:
    """What fine-tuning a task needs, prepared before the model is loaded."""

    features: list[dict]  # tokenised training examples with their label keys
    meta: dict  # what using the model again needs (input format, window), saved in tunelab.json
    stats: dict  # counts for metrics.json (train_examples, ...)
    head_init: Callable | None = None  # sets the new head's weights (classification: from the label words)
    loss_fn: Callable | None = None  # None: the model's own loss


@dataclass(frozen=True, kw_only=True)
class Task:
    """The kind-independent part of a task. Kinds subclass it (ClassificationTask, ExtractiveQATask)."""

    kind: ClassVar[str]
    head: ClassVar[str]  # the model head: classification | span (tunelab.models.heads)
    pipeline_tag: ClassVar[str]  # the Hub's task type
    zero_shot_padding_side: ClassVar[str] = "right"

    name: str
    title: str
    description: str  # what the task is, for model cards ("binary sentiment classification (GLUE SST-2)")
    splits: dict[str, tuple[DataFile, ...]]
    relative_to: str = "task_file"
    base_dir: str | None = None  # the task file's folder
    source: str | None = None  # the task file; None for a built-in task
    zeroshot_defaults: dict = field(default_factory=dict)
    finetune_defaults: dict = field(default_factory=dict)
    hub: HubInfo = field(default_factory=HubInfo)
    limitations: tuple[str, ...] = ()  # for model cards
    unit: str = "examples"  # what the examples are, in reports ("sentences", "questions")
    study_enabled: bool = True  # whether a study runs it unless told otherwise
    dataset: DatasetRef | None = None  # data.dataset: read through `datasets`; splits name its splits
    definition: dict = field(default_factory=dict, compare=False)  # the mapping it was read from

    # ---- reading a definition ---------------------------------------------------------------------------

    COMMON_KEYS: ClassVar[tuple[str, ...]] = (
        "name",
        "title",
        "kind",
        "description",
        "unit",
        "enabled",
        "data",
        "zeroshot",
        "finetune",
        "hub",
        "card",
    )
    UNIT: ClassVar[str] = "examples"
    KIND_KEYS: ClassVar[tuple[str, ...]] = ()
    DATA_KEYS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_definition(
        cls,
        mapping: dict,
        *,
        where: str,
        name: str,
        source: str | None,
        base_dir: str | None,
        default_root: str,
    ) -> Task:
        d = Definition(mapping, where)
        d.only(cls.COMMON_KEYS + cls.KIND_KEYS)
        name = d.get("name", str, name)
        if not NAME.fullmatch(name):
            given = "name" in d.mapping
            raise d.error(
                "name",
                f"must be letters, digits and _ . - (it names folders), got {name!r}"
                + ("" if given else " (from the file's name: give the task a `name:` key)"),
            )
        title = d.text("title", name)
        data = d.section("data")
        data.only(("relative_to", "splits", "dataset", "config") + cls.DATA_KEYS)
        dataset = data.get("dataset", str)
        if data.get("config", str) and not dataset:
            raise data.error("config", "names a config of `dataset`, which is missing")
        relative_to = data.get("relative_to", str, default_root)
        if relative_to not in RELATIVE_TO:
            raise data.error("relative_to", f"must be one of {', '.join(RELATIVE_TO)}, got {relative_to!r}")
        common = dict(
            name=name,
            title=title,
            description=d.text("description", title),
            splits=_splits(data.section("splits"))
            if "splits" in data.mapping
            else ({k: (DataFile(v),) for k, v in DEFAULT_SPLITS.items()} if dataset else {}),
            relative_to=relative_to,
            base_dir=base_dir,
            source=source,
            zeroshot_defaults=check_mapping(
                {} if mapping.get("zeroshot") is None else mapping["zeroshot"],
                for_kind(ZEROSHOT_OPTIONS, cls.kind),
                where,
                prefix="zeroshot.",
                what="zero-shot options",
            ),
            finetune_defaults=check_mapping(
                {} if mapping.get("finetune") is None else mapping["finetune"],
                {**for_kind(FINETUNE_EXTRAS, cls.kind), **TRAIN_OPTIONS},
                where,
                prefix="finetune.",
                what="fine-tuning options",
            ),
            hub=_hub(d.section("hub")),
            limitations=tuple(_card(d.section("card"))),
            study_enabled=d.get("enabled", bool, True),
            unit=d.text("unit", cls.UNIT),
            definition=copy.deepcopy(mapping),
            dataset=DatasetRef.parse(dataset, data.get("config", str), f"{where}: data.dataset")
            if dataset
            else None,
        )
        train = {k: v for k, v in common["finetune_defaults"].items() if k in TRAIN_OPTIONS}
        TrainConfig(**train).check_together(lambda key: f"{where}: finetune")  # options that clash, at load
        return cls(**common, **cls.parse_kind(d, data))

    @classmethod
    def parse_kind(cls, d: Definition, data: Definition) -> dict:
        """The kind's own fields from a definition (its keys and `data` keys)."""
        return {}

    def to_dict(self, *, with_data: bool = True) -> dict:
        """The definition as a task file would hold it, with data paths made absolute (so that it reads the
        same from anywhere); without the data files when they are local paths not to be shared (an export)."""
        out = copy.deepcopy(self.definition)
        out.update(name=self.name, kind=self.kind)
        if not with_data:
            (out.get("data") or {}).pop("splits", None)
            return out
        data = out.setdefault("data", {})
        data["relative_to"] = self.relative_to
        if not self.splits:  # a task given its files on the command line (--train-file, --data-file)
            data.pop("splits", None)
        elif self.relative_to == "task_file" and self.base_dir and self.dataset is None:
            data["splits"] = {
                split: [{**_file_dict(f), "file": str(Path(self.base_dir) / f.path)} for f in files]
                for split, files in self.splits.items()
            }
        return out

    # ---- data -------------------------------------------------------------------------------------------

    def data_path(self, split: str, data_dir: str | None = None) -> Path:
        """The file of `split`: the first of its candidates that exists."""
        if self.dataset is not None:
            raise UsageError(f"task {self.name} reads the dataset {self.dataset.id}, not files")
        if not self.splits:
            raise UsageError(
                f"task {self.name} names no data files (its definition has no data.splits): give "
                "--data-file (and --train-file to fine-tune) or --dataset"
            )
        split = split_name(split, tuple(self.splits))
        if self.relative_to == "data_dir":
            root = resolve_data_dir(data_dir)
        else:
            root = Path(self.base_dir or ".")
        return first_existing(f"{self.title} {split}", [root / f.path for f in self.splits[split]])

    def needs_data_dir(self) -> bool:
        return self.relative_to == "data_dir" and self.dataset is None

    def load_split(
        self,
        split: str,
        data_dir: str | None = None,
        data_file: str | None = None,
        dataset: str | DatasetRef | None = None,
    ) -> tuple[list, str]:
        """(examples, where they came from) of a split: `data_file` when given, else the `dataset` (a Hub id
        `ID[:CONFIG]` or a local folder, read through `datasets`), else the task's own dataset or files."""
        if data_file:
            return self.read(Path(data_file)), str(data_file)
        ref = DatasetRef.parse(dataset) if isinstance(dataset, str) else dataset or self.dataset
        if ref is None:
            path = self.data_path(split, data_dir)
            return self.read(path), str(path)
        hub_split = self.dataset_split(split, ref)
        where = ref.where(hub_split)
        rows = load_rows(ref.id, ref.config, hub_split, self.title)
        return self.from_rows(rows, where, self.dataset_columns(ref)), where

    def dataset_split(self, split: str, ref: DatasetRef) -> str:
        """The dataset's name of the task's split (`validation` means dev; other names pass through)."""
        split = "dev" if split == "validation" else split
        if ref == self.dataset and split in self.splits:
            return self.splits[split][0].path
        if self.hub.dataset and ref.id == self.hub.dataset:
            return self.hub.splits.get(split, split)
        return DEFAULT_SPLITS.get(split, split)

    def dataset_columns(self, ref: DatasetRef) -> dict[str, str]:
        """The dataset's names of the task's columns: the `hub.columns` of the task's Hub dataset."""
        return dict(self.hub.columns) if self.hub.dataset and ref.id == self.hub.dataset else {}

    def from_rows(self, rows: list[dict], where: str, columns: dict[str, str]) -> list:
        """The examples of a dataset split's rows, checked as a file's are (errors name `where`, the row)."""
        raise NotImplementedError

    def from_hub(self, split: str) -> list:
        """The task's examples from its Hub dataset (`pip install 'tunelab[hub]'`); split train, dev, test."""
        split = "dev" if split == "validation" else split
        if not self.hub.dataset or split not in self.splits:
            raise UsageError(
                f"unknown {self.title} split {split!r}: expected {', '.join(self.splits)} "
                f"(validation means dev){'' if self.hub.dataset else '; no Hub dataset is named'}"
            )
        return self.load_split(split, dataset=DatasetRef(self.hub.dataset, self.hub.config))[0]

    def describe_file(self, path: str | None) -> DataFile | None:
        """What a data file is, when it is one of this task's candidate files (matched by its last path
        parts)."""
        if not path:
            return None
        parts = Path(path).parts
        for files in self.splits.values():
            for f in files:
                own = Path(f.path).parts
                if len(own) <= len(parts) and tuple(parts[-len(own) :]) == own:
                    return f
        return None

    def split_of(self, path: str | None) -> str | None:
        file = self.describe_file(path)
        return next((s for s, files in self.splits.items() if file in files), None) if file else None

    def eval_dataset(self, data: str | None) -> dict:
        """What metrics on the file `data` were measured on, for model cards: the Hub dataset and split, a
        display name, whether it is the official split, and a caveat."""
        hub = _DATASET_WHERE.fullmatch(data or "")
        if hub and not Path(data).exists():
            ref = DatasetRef(hub["id"], hub["config"])
            own = ref.id == self.hub.dataset and ref.config in (None, self.hub.config)  # None: its default
            official = own and hub["split"] in set(self.hub.splits.values())
            return {
                "type": ref.id,
                "config": ref.config,
                "split": hub["split"],
                "name": f"{ref.id} {hub['split']}" if official else f"{self.title} data from {data}",
                "official": official,
                "note": None,
                "custom": not official,
            }
        file, split = self.describe_file(data), self.split_of(data)
        shown = Path(data).name if data else "unknown"
        hub_split = self.hub.splits.get(split, split) if split else (Path(data).stem if data else "unknown")
        if file is None:
            return {
                "type": self.hub.dataset or self.name,
                "config": self.hub.config,
                "split": hub_split,
                "name": f"{self.title} format file {shown}",
                "official": False,
                "note": None,
                "custom": True,
            }
        return {
            "type": self.hub.dataset or self.name,
            "config": self.hub.config,
            "split": hub_split,
            "name": file.name or f"{self.title} {split} ({shown})",
            "official": file.official,
            "note": file.note,
            "custom": False,
        }

    # ---- option defaults (the CLI's and a study's) ------------------------------------------------------

    @property
    def default_prompt(self) -> str:
        """The zero-shot template used unless another is asked for."""
        raise NotImplementedError

    def zeroshot_options(self) -> dict:
        """Every zero-shot option of this task's kind: the task's defaults over the options' own."""
        out = {name: opt.default for name, opt in for_kind(ZEROSHOT_OPTIONS, self.kind).items()}
        out.update({k: v for k, v in self.zeroshot_defaults.items() if k in out})
        if out["prompt"] is None:
            out["prompt"] = self.default_prompt
        return out

    def finetune_extras(self) -> dict:
        """The kind's fine-tuning options besides the training ones (classification: input_prompt,
        detokenize), with the task's defaults; the input prompt defaults to the zero-shot template, and
        detokenize to zero-shot's."""
        out = {name: opt.default for name, opt in for_kind(FINETUNE_EXTRAS, self.kind).items()}
        out.update({k: v for k, v in self.finetune_defaults.items() if k in out})
        if "input_prompt" in out and "input_prompt" not in self.finetune_defaults:
            out["input_prompt"] = self.default_prompt
        if "detokenize" in out and "detokenize" not in self.finetune_defaults:
            out["detokenize"] = self.zeroshot_options().get("detokenize", False)
        return out

    def training_defaults(self) -> dict:
        """The task's training options (tunelab.options.TrainConfig) that differ from the general defaults."""
        return {k: v for k, v in self.finetune_defaults.items() if k in TRAIN_OPTIONS}

    def entry_defaults(self) -> dict:
        """A study's task entry before the layers: enabled, and the task file of a task of one's own."""
        return {"enabled": self.study_enabled, **({"file": self.source} if self.source is not None else {})}

    def stage_definition(self) -> dict:
        """What a study's stages of this task take from its definition (their records keep its digest): the
        definition without its option defaults (`zeroshot`, `finetune`: the study's config.yaml holds the
        options they resolve to, and refuses a run folder started with others), so a changed default does
        not redo stages whose options it does not change."""
        return {k: v for k, v in self.to_dict(with_data=False).items() if k not in ("zeroshot", "finetune")}

    # ---- what kinds implement ---------------------------------------------------------------------------

    def read(self, path: str | Path) -> list:
        raise NotImplementedError

    def for_data(self, examples: list) -> Task:
        """The task as these examples are to be scored (extractive QA: v2.0 when any is unanswerable)."""
        return self

    def for_version(self, version: str) -> Task:
        """The task scored as SQuAD `version` (extractive QA only)."""
        raise UsageError(
            f"{self.name} is a {self.kind} task: a SQuAD version applies to extractive QA tasks only"
        )

    def for_metrics(self, metrics: dict | None) -> Task:
        """The task as these metrics were scored (extractive QA: v2.0 when they have v2.0's keys)."""
        return self

    def for_meta(self, meta: dict) -> Task:
        """The task as a fine-tuned folder's tunelab.json says it was trained (extractive QA: its version)."""
        return self

    def check_meta(self, meta: dict) -> None:
        """UsageError when a fine-tuned folder's tunelab.json holds values tunelab never writes (a file edited
        by hand or damaged): they would fail later, or silently change what the model is given."""
        length = meta.get("max_length", 1)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise UsageError(f"max_length must be an integer >= 1, got {length!r}")
        if not isinstance(meta.get("bidirectional", False), bool):
            raise UsageError(f"bidirectional must be true or false, got {meta['bidirectional']!r}")

    @property
    def unit_singular(self) -> str:
        return self.unit[:-1] if self.unit.endswith("s") else self.unit

    def head_options(self) -> dict:
        """Keyword arguments of `tunelab.models.load_task_model` for this task's head (classification:
        labels)."""
        return {}

    def compatible(self, other: Task) -> str | None:
        """Why a model fine-tuned for `other` cannot be evaluated as this task, or None."""
        if other.kind != self.kind:
            return f"it was fine-tuned for {other.name!r} ({other.kind}), not a {self.kind} task"
        return None

    def summarize(self, examples: list) -> dict:
        raise NotImplementedError

    def format_summary(self, summary: dict) -> str:
        raise NotImplementedError

    def check_file(self, path: str | Path) -> dict:
        """Read and validate a file fully; a summary with "task", "file" and the counts (DataError
        otherwise)."""
        return {"task": self.name, "file": str(path), **self.summarize(self.read(path))}

    def extra_training(
        self, specs: list[str] | None, data_dir: str | None, evaluated: list
    ) -> tuple[list, str]:
        """(examples, their description) of the `extra_train` specs: TASK:SPLIT (a built-in task's split,
        from `data_dir`) or a file, each read by this task's reader. UsageError when one shares an input (for
        QA: a passage) with the evaluated examples, or is of another kind of task."""
        if not specs:
            return [], ""
        out, names = [], []
        taken = {self.shot_key(ex) for ex in evaluated}
        for spec in specs:
            name, _, split = spec.partition(":")
            if split and name in builtin_names():
                other = get_task(name)
                if other.kind != self.kind:
                    raise UsageError(f"extra_train: {spec}: {name} is a {other.kind} task, not {self.kind}")
                try:
                    path = other.data_path(split, data_dir)
                except UsageError as exc:
                    raise UsageError(f"extra_train: {spec}: {exc}") from None
            elif split and not Path(spec).exists():
                tasks = ", ".join(builtin_names())
                raise UsageError(f"extra_train: {spec}: not a built-in TASK:SPLIT ({tasks}), nor a file")
            else:
                path = Path(spec)
            examples = self.read(path)
            shared = sum(self.shot_key(ex) in taken for ex in examples)
            if shared:
                raise UsageError(
                    f"extra_train: {path} shares {shared} inputs with the evaluated split; it must not"
                )
            out += examples
            names.append(str(path))
        return out, " + ".join(names)

    # ---- k-shot prompting -------------------------------------------------------------------------------

    def shot_key(self, ex: Any) -> Any:
        """What makes two examples the same input, for keeping k-shot examples out of the evaluated ones."""
        raise NotImplementedError

    def draw_shots(self, pool: list, k: int, seed: int, evaluated: list) -> list:
        """k examples of `pool` (the training split) drawn with `seed`, none of them the same input as an
        evaluated example (nor, for QA, from an evaluated passage); UsageError when too few are left."""
        import random

        taken = {self.shot_key(ex) for ex in evaluated}
        candidates = [ex for ex in pool if self.shot_key(ex) not in taken]
        if len(candidates) < k:
            raise UsageError(
                f"shots: {k} asked for, but the training split has only {len(candidates)} examples that are "
                "not among the evaluated ones"
            )
        return random.Random(seed).sample(candidates, k)


def _file_dict(f: DataFile) -> dict:
    return {
        k: v
        for k, v in (("file", f.path), ("name", f.name), ("official", f.official), ("note", f.note))
        if v not in (None, False)
    }


def _splits(d: Definition) -> dict[str, tuple[DataFile, ...]]:
    splits = {}
    for split, spec in d.mapping.items():
        if not isinstance(split, str) or not NAME.fullmatch(split):
            raise d.error(str(split), "a split name is letters, digits and _ . -")
        specs = spec if isinstance(spec, list) else [spec]
        if not specs:
            raise d.error(split, "needs at least one file")
        splits[split] = tuple(DataFile.read(s, d, split) for s in specs)
    if "validation" in splits:
        raise d.error(
            "validation", "`validation` means dev in tunelab (--split validation reads dev): name it dev"
        )
    if "dev" not in splits:
        raise UsageError(
            f"{d.where}: {d.prefix}dev: missing (required: the split zero-shot and evaluation read; "
            "`validation` is not a separate name)"
        )
    return splits


def _hub(d: Definition) -> HubInfo:
    d.only(("dataset", "config", "splits", "columns"))
    maps = {}
    for key in ("splits", "columns"):
        maps[key] = d.get(key, dict, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in maps[key].items()):
            raise d.error(key, f"must map names to the Hub dataset's {key} names (strings)")
    if d.get("config", str) and not d.get("dataset", str):
        raise d.error("config", "names a config of `dataset`, which is missing")
    return HubInfo(
        d.get("dataset", str), d.get("config", str), {**HubInfo().splits, **maps["splits"]}, maps["columns"]
    )


def _card(d: Definition) -> list[str]:
    d.only(("limitations",))
    return d.strings("limitations") or []


# ------------------------------------------------------------------------------------------------------------
# The registry: built-in tasks by name, a user's task by file


def _kinds() -> dict[str, type[Task]]:
    from tunelab.tasks.classification import ClassificationTask
    from tunelab.tasks.extractive_qa import ExtractiveQATask

    return {"classification": ClassificationTask, "extractive_qa": ExtractiveQATask}


def parse_task(
    mapping: Any,
    *,
    where: str,
    name: str,
    source: str | None = None,
    base_dir: str | None = None,
    default_root: str = "task_file",
) -> Task:
    """A task from its definition (the mapping of a task file)."""
    d = Definition(mapping, where)
    kind = d.get("kind", str, required=True)
    if kind not in KINDS:
        raise d.error("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    return _kinds()[kind].from_definition(
        mapping, where=where, name=name, source=source, base_dir=base_dir, default_root=default_root
    )


_BUILTIN_CACHE: dict[str, Task] = {}


def builtin_names() -> list[str]:
    from tunelab.tasks.builtin import BUILTIN

    return list(BUILTIN)


def get_task(name: str) -> Task:
    """A built-in task by name."""
    from tunelab.tasks.builtin import BUILTIN

    if name not in BUILTIN:
        raise UsageError(
            f"unknown task {name!r}: expected a built-in task ({', '.join(BUILTIN)}) or a task file"
        )
    if name not in _BUILTIN_CACHE:
        _BUILTIN_CACHE[name] = parse_task(
            BUILTIN[name], where=f"built-in task {name}", name=name, default_root="data_dir"
        )
    return _BUILTIN_CACHE[name]


def load_task(spec: str | Task, *, name: str | None = None) -> Task:
    """A task: a built-in name (sst2, squad, squad_v2) or the path of a task file (YAML). `name` renames a
    file's task (a study's key); by default a task file's task is named by its `name` key, else its file
    name."""
    from tunelab.config_files import read_mapping

    if isinstance(spec, Task):
        return spec
    if spec in builtin_names() and name in (None, spec):
        return get_task(spec)
    path = Path(spec).expanduser()
    if not path.exists() and path.suffix.lower() not in (".yaml", ".yml", ".json"):
        raise UsageError(
            f"unknown task {spec!r}: expected a built-in task ({', '.join(builtin_names())}) or a "
            "task file (YAML)"
        )
    mapping = read_mapping(path, "task file", "name, kind, data, labels, ...")
    task = parse_task(
        mapping,
        where=str(path),
        name=mapping.get("name") or path.stem,
        source=str(path.resolve()),
        base_dir=str(path.resolve().parent),
    )
    return task if name is None else _renamed(task, name)


def _renamed(task: Task, name: str) -> Task:
    from dataclasses import replace

    if not NAME.fullmatch(name):
        raise UsageError(f"task name {name!r}: letters, digits and _ . - (it names folders)")
    return replace(task, name=name)


def one_line(text: str) -> str:
    r"""A field of `tunelab predict`'s tab-separated output with backslash, tab and line breaks escaped
    (`\\`, `\t`, `\n`, `\r`), so that every input stays one line of columns."""
    return text.translate({ord("\\"): "\\\\", ord("\t"): "\\t", ord("\n"): "\\n", ord("\r"): "\\r"})


def task_from_meta(meta: dict, where: str) -> Task:
    """The task a fine-tuned folder was trained for: its stored definition (a task of one's own), else the
    built-in task it names. Errors name `where` (the folder's tunelab.json)."""
    from tunelab.errors import ModelError

    try:
        if isinstance(meta.get("task_definition"), dict):
            d = meta["task_definition"]
            data = d.get("data") if isinstance(d.get("data"), dict) else {}  # (parse_task says what is wrong)
            task = parse_task(
                d,
                where="task_definition",
                name=str(d.get("name") or meta.get("task")),
                default_root=data.get("relative_to", "task_file"),
            )
        else:
            task = get_task(str(meta.get("task")))
        task.check_meta(meta)
        return task.for_meta(meta)
    except UsageError as exc:
        raise ModelError(f"{where}: {exc}") from None
