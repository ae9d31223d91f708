"""Pieces both task recipes share: device choice, saving and loading fine-tuned folders, run metadata."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.errors import ModelError
from tunelab.models import align_pad_token, load_task_model, load_tokenizer
from tunelab.models.params import LoraOptions, apply_method
from tunelab.outputs import distributed_state
from tunelab.training import TrainConfig

META_FILE = "tunelab.json"  # what tunelab needs to use a fine-tuned folder again: task, input format, base model


def device() -> torch.device:
    """This process's device: under `accelerate launch`/torchrun each process gets its own GPU."""
    state = distributed_state()
    if state is not None:
        return state.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def main_process() -> bool:
    """Whether this process writes results: the only one, or the first of an `accelerate launch`."""
    state = distributed_state()
    return state is None or state.is_main_process


def eval_dtype(dev: torch.device):
    return torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32


def prepare_model(spec: str, task: str, cfg: TrainConfig, tokenizer, head_init=None):
    """The task model with the pretrained body, set up for `cfg.method`; returns (model to train, base model)."""
    model = load_task_model(spec, task, head_init=head_init)
    align_pad_token(model, tokenizer)
    lora = LoraOptions(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, tuple(cfg.lora_targets))
    trained = apply_method(model, task, cfg.method, lora)
    return trained, model


def save_finetuned(model, tokenizer, out: Path, cfg: TrainConfig, meta: dict) -> dict:
    """Write a Hugging Face folder (safetensors). LoRA: the adapter with its trained head, or merged weights
    with `merge_lora`. Returns what was saved, with parameter counts."""
    from peft import PeftModel

    out.mkdir(parents=True, exist_ok=True)
    saved = {"format": "full"}
    if isinstance(model, PeftModel):
        if cfg.merge_lora:
            model = model.merge_and_unload()
            saved["format"] = "merged"
        else:
            saved["format"] = "lora-adapter"
    # save_original_format=False: keep the task class's own tensor names (`transformer.*` for Llama QA); by
    # default transformers 5 writes back the names the weights were loaded under (`model.*`), which the QA
    # class then cannot find.
    model.save_pretrained(out, safe_serialization=True, save_original_format=False)
    tokenizer.save_pretrained(out)
    (out / META_FILE).write_text(json.dumps({**meta, "method": cfg.method, "saved": saved["format"]}, indent=2))
    return saved


def read_meta(path: str | Path) -> dict:
    f = Path(path) / META_FILE
    if not f.is_file():
        raise ModelError(f"{path}: not a folder written by `tunelab finetune` (no {META_FILE})")
    try:
        meta = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{f}: cannot read it: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{f}: expected a JSON object, got {type(meta).__name__}")
    return meta


def load_finetuned(path: str | Path, task: str, dtype=torch.float32):
    """Load a fine-tuned folder back: full/merged weights, or base + LoRA adapter (the base loaded through
    tunelab so its body really carries the pretrained weights)."""
    from peft import PeftModel

    path = Path(path)
    meta = read_meta(path)
    if meta.get("task") != task:
        raise ModelError(f"{path}: fine-tuned for {meta.get('task')!r}, not {task!r}")
    tokenizer = load_tokenizer(str(path))
    if (path / "adapter_config.json").is_file():
        if not meta.get("base_model_path"):
            raise ModelError(f"{path}: a LoRA adapter folder whose {META_FILE} does not name its base model "
                             "(base_model_path)")
        base = load_task_model(meta["base_model_path"], task, dtype=dtype)
        align_pad_token(base, tokenizer)
        model = PeftModel.from_pretrained(base, str(path))
    else:
        model = load_task_model(str(path), task, dtype=dtype)
        align_pad_token(model, tokenizer)
    return model.eval(), tokenizer, meta
