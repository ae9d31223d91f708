"""Load tokenizers, causal LMs and task models (classification / span QA) that really carry pretrained
weights."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tunelab.errors import ModelError
from tunelab.models.heads import auto_class, head
from tunelab.models.registry import check_config_json, resolve
from tunelab.models.remote_code import load_error, remote_code_trusted, short
from tunelab.precision import float32_head

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_tokenizer(spec: str, *, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token. Llama-family tokenizers ship none: use EOS (the model's config gets the
    same id in `align_pad_token`). Right padding for training and scoring, left for batched generation."""
    from transformers import AutoTokenizer

    from tunelab.models.registry import load_config

    path = resolve(spec)
    if (Path(path) / "config.json").is_file():
        load_config(spec)  # a broken config is reported as such, not as a tokenizer failure
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code_trusted())
    except Exception as exc:
        raise load_error(spec, "its tokenizer", exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if tok.pad_token is None:
        raise ModelError(
            f"{spec}: its tokenizer has neither a pad token nor an end-of-sequence token (see its "
            "tokenizer_config.json): tunelab pads batches and ends answers with them"
        )
    tok.padding_side = padding_side
    return tok


def align_pad_token(model, tokenizer) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _from_pretrained(cls, spec: str, **kwargs):
    from tunelab.models.registry import load_config

    path = resolve(spec)
    load_config(spec)  # another model family or an absurd size is refused before any weights are read
    try:
        return cls.from_pretrained(
            path,
            output_loading_info=True,
            trust_remote_code=remote_code_trusted(),
            use_safetensors=True,
            **kwargs,
        )
    except Exception as exc:
        raise load_error(spec, "model", exc) from exc


def load_causal_lm(spec: str, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM in `dtype` whose LM head computes in float32 (`precision.float32_head`; in another dtype,
    with float32 weights of its own: an untied copy where it shares the input embeddings')."""
    from transformers import AutoModelForCausalLM

    folder = Path(resolve(spec))
    if (
        (folder / "tunelab.json").is_file()
        or (folder / "adapter_config.json").is_file()
        or saved_head(folder)
    ):
        # its body without the trained head would load as a causal LM with a made-up LM head: no error, but
        # the zero-shot scores of a model that no longer has the next-token head it was prompted with
        raise ModelError(
            f"{spec}: a fine-tuned task model, not a causal LM: zero-shot prompting needs the base model "
            "(its tunelab.json names it); evaluate this folder with `tunelab evaluate`"
        )
    model, info = _from_pretrained(AutoModelForCausalLM, spec, dtype=dtype)
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]
    if missing:
        raise ModelError(f"{spec}: checkpoint lacks weights for {len(missing)} tensors, e.g. {missing[:3]}")
    lm_head = model.get_output_embeddings()
    if lm_head.weight.dtype != torch.float32:
        lm_head.weight = torch.nn.Parameter(lm_head.weight.detach().float(), requires_grad=False)
    float32_head(lm_head)
    return model


def saved_head(path: str) -> str | None:
    """The head of a folder tunelab fine-tuned (read from its config), or None for a base model."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    names = json.loads(cfg.read_text(encoding="utf-8")).get("architectures") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelError(f"{cfg}: 'architectures' must be a list of class names, got {names!r}")
    arch = " ".join(names)
    if "ForSequenceClassification" in arch:
        return "classification"
    if "ForQuestionAnswering" in arch:
        return "span"
    return None


def load_task_model(
    spec: str,
    head_name: str,
    *,
    labels: Sequence[str] = ("0", "1"),
    dtype: torch.dtype = torch.float32,
    head_init: Callable | None = None,
) -> PreTrainedModel:
    """A classification or span-QA model (`head_name`: classification | span) whose body holds the
    checkpoint's weights. A new classification head gets one output per label (`labels` name them in
    id2label); `head_init(model)` may then set the new head's weights. The head computes in float32
    (`precision.float32_head`), under autocast too.

    transformers' LlamaForQuestionAnswering names its body `transformer` while causal-LM checkpoints name it
    `model`; a plain `from_pretrained` then silently leaves the whole body random. We map the keys, and
    refuse to return a model with any missing tensor other than the freshly added head.
    """
    module = head(head_name).module
    saved = saved_head(resolve(spec))
    if saved is not None and saved != head_name:
        raise ModelError(
            f"{spec}: a model fine-tuned with a {saved} head, not a {head_name} one: start from its base "
            "model instead"
        )
    fresh = saved is None
    kwargs: dict = {"dtype": dtype}
    if fresh and head_name == "classification":
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
        )
    elif fresh:
        kwargs["key_mapping"] = {r"^model\.": "transformer."}
    # transformers logs a load report of the (expected) missing head; our own check below is the one that
    # counts. Raising that logger's level also switches on a tensor-parallel plan check that warns about
    # unsharded layers (irrelevant here: nothing is sharded), so that logger is quietened too.
    for name in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model, info = _from_pretrained(auto_class(head_name), spec, **kwargs)
    missing = [k for k in info["missing_keys"] if not k.startswith(module + ".")]
    head_missing = [k for k in info["missing_keys"] if k.startswith(module + ".")]
    if head_missing and not fresh:
        raise ModelError(
            f"{spec}: its config.json says it holds a fine-tuned {head_name} head, but its weights lack "
            f"{head_missing}: the trained head would be random"
        )
    if missing:
        raise ModelError(
            f"{spec}: {len(missing)} body tensors were not found in the checkpoint (e.g. {missing[:3]}); "
            "refusing to fine-tune a randomly initialised body"
        )
    if fresh and head_init is not None:
        head_init(model)
    float32_head(getattr(model, module))
    return model


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def check_adapter_folder(path: str | Path) -> None:
    """Refuse a LoRA adapter folder whose weights are not `adapter_model.safetensors`: peft falls back to
    `torch.load` of `adapter_model.bin` (a pickle, which can run code) and has no switch to forbid it."""
    path = Path(path)
    if (path / ADAPTER_WEIGHTS).is_file():
        return
    others = sorted(p.name for p in path.glob("adapter_model.*"))
    found = f"it holds {', '.join(others)}" if others else "it holds no adapter weights"
    raise ModelError(
        f"{path}: a LoRA adapter folder without {ADAPTER_WEIGHTS} ({found}); tunelab loads weights only "
        "from safetensors and never unpickles a .bin file: convert the adapter to safetensors "
        "(peft: save_pretrained(..., safe_serialization=True))"
    )


def load_adapter(base: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """`base` with the LoRA adapter of `path`, from its safetensors file only (`check_adapter_folder`)."""
    from peft import PeftModel

    check_adapter_folder(path)
    config = Path(path) / "adapter_config.json"
    check_config_json(config)  # a JSON object, or one clear message
    try:
        return PeftModel.from_pretrained(base, str(path))
    except Exception as exc:  # peft's errors are of every kind: a bad header, a KeyError, a size mismatch
        raise ModelError(
            f"{path}: cannot load the LoRA adapter ({config.name}, {ADAPTER_WEIGHTS}) onto its base model: "
            f"{type(exc).__name__}: {short(str(exc))}"
        ) from None


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer body of a causal LM or a task model, whatever the class calls it."""
    return getattr(model, model.base_model_prefix)
