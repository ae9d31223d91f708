"""Zero-shot, fine-tuning and evaluation of any task, and the fine-tuned folders they write and read.

Each run writes one output folder atomically (tunelab.outputs.atomic_output): metrics.json plus the task
kind's per-example files (classification: predictions.jsonl; extractive QA: per_example.jsonl,
predictions.json, nbest_predictions.json and, for v2, na_probs.json). A fine-tuning folder is a Hugging Face
`from_pretrained` folder with tunelab.json (what using it again needs: task, input format, base model),
training_config.json, train_log.jsonl, loss.png and eval/ (the evaluation of the dev examples).

Under `accelerate launch`, zero-shot and evaluation give each process a share of the examples and the first
writes; fine-tuning trains on every process and the first saves and evaluates.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from tunelab import precision
from tunelab.distributed import device, main_process, sharded_map
from tunelab.errors import ModelError, UsageError
from tunelab.models import align_pad_token, load_causal_lm, load_task_model, load_tokenizer
from tunelab.models.attention import make_bidirectional
from tunelab.models.params import LoraOptions, apply_method
from tunelab.models.registry import local_files
from tunelab.options import TrainConfig, ZeroShotOptions
from tunelab.outputs import Inputs, atomic_output, check_apart, read_json, write_json
from tunelab.tasks import Task, task_from_meta
from tunelab.training import save_config, set_seed, train, whole_model

META_FILE = "tunelab.json"  # what tunelab needs to use a fine-tuned folder again


def sample(examples: list, n: int | None, seed: int) -> list:
    """A seeded random sample of n examples (all when n is None or too large), in their order."""
    import random

    if not n or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def zeroshot(
    task: Task,
    model_spec: str,
    examples: list,
    data: str,
    out: str | Path,
    options: ZeroShotOptions,
    *,
    shot_pool: list | None = None,
    overwrite: bool = False,
    report_to: list[str] | None = None,
    inputs: Inputs = (),
    data_examples: int | None = None,
) -> dict | None:
    """Evaluate the base model by prompting; returns the metrics (None on processes that do not write).
    `data_examples`: how many examples the evaluated split holds, when `examples` are its first few (a limit;
    recorded, so that a model card never calls a subset's score the split's).
    `inputs`: what else the caller read (a data folder, a config file), which `out` must not touch.
    With `options.shots` = K > 0, K examples drawn from `shot_pool` (the task's training split, never the
    evaluated examples) are shown solved before each input (k-shot). `report_to`: experiment trackers, which
    get the metrics and the options (`log_final`)."""
    task = task.for_data(examples)
    task.check_eval(examples, data)
    task.check_prompts(options.prompt, None)
    shots = []
    if options.shots:
        if shot_pool is None:
            raise UsageError(f"shots: {options.shots} needs the task's training split to draw examples from")
        shots = task.draw_shots(shot_pool, options.shots, options.shot_seed, examples)
    dev = device()
    read = [local_files(model_spec), ("data file", data), *inputs]
    with atomic_output(out, overwrite=overwrite, inputs=read) as work:
        tokenizer = load_tokenizer(model_spec, padding_side=task.zero_shot_padding_side)
        model = load_causal_lm(model_spec, dtype=precision.eval_dtype(dev, options.bf16)).to(dev).eval()
        t0 = time.perf_counter()
        # under `accelerate launch`, each process scores a share
        predictions, extra = task.zero_shot(
            model, tokenizer, examples, options, spread=sharded_map, shots=shots
        )
        seconds = time.perf_counter() - t0
        if not main_process():
            return None
        extra.update(seconds=seconds, device=str(dev), dtype=str(model.dtype).removeprefix("torch."))
        extra.update(shots=options.shots, **_split_size(data_examples))
        if shots:
            extra.update(shot_seed=options.shot_seed, shot_examples=[_shot_ref(ex) for ex in shots])
        metrics = task.write_results(
            work,
            model=model_spec,
            mode="zeroshot",
            data=data,
            examples=examples,
            predictions=predictions,
            extra=extra,
        )
        hparams = {"model": model_spec, "task": task.name, "data": data, "options": asdict(options)}
        log_final(report_to, work / "tracking", "zeroshot", hparams, metrics)
        return metrics


def _split_size(data_examples: int | None) -> dict:
    return {"data_examples": data_examples} if data_examples is not None else {}


def _shot_ref(ex) -> dict:
    """Which training example a k-shot example was: its id (QA) or line (classification)."""
    return {"id": ex.id} if hasattr(ex, "id") else {"line": ex.line}


def prepare_model(spec: str, task: Task, cfg: TrainConfig, tokenizer, head_init=None) -> torch.nn.Module:
    """The task model with the pretrained body, set up for `cfg.method` (LoRA-wrapped, or all but the head
    frozen)."""
    model = load_task_model(spec, task.head, head_init=head_init, **task.head_options())
    align_pad_token(model, tokenizer)
    if cfg.bidirectional:
        make_bidirectional(model)
    lora = LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets))
    return apply_method(model, task.head, cfg.method, lora)


def finetune(
    task: Task,
    model_spec: str,
    train_examples: list,
    dev_examples: list,
    dev_data: str,
    out: str | Path,
    cfg: TrainConfig,
    options: dict | None = None,
    *,
    train_data: str = "training data",
    resume: bool | str = False,
    overwrite: bool = False,
    report_to: list[str] | None = None,
    tracking_dir: str | Path | None = None,
    run_name: str = "finetune",
    hparams: dict | None = None,
    inputs: Inputs = (),
    final_out: str | Path | None = None,
    data_examples: int | None = None,
) -> dict | None:
    """Fine-tune the task's head (full, LoRA or head-only) on the training examples, save a Hugging Face
    folder, evaluate it on the dev examples. `options`: the task kind's fine-tuning keys (classification:
    input_prompt). `report_to`: experiment trackers (tunelab.tracking), logging under `tracking_dir` (default
    OUT/tracking) as `run_name`, with `hparams` (default: the training config); started where training
    starts (Tracking.start: a resume logs only the steps after its checkpoint, a training that starts over
    replaces what the run logged before). `inputs`: what else the caller read (a data folder, a config file),
    which `out` must not touch. `final_out`: the folder recorded as the model when `out` is a temporary one
    the caller moves there. `data_examples`: the dev split's size when `dev_examples` are its first few.
    `resume`: continue from OUT.partial's newest checkpoint; "matching": only one of these settings and
    data, else start over (training.train).
    Returns the dev metrics (None on processes that do not write)."""
    cfg.validate()
    trained_on = [("training file", p) for p in str(train_data).split(" + ")]  # (+: extra_train's files)
    read = [local_files(model_spec), *trained_on, ("data file", dev_data), *inputs]
    check_apart(out, read)  # before the (slow) tokenisation
    task = task.for_data(train_examples + dev_examples)
    train_examples = task.training_examples(train_examples, train_data)
    task.check_dev_labels(dev_examples, dev_data)
    tokenizer = load_tokenizer(model_spec, padding_side="right")
    ft = task.prepare_fine_tuning(tokenizer, cfg, train_examples, dev_examples, options or {})
    set_seed(cfg.seed)  # the new head (and LoRA matrices) are initialised from this seed
    with atomic_output(out, overwrite=overwrite, keep_partial=True, resume=resume, inputs=read) as work:
        tracker = _tracking(
            report_to, Path(tracking_dir or work / "tracking"), run_name, hparams or cfg.to_dict()
        )
        try:
            return _finetune_in(
                task,
                model_spec,
                dev_examples,
                dev_data,
                final_out or out,
                cfg,
                tokenizer,
                ft,
                work,
                resume,
                tracker,
                train_data,
                data_examples,
            )
        finally:
            if tracker is not None:
                tracker.finish()


def _tracking(names, logging_dir: Path, run_name: str, config: dict):
    from tunelab.tracking import tracking

    return tracking(list(names or []), logging_dir, run_name, config) if main_process() else None


def log_final(names, logging_dir: Path, run_name: str, config: dict, metrics: dict) -> None:
    """An evaluation's metrics (at step 0, `Tracking.log_dev`) and `config` to the experiment trackers
    `names`, as one run named `run_name`. Nothing without trackers."""
    tracker = _tracking(names, logging_dir, run_name, config)
    if tracker is None:
        return
    try:
        tracker.start()
        tracker.log_dev(metrics, 0)
    finally:
        tracker.finish()


def _absolute(resolved: str) -> str:
    """A local folder as an absolute path (a fine-tuned LoRA folder must find its base from anywhere); a Hub
    id as it is."""
    return str(Path(resolved).resolve()) if Path(resolved).exists() else resolved


def _finetune_in(
    task,
    model_spec,
    dev_examples,
    dev_data,
    out,
    cfg,
    tokenizer,
    ft,
    work,
    resume,
    tracker,
    train_data,
    data_examples,
):
    """The fine-tuning run inside its output folder `work`: train, save, evaluate."""
    from tunelab.models.registry import resolve

    trained = prepare_model(model_spec, task, cfg, tokenizer, ft.head_init)
    trained.to(device())

    def evaluate(model):
        predictions = task.predict(model, tokenizer, dev_examples, ft.meta, progress=False, bf16=cfg.bf16)
        return task.quick_scores(predictions, dev_examples)

    result = train(
        trained,
        ft.features,
        cfg,
        pad_id=tokenizer.pad_token_id,
        work_dir=work,
        evaluate=evaluate if cfg.eval_every else None,
        loss_fn=ft.loss_fn,
        resume=resume,
        on_log=tracker.on_log if tracker else None,
    )
    trained = whole_model(
        result, rebuild=lambda: prepare_model(model_spec, task, cfg, tokenizer, ft.head_init)
    )
    if trained is None:
        return None  # under `accelerate launch`, the main process saves and evaluates
    meta = {
        "task": task.name,
        "base_model": model_spec,
        "base_model_path": _absolute(resolve(model_spec)),
        **ft.meta,
        "bidirectional": cfg.bidirectional,
    }
    if task.source is not None:  # a task of one's own travels with the model
        meta["task_definition"] = task.to_dict()
    saved = save_finetuned(trained, tokenizer, work, cfg, meta)
    save_config(cfg, work / "training_config.json")
    t0 = time.perf_counter()
    predictions = task.predict(trained, tokenizer, dev_examples, ft.meta, bf16=cfg.bf16)
    extra = {
        "method": cfg.method,
        "bidirectional": cfg.bidirectional,
        "train_data": train_data,
        "train_seconds": result.train_seconds,
        "train_steps": result.steps,
        **ft.stats,
        "train_tokens": result.tokens,
        "eval_seconds": time.perf_counter() - t0,
        "saved": saved,
        "micro_batch_pieces": result.chunks,
        "evals_during_training": result.evals,
        "device": str(device()),
        "train_dtype": result.dtype,
        "dtype": precision.autocast_dtype(device(), cfg.bf16),
        **_split_size(data_examples),
    }
    metrics = task.write_results(
        work / "eval",
        model=str(out),
        mode="finetuned",
        data=dev_data,
        examples=dev_examples,
        predictions=predictions,
        extra=extra,
    )
    if tracker is not None:
        tracker.log_dev(metrics, result.steps)
    from tunelab.report.plots import loss_curve

    loss_curve(result.log, work / "loss.png", title=f"{task.title} {cfg.method} fine-tuning")
    shutil.rmtree(work / "checkpoints", ignore_errors=True)
    return metrics


def evaluate(
    model_dir: str | Path,
    examples: list,
    data: str,
    out: str | Path,
    *,
    task: Task | None = None,
    batch_size: int | str = 64,
    bf16: bool = True,
    overwrite: bool = False,
    report_to: list[str] | None = None,
    inputs: Inputs = (),
    data_examples: int | None = None,
) -> dict | None:
    """Evaluate a fine-tuned folder on `examples` (as `task`, by default the one it was trained for), under
    bfloat16 autocast where `precision.bf16_autocast` allows it and `bf16`.
    `inputs`: what else the caller read (a data folder, a task file), which `out` must not touch.
    `report_to`: experiment trackers, which get the metrics (`log_final`). `data_examples`: the split's size
    when `examples` are its first few."""
    read = [("fine-tuned model folder", model_dir), ("data file", data), *inputs]
    check_apart(out, read)  # before loading the model
    model, tokenizer, meta, trained_for = load_finetuned(model_dir, task)
    read.append(("base model folder", meta.get("base_model_path")))
    task = (task or trained_for).for_meta(meta).for_data(examples)
    task.check_eval(examples, data)
    dev = device()
    model.to(dev)
    with atomic_output(out, overwrite=overwrite, inputs=read) as work:
        t0 = time.perf_counter()
        parts = sharded_map(
            lambda exs: task.predict(model, tokenizer, exs, meta, batch_size, bf16=bf16).per_example(),
            examples,
        )  # a share per process
        if not main_process():
            return None
        metrics = task.write_results(
            work,
            model=str(model_dir),
            mode="finetuned",
            data=data,
            examples=examples,
            predictions=task.join_predictions(parts),
            extra={
                "seconds": time.perf_counter() - t0,
                "device": str(dev),
                "dtype": precision.autocast_dtype(dev, bf16),
                **_split_size(data_examples),
            },
        )
        hparams = {
            "model": str(model_dir),
            "task": task.name,
            "data": data,
            "batch_size": batch_size,
            "bf16": bf16,
        }
        log_final(report_to, work / "tracking", "evaluate", hparams, metrics)
        return metrics


# ------------------------------------------------------------------------------------------------------------
# Fine-tuned folders


def save_finetuned(model, tokenizer, out: Path, cfg: TrainConfig, meta: dict) -> str:
    """Write a Hugging Face folder (safetensors) with tunelab.json. LoRA: the adapter with its trained head,
    or merged weights with `merge_lora`. Returns what was saved: full, merged or lora-adapter."""
    from peft import PeftModel

    from tunelab.hub.card import without_peft_card

    out.mkdir(parents=True, exist_ok=True)
    saved = "full"
    if isinstance(model, PeftModel):
        if cfg.merge_lora:
            model = model.merge_and_unload()
            saved = "merged"
        else:
            saved = "lora-adapter"
    # save_original_format=False: keep the task class's own tensor names (`transformer.*` for Llama QA); by
    # default transformers 5 writes back the names the weights were loaded under (`model.*`), which the QA
    # class then cannot find.
    with without_peft_card(out):  # (a PeftModel writes its template card: tunelab's comes on export)
        model.save_pretrained(out, safe_serialization=True, save_original_format=False)
    tokenizer.save_pretrained(out)
    write_json(out / META_FILE, {**meta, "method": cfg.method, "saved": saved})
    return saved


def read_meta(path: str | Path) -> dict:
    f = Path(path) / META_FILE
    if not Path(path).is_dir():
        raise ModelError(f"{path}: {'not a folder' if Path(path).exists() else 'no such folder'}")
    if not f.is_file():
        raise ModelError(f"{path}: not a folder written by `tunelab finetune` (no {META_FILE})")
    return read_json(f, "it", error=ModelError)


def load_finetuned(
    path: str | Path, task: Task | None = None, dtype: torch.dtype = torch.float32
) -> tuple[torch.nn.Module, object, dict, Task]:
    """Load a fine-tuned folder back: full/merged weights, or base + LoRA adapter (the base loaded through
    tunelab so its body really carries the pretrained weights). Returns (model, tokenizer, meta, the task it
    was trained for); a `task` it cannot serve is refused."""
    from tunelab.models.loading import check_adapter_folder, load_adapter

    path = Path(path)
    meta = read_meta(path)
    trained_for = task_from_meta(meta, str(path / META_FILE))
    why = task.compatible(trained_for) if task is not None else None
    if why:
        raise ModelError(f"{path}: cannot be used as task {task.name!r}: {why}")
    adapter = (path / "adapter_config.json").is_file()
    if adapter:
        check_adapter_folder(path)  # before anything is loaded
    tokenizer = load_tokenizer(str(path))
    options = trained_for.head_options()
    if adapter:
        base_path = meta.get("base_model_path")
        if not isinstance(base_path, str) or not base_path:
            raise ModelError(
                f"{path}: a LoRA adapter folder whose {META_FILE} does not name its base model "
                f"(base_model_path: a folder or a Hub id, got {base_path!r})"
            )
        try:
            base = load_task_model(base_path, trained_for.head, dtype=dtype, **options)
        except ModelError as exc:
            raise ModelError(
                f"{path}: cannot load its base model ({META_FILE} base_model_path {base_path!r}): {exc}"
            ) from None
        align_pad_token(base, tokenizer)
        if meta.get("bidirectional"):
            make_bidirectional(base)
        model = load_adapter(base, path)
    else:
        model = load_task_model(str(path), trained_for.head, dtype=dtype, **options)
        align_pad_token(model, tokenizer)
        if meta.get("bidirectional"):
            make_bidirectional(model)
    return model.eval(), tokenizer, meta, trained_for
