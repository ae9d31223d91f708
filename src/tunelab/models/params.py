"""Exact parameter accounting from a config alone: models are built on the meta device (no weights, no
memory).

Shared (tied) tensors count once, as `nn.Module.parameters()` yields each tensor once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from tunelab.errors import ModelError, UsageError
from tunelab.models.heads import HEADS, auto_class, head
from tunelab.models.remote_code import remote_code_trusted, short
from tunelab.options import LORA_TARGETS

DEFAULT_LORA_TARGETS = tuple(LORA_TARGETS)


@dataclass
class LoraOptions:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def validate(self) -> None:
        if self.r < 1:
            raise UsageError(f"LoRA rank must be >= 1, got {self.r}")
        if not self.target_modules:
            raise UsageError("LoRA needs at least one target module")


@dataclass
class ParamReport:
    model: str
    head: str | None  # classification | span; None for the causal LM alone
    method: str
    base_total: int
    total: int
    trainable: int
    added: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    adapter: int = 0  # LoRA matrices (0 for full / head); merged away at export, so not part of `total`
    num_labels: int | None = None  # classification heads
    # The model being trained (peft's "all params"): LoRA adds its adapter and a trainable copy of the head
    training_total: int = 0

    @property
    def delta(self) -> int:
        return self.total - self.base_total

    def to_dict(self) -> dict:
        return {**asdict(self), "delta": self.delta}


def count(module: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _by_module(model: torch.nn.Module, prefix_map: dict[str, str]) -> dict[str, int]:
    """Parameters per top-level child, names mapped onto the causal LM's names (`transformer` -> `model`)."""
    out: dict[str, int] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        top = name.split(".")[0]
        top = prefix_map.get(top, top)
        out[top] = out.get(top, 0) + p.numel()
    return out


def build_meta(config, head_name: str | None, num_labels: int = 2) -> torch.nn.Module:
    """The causal LM (`head_name` None) or a task model of this config, on the meta device."""
    from transformers import AutoModelForCausalLM

    config = config.__class__.from_dict(config.to_dict())  # never mutate the caller's config
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id if isinstance(config.eos_token_id, int) else 0
    if head_name == "classification":
        config.num_labels = num_labels
    cls = AutoModelForCausalLM if head_name is None else auto_class(head_name)
    try:
        with torch.device("meta"):
            return cls.from_config(config, trust_remote_code=remote_code_trusted())
    except (ValueError, KeyError, TypeError) as exc:  # no class for this head; a value the class rejects
        what = "causal LM" if head_name is None else head(head_name).what
        shown = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ModelError(f"cannot build the {what} model of this config: {short(shown)}") from exc


def apply_method(
    model: torch.nn.Module, head_name: str | None, method: str, lora: LoraOptions | None = None
) -> torch.nn.Module:
    """Set requires_grad (and wrap with LoRA) the way fine-tuning with `method` does. Returns the model to
    train."""
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if head_name is None:
        raise UsageError(f"--method {method} needs --task (it trains a task head)")
    module = head(head_name).module
    if method == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(module + "."))
        return model
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = lora or LoraOptions()
        lora.validate()
        cfg = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            modules_to_save=[module],  # the new head is trained in full and saved with the adapter
            task_type=head(head_name).peft_task,
        )
        layers = (torch.nn.Linear, torch.nn.Embedding)  # what LoRA adapts in a Llama model
        full = [n for n, m in model.named_modules() if isinstance(m, layers)]
        names = {n.rsplit(".", 1)[-1] for n in full}
        # peft's own rule for a list of names: a module's full name is the target or ends in "." + target
        unknown = sorted(
            t for t in set(lora.target_modules) if not any(n == t or n.endswith("." + t) for n in full)
        )
        if unknown:
            raise UsageError(
                f"lora_targets: {unknown} name no linear or embedding layer of this model "
                f"(its layers: {', '.join(sorted(names))})"
            )
        try:
            return get_peft_model(model, cfg)
        except ValueError as exc:
            raise UsageError(f"LoRA: {exc}") from exc
    raise UsageError(f"unknown method {method!r}: expected full, lora or head")


def lora_adapter_count(peft_model) -> int:
    return sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)


def param_report(
    spec: str,
    config,
    head_name: str | None = None,
    method: str = "full",
    lora: LoraOptions | None = None,
    num_labels: int = 2,
) -> ParamReport:
    """Total and trainable parameters of the base causal LM and of its task model with `head_name`."""
    base = build_meta(config, None)
    base_total = count(base)
    base_parts = _by_module(base, {})
    model = build_meta(config, head_name, num_labels)
    prefix = {model.base_model_prefix: "model"}
    total = count(model)
    parts = _by_module(model, prefix)
    added = {k: v for k, v in parts.items() if k not in base_parts}
    removed = {k: v for k, v in base_parts.items() if k not in parts}
    # A tied lm_head shares the embedding tensor: dropping it removes no parameters.
    removed = {k: v for k, v in removed.items() if v}
    trained = apply_method(model, head_name, method, lora)
    trainable = count(trained, trainable_only=True)
    adapter = lora_adapter_count(trained) if method == "lora" else 0
    labels = num_labels if head_name == "classification" else None
    return ParamReport(
        spec, head_name, method, base_total, total, trainable, added, removed, adapter, labels, count(trained)
    )


def format_report(r: ParamReport, task: str | None = None) -> str:
    lines = [
        f"model      {r.model}",
        f"base total {r.base_total:>15,}  (causal LM, tied embeddings counted once)",
    ]
    if r.head:
        what = HEADS[r.head].what + (f", {r.num_labels} labels" if r.num_labels else "")
        lines.append(f"task       {task or r.head}  ({what})")
        for name, n in r.added.items():
            lines.append(f"  + {name:<8} {n:>15,}  {_explain(name)}")
        for name, n in r.removed.items():
            lines.append(f"  - {name:<8} {n:>15,}  (untied LM head, not used by the task model)")
        lines.append(f"total      {r.total:>15,}  (delta {r.delta:+,})")
    lines.append(f"method     {r.method}")
    training = r.training_total or r.total
    share = f"{100 * r.trainable / max(training, 1):.4f}% of {training:,}"
    if training == r.total:
        lines.append(f"trainable  {r.trainable:>15,}  ({share})")
    else:  # LoRA: the figures of peft's print_trainable_parameters()
        copy = training - r.total - r.adapter
        lines.append(f"trainable  {r.trainable:>15,}  ({share}, the model while training)")
        lines.append(
            f"  LoRA adapter {r.adapter:>11,}  (+ a trainable copy of the head, {copy:,}; "
            f"merged on export: total {r.total:,})"
        )
    return "\n".join(lines)


def _explain(name: str) -> str:
    if name == HEADS["classification"].module:
        return "hidden x labels (no bias)"
    if name == HEADS["span"].module:
        return "hidden x 2 + 2 (start/end weights and biases)"
    return ""
