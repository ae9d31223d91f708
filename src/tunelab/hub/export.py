"""`tunelab export`: a Hub-ready folder for a fine-tuned one (no network): safetensors weights (a LoRA adapter
merged into full weights), config, tokenizer, tunelab.json without local paths, training_config.json,
eval_results.json and the model card README.md. The weights are in the dtype the base model's config names
(bfloat16 for SmolLM2 and Llama 3.2 from the Hub), float32 where it names none."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import UsageError
from tunelab.hub.card import REPO_ID, base_hub_id, card_body, card_data, data_name
from tunelab.hub.push import WEIGHT_FILES
from tunelab.outputs import read_json, read_jsonl

EXPORT_DTYPES = ("float32", "bfloat16", "float16")  # (torch's names)
# What identifies an example, in a per-example file's rows and as read (QA: id, question; else line, texts)
IDENTITY = ("id", "question", "line", "text", "text_pair")


def _param_counts(config_dir: Path, task, meta: dict, train_cfg: dict) -> dict | None:
    """param_report of the task model on this architecture's config (the exported config: the base's, plus
    the head's label fields), with the fine-tuning method's LoRA options."""
    from tunelab.models.params import DEFAULT_LORA_TARGETS, LoraOptions, param_report
    from tunelab.models.registry import load_config

    lora = LoraOptions(
        train_cfg.get("lora_r", 16),
        train_cfg.get("lora_alpha", 32),
        0.0,
        tuple(train_cfg.get("lora_targets") or DEFAULT_LORA_TARGETS),
    )
    try:
        report = param_report(
            str(meta.get("base_model")),
            load_config(str(config_dir)),
            task.head,
            meta.get("method", "full"),
            lora,
            len(task.head_options().get("labels", ())) or 2,
        )
    except Exception:  # noqa: BLE001 - counts are a nicety on the card, never a reason to fail the export
        return None
    return report.to_dict()


def base_dtype(base_path: str | None) -> str:
    """The dtype the base model's config.json names (`dtype`, or `torch_dtype` in older configs), read from
    its folder or, for a Hub id, the Hub cache (never the network); float32 when none is named or it cannot
    be read."""
    from huggingface_hub import try_to_load_from_cache

    spec = str(base_path or "")
    path = Path(spec).expanduser() / "config.json"
    if spec and not path.is_file() and REPO_ID.fullmatch(spec):
        try:
            cached = try_to_load_from_cache(spec, "config.json")
        except ValueError:  # (HFValidationError: no Hub id after all)
            cached = None
        path = Path(cached) if isinstance(cached, str) else path
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "float32"
    named = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    return named if named in EXPORT_DTYPES else "float32"


def data_examples(task, metrics: dict, eval_dir: Path) -> int | None:
    """How many examples the evaluated file holds, counted now: when it is still where it was read and its
    first `n` examples are the ones scored (eval_dir's per-example file); None when that cannot be checked
    (a file gone or changed, a Hub dataset)."""
    data, n = metrics.get("data"), metrics.get("n")
    rows = eval_dir / ("per_example.jsonl" if task.kind == "extractive_qa" else "predictions.jsonl")
    if not isinstance(n, int) or not isinstance(data, str) or not Path(data).is_file() or not rows.is_file():
        return None
    try:
        examples = task.read(Path(data))
        scored = [tuple(r.get(k) for k in IDENTITY) for r in read_jsonl(rows)]
    except Exception:  # noqa: BLE001 - a file that no longer reads: the card then says it could not check
        return None
    first = [tuple(getattr(ex, k, None) for k in IDENTITY) for ex in examples[:n]]
    return len(examples) if len(scored) == n and scored == first else None


def _check_inputs(model_dir: Path, base_model: str | None) -> tuple[dict, dict]:
    if not any((model_dir / f).is_file() for f in WEIGHT_FILES):
        raise UsageError(f"{model_dir}: no weights (expected model.safetensors or adapter_model.safetensors)")
    metrics_file = model_dir / "eval" / "metrics.json"
    if not metrics_file.is_file():
        raise UsageError(f"{model_dir}: no eval/metrics.json; export a folder written by `tunelab finetune`")
    if base_model is not None and not (REPO_ID.fullmatch(base_model) and ".." not in base_model):
        raise UsageError(f"--base-model {base_model!r}: expected a Hub id, owner/name")
    cfg_file = model_dir / "training_config.json"
    train_cfg = read_json(cfg_file, "the training options") if cfg_file.is_file() else {}
    metrics = read_json(metrics_file, "the evaluation metrics")
    return metrics, train_cfg


def _shared_meta(meta: dict, task, hub_id: str | None, saved: str) -> dict:
    """tunelab.json as the export shares it: no local paths (base model folder, the task's data files)."""
    out = {k: v for k, v in meta.items() if k not in ("base_model_path", "task_definition")}
    if "task_definition" in meta:
        out["task_definition"] = task.to_dict(with_data=False)
    spec = str(meta.get("base_model") or "")
    if hub_id or Path(spec).expanduser().exists():
        out["base_model"] = hub_id or Path(spec).name
    out.update(saved=saved, base_model_hub_id=hub_id)
    return out


def export(
    model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False, base_model: str | None = None
) -> Path:
    """Write a Hub-ready folder for a folder written by `tunelab finetune`. `base_model` overrides the card's
    base model Hub id. Returns the folder."""
    import torch
    from huggingface_hub import ModelCard
    from peft import PeftModel

    from tunelab.outputs import atomic_output, check_apart, write_json
    from tunelab.runs import META_FILE, load_finetuned, read_meta
    from tunelab.tasks import task_from_meta

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = read_meta(model_dir)
    task = task_from_meta(meta, str(model_dir / META_FILE))
    read = [("fine-tuned model folder", model_dir), ("base model folder", meta.get("base_model_path"))]
    check_apart(out_dir, read)
    metrics, train_cfg = _check_inputs(model_dir, base_model)
    with atomic_output(out_dir, overwrite=overwrite, inputs=read) as work:
        model, tokenizer, _, _ = load_finetuned(model_dir)
        saved = meta.get("saved", "full")
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()
            saved = "merged"
        dtype = base_dtype(meta.get("base_model_path"))
        model = model.to(getattr(torch, dtype))  # (after the merge, done in float32)
        # Tensor names as the exported architecture names them: a span-QA model loaded from a causal-LM
        # checkpoint through a key mapping would otherwise be saved under the checkpoint's names (`model.`
        # instead of `transformer.`), and `AutoModelForQuestionAnswering.from_pretrained` would leave its body
        # random.
        model.save_pretrained(work, safe_serialization=True, save_original_format=False)
        tokenizer.save_pretrained(work)
        hub_id = base_model or base_hub_id(meta.get("base_model"))
        write_json(work / META_FILE, _shared_meta(meta, task, hub_id, saved))
        if train_cfg:
            write_json(work / "training_config.json", train_cfg)
        if "data_examples" not in metrics:  # recorded since 2026-12-05; before, counted again if it can be
            total = data_examples(task, metrics, model_dir / "eval")
            metrics = {**metrics, "data_examples": total} if total is not None else metrics
        shared_metrics = {k: v for k, v in metrics.items() if k not in ("model", "evals_during_training")}
        shared_metrics["data"] = data_name(metrics.get("data"))
        if metrics.get("train_data"):  # (several files: extra_train's, joined by " + ")
            shared_metrics["train_data"] = " + ".join(map(data_name, str(metrics["train_data"]).split(" + ")))
        write_json(work / "eval_results.json", shared_metrics)

        name = out_dir.name
        counts = _param_counts(work, task, meta, train_cfg)
        try:
            data = card_data(task, meta, metrics, name, base_model=hub_id)
            body = card_body(task, meta, metrics, train_cfg, counts, name, hub_id, dtype)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a value of the wrong kind
            raise UsageError(
                f"{model_dir}: eval/metrics.json or training_config.json does not hold what `tunelab "
                f"finetune` writes ({type(exc).__name__}: {exc}); the model card cannot be written (if they "
                "are as tunelab wrote them, this is a tunelab bug: please report it)"
            ) from None
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
        card.save(work / "README.md")
        # The card must parse back exactly as written (the Hub rejects a push whose metadata does not).
        if ModelCard.load(work / "README.md").data.to_dict() != data.to_dict():
            raise RuntimeError("model card metadata did not round-trip")
    return out_dir
