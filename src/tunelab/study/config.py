"""A study's configuration: layers (built-in defaults < --preset < --config FILE < --set KEY.PATH=VALUE), each
checked key by key against the option schema (tunelab.options) before they are merged, then resolved: every
task's options filled in from its definition's defaults, paths made absolute.

    model, data_dir, seed                      the study's own options (options.StudyOptions)
    tasks:
      <name>:                                  sst2, squad, squad_v2, or a task of your own with `file:`
        enabled, file, version                 (options.StudyTaskOptions)
        zeroshot: {limit, prompt, ...}         (options.ZeroShotOptions, the keys of the task's kind)
        finetune: {limit, train_limit, input_prompt, <training options>}   (FinetuneExtras, TrainConfig)
        variants: {<name>: {<finetune keys>}}   extra fine-tuned models: each overrides keys of `finetune`

A task file named in a config file is found relative to that file's folder; one named by --set, relative to
the current folder. The full schema: `tunelab study --print-schema` (docs/study-config.md).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tunelab.config_files import read_mapping
from tunelab.errors import UsageError
from tunelab.options import (
    FINETUNE_EXTRAS,
    STUDY_OPTIONS,
    STUDY_TASK_OPTIONS,
    TRAIN_OPTIONS,
    ZEROSHOT_OPTIONS,
    TrainConfig,
    did_you_mean,
    for_kind,
)
from tunelab.tasks import Task, builtin_names, get_task, load_task

PRESETS = ("smoke", "full")
SECTIONS = ("zeroshot", "finetune")
PROMPT_KEYS = ("prompt", "input_prompt")  # a prompt mapping replaces another, it never merges into it
# A variant's name is part of a folder and stage ids (`<task>/finetune-<name>`, `<task>/params-<name>`):
# seed<N> is a seed's folder, base and finetuned are the task's own parameter counts.
VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
SEED_FOLDER = re.compile(r"seed\d+")
RESERVED_VARIANTS = {"base", "finetuned"}


@dataclass(frozen=True)
class Variants:
    """The schema of a task's `variants`: names of one's choosing, each a mapping of `finetune` keys (or null,
    which removes a variant a lower layer defined; `variants: null` removes them all)."""

    finetune: dict

    def check_name(self, name: Any, source: str, path: str) -> str:
        if (
            not isinstance(name, str)
            or not VARIANT_NAME.fullmatch(name)
            or SEED_FOLDER.fullmatch(name)
            or name in RESERVED_VARIANTS
        ):
            raise UsageError(
                f"{source}: {path}{name}: a variant's name must be 1-40 lower-case letters, digits, '-' or "
                "'_' (starting with a letter or digit), and not seed<N> (the folder of a fine-tuning seed), "
                "base or finetuned (the task's own parameter counts)"
            )
        return name


@dataclass
class StudyConfig:
    data: dict  # the resolved configuration, every option of every task filled in
    sources: list[str]  # the layers, lowest first
    name: str  # used for the default run folder
    tasks: dict[str, Task] = field(default_factory=dict)  # every configured task, by its name in the study

    def task(self, name: str) -> dict:
        return self.data["tasks"][name]

    @property
    def enabled(self) -> list[str]:
        return [t for t, entry in self.data["tasks"].items() if entry["enabled"]]


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: expected {', '.join(PRESETS)}")
    return Path(str(importlib.resources.files("tunelab.configs").joinpath(f"study-{name}.yaml")))


def read_yaml(path: str | Path) -> dict:
    return read_mapping(path, "study config", "model, data_dir, seed, tasks")


def parse_set(item: str) -> tuple[str, dict]:
    """`key.path=value` (value read as a YAML scalar) -> (source, nested layer). `tasks.` may be left out."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    source = f"--set {item}"
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"{source}: expected KEY.PATH=VALUE, e.g. sst2.finetune.learning_rate=1e-4")
    if re.search(r"(?<![\w.'\"+-])[-+]?0[0-7_]+(?![\w.'\"])", raw):  # YAML 1.1 reads 042 as octal 34
        raise UsageError(f"{source}: a number with a leading zero is read as octal: drop the zero")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: cannot read the value as YAML: {exc}") from exc
    parts = key.split(".")
    if parts[0] not in STUDY_OPTIONS and parts[0] != "tasks":
        parts = ["tasks"] + parts
    layer: Any = value
    for part in reversed(parts):
        layer = {part: layer}
    return source, layer


@dataclass
class Layer:
    source: str  # the file or the --set item, for messages
    values: dict
    base: Path = field(default_factory=Path)  # where task files named here are found


# ------------------------------------------------------------------------------------------------------------
# Which tasks, and the schema of each


RUN_FOLDERS = {"params", "tracking", "figures"}  # a study run folder's own folders beside the task folders
RUN_FILES = {"config.yaml", "environment.json", "stages.json", "report.md", "report.html"}  # and its files
RUN_NAMES = {"summary"}  # the study's own tracker run (RUN/tracking/summary)


def _task_files(layers: list[Layer]) -> dict[str, tuple[str, Path, str]]:
    """The task file each task name is given (the highest layer wins): name -> (file, folder, source)."""
    files: dict[str, tuple[str, Path, str]] = {}
    for layer in layers:
        tasks = layer.values.get("tasks")
        if not isinstance(tasks, dict):
            continue
        for name, entry in tasks.items():
            if isinstance(entry, dict) and "file" in entry:
                value = STUDY_TASK_OPTIONS["file"].check(entry["file"], layer.source, f"tasks.{name}.file")
                if value is not None:
                    files[str(name)] = (value, layer.base, layer.source)
    return files


def _tasks(layers: list[Layer]) -> dict[str, Task]:
    """Every task the layers name: the built-ins, then the tasks of one's own (by file)."""
    tasks = {name: get_task(name) for name in builtin_names()}
    for name, (file, base, source) in _task_files(layers).items():
        reserved = RUN_FOLDERS | RUN_FILES | RUN_NAMES
        if name in reserved:
            raise UsageError(
                f"{source}: tasks.{name}: {name} is a name the study's run folder uses for its own "
                f"({', '.join(sorted(reserved))}): give the task another name"
            )
        path = Path(file).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            tasks[name] = load_task(str(path), name=name)
        except UsageError as exc:
            raise UsageError(f"{source}: tasks.{name}.file: {exc}") from None
    for layer in layers:
        for name in (layer.values.get("tasks") or {}) if isinstance(layer.values.get("tasks"), dict) else ():
            if name not in tasks:
                raise UsageError(
                    f"{layer.source}: unknown task {name!r} in tasks (built-in: "
                    f"{', '.join(builtin_names())}; a task of your own needs `file: path/to/task.yaml`)"
                )
    return tasks


def task_schema(task: Task) -> dict:
    """The keys of one task entry: option name -> Option, sections -> their option mappings."""
    finetune = {**for_kind(FINETUNE_EXTRAS, task.kind), **TRAIN_OPTIONS}
    return {
        **for_kind(STUDY_TASK_OPTIONS, task.kind),
        "zeroshot": for_kind(ZEROSHOT_OPTIONS, task.kind),
        "finetune": finetune,
        "variants": Variants(finetune),
    }


def schema(tasks: dict[str, Task]) -> dict:
    return {**STUDY_OPTIONS, "tasks": {name: task_schema(task) for name, task in tasks.items()}}


def validate_layer(layer: Any, source: str, spec: dict, prefix: str = "") -> dict:
    """Check one configuration layer (a preset, the --config file, one --set): every key known, every value of
    the right type. Returns the layer with values coerced. Errors name `source` and the dotted key."""
    if not isinstance(layer, dict):
        where = prefix.rstrip(".") or "the top level"
        raise UsageError(f"{source}: {where} must be a mapping, got {type(layer).__name__}")
    out = {}
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in spec:
            raise UsageError(
                f"{source}: unknown key {path!r}{did_you_mean([str(key)], spec)} (known here: "
                f"{', '.join(sorted(spec))})"
            )
        if isinstance(spec[key], Variants):  # null: no variants (those of lower layers removed)
            out[key] = None if value is None else _validate_variants(value, source, spec[key], path + ".")
        elif isinstance(spec[key], dict):
            if value is None and source.startswith("--set"):  # in a file, `sst2:` alone means its defaults
                raise UsageError(
                    f"{source}: {path} is a group of keys, which null would leave as it is; set one of its "
                    f"keys ({', '.join(sorted(spec[key]))})"
                    + (f", e.g. --set {key}.enabled=false to leave the task out" * ("enabled" in spec[key]))
                )
            out[key] = validate_layer(value if value is not None else {}, source, spec[key], path + ".")
        else:
            out[key] = spec[key].check(value, source, path)
    return out


def _validate_variants(layer: Any, source: str, spec: Variants, prefix: str) -> dict:
    if not isinstance(layer, dict):
        raise UsageError(
            f"{source}: {prefix.rstrip('.')} must be a mapping of variant names to finetune keys, "
            f"e.g. {{lora: {{method: lora}}}}, got {type(layer).__name__}"
        )
    out = {}
    for name, value in layer.items():
        spec.check_name(name, source, prefix)
        path = f"{prefix}{name}."
        out[name] = None if value is None else validate_layer(value, source, spec.finetune, path)
    return out


# ------------------------------------------------------------------------------------------------------------
# Defaults, merging, resolving


def task_defaults(task: Task) -> dict:
    """A task's study entry before any layer: its definition's defaults over the options' own."""
    finetune = {**task.finetune_extras(), **task.training_defaults()}
    return {
        **task.entry_defaults(),
        "zeroshot": task.zeroshot_options(),
        "finetune": finetune,
        "variants": {},
    }


def _merge(base: dict, over: dict, source: str, provenance: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in PROMPT_KEYS:
            out[key] = _merge(out[key], value, source, provenance, path + ".")
        else:
            out[key] = value
            provenance[path] = source
    return out


def train_config(cfg: dict, task: str, where: str = "config", variant: str | None = None) -> TrainConfig:
    """The TrainConfig of a task's finetune section, or of one of its variants (study-only keys removed; the
    study seed by default)."""
    entry = cfg["tasks"][task]
    source = entry["variants"][variant] if variant else entry["finetune"]
    section = {k: v for k, v in source.items() if k not in FINETUNE_EXTRAS}
    if section.get("seed") is None:
        section["seed"] = cfg["seed"]
    key = f"tasks.{task}.variants.{variant}" if variant else f"tasks.{task}.finetune"
    return TrainConfig.from_dict(section, where=f"{where}: {key}")


def _layers(config: str | None, preset: str | None, sets: list[str] | None) -> list[Layer]:
    layers: list[Layer] = []
    if preset or not config:
        p = preset_path(preset or "smoke")
        layers.append(Layer(str(p), read_yaml(p), p.parent))
    if config:
        layers.append(Layer(config, read_yaml(config), Path(config).expanduser().resolve().parent))
    for item in sets or []:
        source, values = parse_set(item)
        layers.append(Layer(source, values, Path.cwd()))
    return layers


def resolve_config(
    *,
    config: str | None = None,
    preset: str | None = None,
    sets: list[str] | None = None,
    resolve_paths: bool = True,
) -> StudyConfig:
    """defaults < preset (smoke when neither a preset nor a config file is given) < config file < --set."""
    layers = _layers(config, preset, sets)
    tasks = _tasks(layers)
    spec = schema(tasks)
    provenance: dict[str, str] = {}
    merged = json.loads(
        json.dumps(
            {
                **{k: o.default for k, o in STUDY_OPTIONS.items()},
                "tasks": {name: task_defaults(t) for name, t in tasks.items()},
            }
        )
    )
    for layer in layers:
        merged = _merge(merged, validate_layer(layer.values, layer.source, spec), layer.source, provenance)

    def where(prefix: str) -> str:
        srcs = sorted({s for k, s in provenance.items() if k == prefix or k.startswith(prefix + ".")})
        return ", ".join(srcs) if srcs else "defaults"

    for name, task in tasks.items():
        _resolve_task(merged, name, task, where)
    enabled = [t for t, entry in merged["tasks"].items() if entry["enabled"]]
    if not enabled:
        raise UsageError(f"{where('tasks')}: no task is enabled (set tasks.<task>.enabled: true)")
    if resolve_paths:
        _resolve_paths(merged, {t: tasks[t] for t in enabled}, where)
    name = Path(config).stem if config and not preset else (preset or "smoke")
    return StudyConfig(merged, [layer.source for layer in layers], name, tasks)


def _resolve_task(merged: dict, name: str, task: Task, where) -> None:
    """Cross-field checks of one task entry, each naming the layers that set it; the finetune section gets
    every training option."""
    entry = merged["tasks"][name]
    if "version" in entry and entry["version"] != task.version:
        raise UsageError(
            f"{where(f'tasks.{name}.version')}: tasks.{name}.version must be {task.version}, the "
            f"version of the task's files (squad is v1.1, squad_v2 v2.0), got {entry['version']!r}"
        )
    tc = train_config(merged, name, where(f"tasks.{name}.finetune"))
    extra = {k: entry["finetune"][k] for k in FINETUNE_EXTRAS if k in entry["finetune"]}
    entry["finetune"] = {**extra, **asdict(tc)}
    # each variant: the resolved finetune section with its overrides (a null variant is removed)
    variants = {v: over for v, over in (entry.get("variants") or {}).items() if over is not None}
    entry["variants"] = {v: {**entry["finetune"], **over} for v, over in variants.items()}
    for v in variants:
        section = entry["variants"][v]
        tc = train_config(merged, name, where(f"tasks.{name}.variants.{v}"), variant=v)
        entry["variants"][v] = {**{k: section[k] for k in FINETUNE_EXTRAS if k in section}, **asdict(tc)}
    sections = {"finetune": entry["finetune"], **{f"variants.{v}": f for v, f in entry["variants"].items()}}
    for key, section in sections.items():
        try:
            task.check_prompts(entry["zeroshot"]["prompt"], section.get("input_prompt"))
        except UsageError as exc:
            key = f"tasks.{name}.zeroshot.prompt / {key}.input_prompt"
            raise UsageError(f"{where(f'tasks.{name}')}: {key}: {exc}") from exc


def _resolve_paths(merged: dict, enabled: dict[str, Task], where) -> None:
    from tunelab.data.folder import resolve_data_dir

    on_files = [t for name, t in enabled.items() if not merged["tasks"][name].get("dataset")]
    if any(t.needs_data_dir() for t in on_files) or merged["data_dir"] is not None:
        try:
            given_as = "data_dir: DIR in the config (or --set data_dir=DIR)"
            merged["data_dir"] = str(resolve_data_dir(merged["data_dir"], given_as).resolve())
        except UsageError as exc:
            raise UsageError(f"{where('data_dir')}: data_dir: {exc}") from exc
    model = Path(merged["model"]).expanduser()
    if model.exists():
        merged["model"] = str(model.resolve())
    for name, task in enabled.items():  # as found (a run's config.yaml, read back, finds it from anywhere)
        if merged["tasks"][name].get("file") and task.source is not None:
            merged["tasks"][name]["file"] = task.source


def check_data(cfg: StudyConfig) -> None:
    """Fail before any work when a data file of an enabled task is missing or bad: its train and dev splits
    and its fine-tuning runs' extra_train files are read as the stages will read them (about a second for
    the whole SST-2 and SQuAD), so a bad line stops the study before hours of zero-shot scoring."""
    data_dir = cfg.data["data_dir"]
    for name in cfg.enabled:
        entry, task = cfg.task(name), cfg.tasks[name]
        if entry.get("dataset") or task.dataset is not None:
            continue  # read through `datasets` when the stage runs
        task.load_split("train", data_dir)
        dev, _ = task.load_split("dev", data_dir)
        for section in (entry["finetune"], *entry["variants"].values()):
            limit = section.get("limit")
            task.extra_training(section.get("extra_train"), data_dir, dev[:limit] if limit else dev)


def schema_doc() -> str:
    """`tunelab study --print-schema`: the option schema and the built-in tasks' own defaults."""
    from tunelab.options import schema_text

    defaults = {
        name: {"zeroshot": get_task(name).zeroshot_defaults, "finetune": get_task(name).finetune_defaults}
        for name in builtin_names()
    }
    return schema_text(defaults)
