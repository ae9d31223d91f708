"""Reading a study run folder: what the report reads, per task folder RUN/<task>/ (every part optional; a
missing part is reported):

  task.json (the task definition, written by the study), zeroshot/metrics.json, finetune/eval/metrics.json,
  the per-example files of both (classification: predictions.jsonl, paired by `line`; extractive QA:
  per_example.jsonl, paired by `id`, and finetune/eval/nbest_predictions.json for the span scores),
  finetune/train_log.jsonl, finetune/tunelab.json, finetune/training_config.json; the same files of each
  fine-tuning variant in finetune-<variant>/ (the config's `variants`)

and RUN/params/<task>.json, RUN/config.yaml, RUN/environment.json, RUN/stages.json.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import UsageError
from tunelab.metrics import mode_name
from tunelab.outputs import read_json, read_jsonl
from tunelab.study.config import RUN_FOLDERS
from tunelab.tasks import Task, builtin_names, get_task, load_task
from tunelab.tasks.base import parse_task

TASK_FILE = "task.json"  # RUN/<task>/task.json: the definition of a task the study ran
ROWS_FILE = {"classification": "predictions.jsonl", "extractive_qa": "per_example.jsonl"}


# Metrics the report computes with: a file where one of them is not a finite number was not written by tunelab
NUMERIC_METRICS = (
    "n",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "macro_f1",
    "exact_match",
    "HasAns_exact",
    "HasAns_f1",
    "NoAns_exact",
    "NoAns_f1",
    "seconds",
    "train_seconds",
)


def _json(path: Path) -> dict | None:
    """A JSON object tunelab wrote in the run folder, None when the file is not there; UsageError naming the
    file when it is not an object or a metric in it is not a finite number."""
    if not path.is_file():
        return None
    doc = read_json(path)
    for key in NUMERIC_METRICS:
        value = doc.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
        ):
            raise UsageError(f"{path}: {key} must be a finite number, got {value!r}")
    return doc


def _jsonl(path: Path) -> list[dict] | None:
    return read_jsonl(path) if path.is_file() else None


@dataclass
class VariantRun:
    """One of a task's fine-tuning variants: RUN/<task>/finetune-<name>/ (every part optional)."""

    name: str
    folder: Path
    metrics: dict | None
    rows: list[dict] | None
    meta: dict | None  # tunelab.json
    params: dict | None  # params/<task>.json's variants.<name>: task_model, finetuned
    method: str | None  # from the saved folder, else the configuration


@dataclass
class TaskRun:
    name: str
    task: Task
    params: dict | None
    zs: dict | None  # metrics
    ft: dict | None
    zs_rows: list[dict] | None
    ft_rows: list[dict] | None
    train_log: list[dict] | None
    ft_meta: dict | None
    train_cfg: dict | None
    ft_nbest: dict | None
    folder: Path = field(default_factory=Path)
    variants: list[VariantRun] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.task.title

    @property
    def kind(self) -> str:
        return self.task.kind

    @property
    def prompting(self) -> str:
        """How the prompted model was run: "zero-shot", or "K-shot" when its prompts held K solved
        examples."""
        return mode_name(self.zs or {})

    @property
    def prompting_label(self) -> str:
        """`prompting`, with the decoding of generated answers, the passage focus, detokenized inputs and the
        answers' avoiding of the question's words where there are ("3-shot, free decoding, passage focused to
        2 sentences, question's words avoided"; "zero-shot, inputs detokenized")."""
        zs = self.zs or {}
        decoding, focus = zs.get("decoding"), zs.get("focus")
        label = f"{self.prompting}, {decoding} decoding" if decoding else self.prompting
        label += f", passage focused to {focus} sentence{'s' * (focus > 1)}" if focus else ""
        label += ", inputs detokenized" if zs.get("detokenize") else ""
        return label + (", question's words avoided" if zs.get("question_words") == "avoid" else "")


def discover(run: Path, config: dict | None) -> list[str]:
    """The run's task names: the configuration's enabled tasks (built-ins first, in their order), then any
    other task folder or parameter file found."""
    names: list[str] = []
    if config and isinstance(config.get("tasks"), dict):
        names = [t for t, c in config["tasks"].items() if isinstance(c, dict) and c.get("enabled")]
    for p in sorted(run.iterdir()):
        if p.name in RUN_FOLDERS:  # never a task's
            continue
        if p.is_dir() and p.name not in names and ((p / "zeroshot").is_dir() or (p / "finetune").is_dir()):
            names.append(p.name)
    for p in sorted((run / "params").glob("*.json")) if (run / "params").is_dir() else []:
        if p.stem not in names:
            names.append(p.stem)
    order = {t: i for i, t in enumerate(builtin_names())}
    return sorted(names, key=lambda t: (order.get(t, len(order)), names.index(t)))


def task_of(run: Path, name: str, config: dict | None, metrics: dict | None) -> Task:
    """The task of a run's task folder: its task.json, else the config's task file, else the built-in task its
    metrics (or folder) name."""
    folder = run / name
    if (folder / TASK_FILE).is_file():
        d = read_json(folder / TASK_FILE, "the task definition")
        return parse_task(
            d,
            where=str(folder / TASK_FILE),
            name=name,
            default_root=(d.get("data") or {}).get("relative_to", "task_file"),
        )
    entry = ((config or {}).get("tasks") or {}).get(name) or {}
    if isinstance(entry, dict) and isinstance(entry.get("file"), str) and Path(entry["file"]).is_file():
        return load_task(entry["file"], name=name)
    for candidate in ((metrics or {}).get("task"), name):
        if candidate in builtin_names():
            return get_task(candidate)
    raise UsageError(
        f"{folder}: cannot tell which task this is (no {TASK_FILE}, and {name!r} is not a built-in task)"
    )


def _variant_names(folder: Path, entry: dict) -> list[str]:
    """The configured variants (in their order), then any other finetune-<name>/ folder (not a seed's)."""
    names = list(entry.get("variants") or {}) if isinstance(entry.get("variants"), dict) else []
    for p in sorted(folder.glob("finetune-*")) if folder.is_dir() else []:
        v = p.name.removeprefix("finetune-")
        if p.is_dir() and v not in names and not re.fullmatch(r"seed\d+|.*\.partial", v):
            names.append(v)
    return names


def load_variants(run: Path, name: str, config: dict | None, rows_file: str, params: dict | None):
    entry = ((config or {}).get("tasks") or {}).get(name) or {}
    entry = entry if isinstance(entry, dict) else {}
    out = []
    for v in _variant_names(run / name, entry):
        d = run / name / f"finetune-{v}"
        meta = _json(d / "tunelab.json")
        configured = ((entry.get("variants") or {}).get(v) or {}).get("method")
        out.append(
            VariantRun(
                name=v,
                folder=d,
                metrics=_json(d / "eval" / "metrics.json"),
                rows=_jsonl(d / "eval" / rows_file),
                meta=meta,
                params=((params or {}).get("variants") or {}).get(v),
                method=(meta or {}).get("method") or configured,
            )
        )
    return out


def load_task_run(run: Path, name: str, config: dict | None) -> TaskRun:
    d = run / name
    zs = _json(d / "zeroshot" / "metrics.json")
    ft = _json(d / "finetune" / "eval" / "metrics.json")
    task = task_of(run, name, config, zs or ft).for_metrics(zs or ft)
    rows_file = ROWS_FILE[task.kind]
    nbest = d / "finetune" / "eval" / "nbest_predictions.json"
    params = _json(run / "params" / f"{name}.json")
    return TaskRun(
        name=name,
        task=task,
        params=params,
        zs=zs,
        ft=ft,
        zs_rows=_jsonl(d / "zeroshot" / rows_file),
        ft_rows=_jsonl(d / "finetune" / "eval" / rows_file),
        train_log=_jsonl(d / "finetune" / "train_log.jsonl"),
        ft_meta=_json(d / "finetune" / "tunelab.json"),
        train_cfg=_json(d / "finetune" / "training_config.json"),
        ft_nbest=_json(nbest) if task.kind == "extractive_qa" else None,
        folder=d,
        variants=load_variants(run, name, config, rows_file, params),
    )
