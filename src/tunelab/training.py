"""One fine-tuning loop for both tasks, on a CPU, one GPU or many (`accelerate launch`).

Reads top to bottom like a recipe: batches → model → optimizer/schedule → loop (log, evaluate, checkpoint) → save.
Written by hand rather than with `transformers.Trainer` for what Trainer does not give: length-grouped batches
with dynamic padding and no per-step host synchronisation, checkpoints saved atomically, and exact resumption.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from tunelab.errors import UsageError


@dataclass
class TrainConfig:
    method: str = "full"  # full | lora | head
    learning_rate: float = 2e-5
    epochs: float = 1.0
    batch_size: int = 32
    grad_accum: int = 1
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    lr_schedule: str = "linear"  # linear | cosine | constant
    max_length: int = 128
    seed: int = 42
    bf16: bool = True  # used on GPUs that support it; CPUs train in float32
    eval_every: int = 0  # steps; 0 = only at the end
    log_every: int = 20
    save_every: int = 0  # steps; 0 = no intermediate checkpoints
    max_train_samples: int | None = None
    max_steps: int | None = None
    group_by_length: bool = True
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    merge_lora: bool = False

    @classmethod
    def from_dict(cls, d: dict, where: str = "training config") -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise UsageError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "training config") -> None:
        def need(ok: bool, msg: str):
            if not ok:
                raise UsageError(f"{where}: {msg}")

        need(self.method in ("full", "lora", "head"), f"method must be full, lora or head, got {self.method!r}")
        need(isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < 1,
             f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        need(isinstance(self.epochs, (int, float)) and self.epochs > 0, f"epochs must be > 0, got {self.epochs!r}")
        for name in ("batch_size", "grad_accum", "max_length", "lora_r"):
            v = getattr(self, name)
            need(isinstance(v, int) and v >= 1, f"{name} must be an integer >= 1, got {v!r}")
        need(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        need(self.lr_schedule in ("linear", "cosine", "constant"), f"unknown lr_schedule {self.lr_schedule!r}")
        need(self.max_train_samples is None or self.max_train_samples >= 1, "max_train_samples must be >= 1")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def length_grouped_order(lengths: list[int], batch_size: int, seed: int) -> list[list[int]]:
    """Batches of similar length in random order: shuffle, sort inside mega-batches of 50 batches, cut.
    Dynamic padding then pads each batch to its own longest example (SST-2's ~13-token sentences padded to 128
    would be ~90% padding)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(lengths))
    mega = batch_size * 50
    batches = []
    for s in range(0, len(perm), mega):
        chunk = sorted(perm[s : s + mega].tolist(), key=lambda i: -lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def random_order(n: int, batch_size: int, seed: int) -> list[list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return [perm[i : i + batch_size] for i in range(0, n, batch_size)]


def pad_batch(features: list[dict], pad_id: int, keys_to_pad=("input_ids", "attention_mask")) -> dict:
    """Right-pad token lists to the batch's longest; other keys become tensors as they are."""
    width = max(len(f["input_ids"]) for f in features)
    out = {}
    for key in features[0]:
        vals = [f[key] for f in features]
        if key in keys_to_pad:
            fill = pad_id if key == "input_ids" else 0
            out[key] = torch.tensor([v + [fill] * (width - len(v)) for v in vals], dtype=torch.long)
        else:
            out[key] = torch.tensor(vals)
    return out


def _schedule(optimizer, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[cfg.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def _atomic_save_state(accelerator, ckpt_root: Path, step: int, extra: dict) -> None:
    """Save into a temporary folder, write COMPLETE last, then rename: a crash mid-save never leaves a
    checkpoint that looks complete."""
    if accelerator.is_main_process:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    tmp = ckpt_root / f".tmp-step-{step}"
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, **extra}))
        (tmp / "COMPLETE").write_text("ok\n")
        final = ckpt_root / f"step-{step}"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in ckpt_root.glob("step-*"):  # keep the newest only
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def last_checkpoint(ckpt_root: Path) -> Path | None:
    done = [p for p in ckpt_root.glob("step-*") if (p / "COMPLETE").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


@dataclass
class TrainResult:
    steps: int
    train_seconds: float
    tokens: int
    log: list[dict]
    evals: list[dict]


def train(
    model,
    train_features: list[dict],
    cfg: TrainConfig,
    *,
    pad_id: int,
    work_dir: Path,
    evaluate: Callable[[object], dict] | None = None,
    resume: bool = False,
    accelerator=None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tune `model` (already wrapped for LoRA / frozen for head-only) on tokenised features.

    Each feature is a dict of lists/ints: input_ids, attention_mask, and the task's label keys.
    """
    from accelerate import Accelerator

    set_seed(cfg.seed)
    if accelerator is None:
        use_bf16 = cfg.bf16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        accelerator = Accelerator(mixed_precision="bf16" if use_bf16 else "no",
                                  gradient_accumulation_steps=cfg.grad_accum)
    feats = train_features[: cfg.max_train_samples] if cfg.max_train_samples else train_features
    if not feats:
        raise UsageError("no training examples")
    lengths = [len(f["input_ids"]) for f in feats]
    # Each process takes every world_size-th batch of the same global order (same seed everywhere), so the
    # global batch is batch_size x processes and no example is seen twice in an epoch.
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = math.ceil(len(feats) / cfg.batch_size) // world
    micro_total = max(1, int(per_epoch * cfg.epochs))
    total_steps = max(1, micro_total // cfg.grad_accum)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
        micro_total = total_steps * cfg.grad_accum

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    fused = accelerator.device.type == "cuda"
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate, betas=(0.9, 0.999), eps=1e-8, fused=fused,
    )
    scheduler = _schedule(optimizer, cfg, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    ckpt_root = work_dir / "checkpoints"
    start_micro = 0
    if resume and (ckpt := last_checkpoint(ckpt_root)) is not None:
        accelerator.load_state(str(ckpt))
        start_micro = json.loads((ckpt / "trainer_state.json").read_text())["micro_step"]
        accelerator.print(f"resumed from {ckpt} (micro-step {start_micro})")

    log: list[dict] = []
    evals: list[dict] = []
    log_path = work_dir / "train_log.jsonl"
    if accelerator.is_main_process and start_micro == 0 and log_path.exists():
        log_path.unlink()
    model.train()
    device = accelerator.device
    running = torch.zeros((), device=device)  # summed on the device: no host sync per step
    running_n = 0
    tokens = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_micro // cfg.grad_accum, desc=f"fine-tune ({cfg.method})",
               unit="step", disable=not (progress and accelerator.is_local_main_process))
    micro = 0
    epoch = 0
    while micro < micro_total:
        order = (length_grouped_order(lengths, cfg.batch_size, cfg.seed + epoch) if cfg.group_by_length
                 else random_order(len(feats), cfg.batch_size, cfg.seed + epoch))
        order = order[: per_epoch * world][rank::world]
        for batch_idx in order:
            if micro >= micro_total:
                break
            if micro < start_micro:  # resuming: replay the data order without computing
                micro += 1
                continue
            batch = pad_batch([feats[i] for i in batch_idx], pad_id)
            tokens += int(batch["attention_mask"].sum())
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss = model(**batch).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            running += loss.detach()
            running_n += 1
            micro += 1
            if micro % cfg.grad_accum:
                continue
            step = micro // cfg.grad_accum
            bar.update(1)
            if step % cfg.log_every == 0 or step == total_steps:
                mean_loss = accelerator.reduce(running, "mean").item() / running_n
                elapsed = time.perf_counter() - t0
                entry = {"step": step, "epoch": round(micro / max(per_epoch, 1), 4), "loss": mean_loss,
                         "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens * world / max(elapsed, 1e-9)}
                log.append(entry)
                if accelerator.is_main_process:
                    with log_path.open("a") as f:
                        f.write(json.dumps(entry) + "\n")
                bar.set_postfix(loss=f"{mean_loss:.4f}", tok_s=f"{entry['tokens_per_s']:.0f}")
                running.zero_()
                running_n = 0
            if evaluate and cfg.eval_every and step % cfg.eval_every == 0 and step != total_steps:
                model.eval()
                result = evaluate(accelerator.unwrap_model(model))
                model.train()
                evals.append({"step": step, **result})
            if cfg.save_every and step % cfg.save_every == 0 and step != total_steps:
                _atomic_save_state(accelerator, ckpt_root, step, {"micro_step": micro, "epoch": epoch})
        epoch += 1
    bar.close()
    if accelerator.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model = accelerator.unwrap_model(model)
    model.eval()
    return TrainResult(total_steps, seconds, tokens * world, log, evals)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(asdict(cfg), indent=2))
