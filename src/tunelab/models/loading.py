"""Load tokenizers, causal LMs and task models (classification / span QA) that really carry pretrained weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from tunelab.errors import ModelError
from tunelab.models.registry import resolve

TASK_HEADS = {"sst2": "score", "squad": "qa_outputs"}

# Whether Python code shipped with a model (a config's `auto_map`) may run: transformers' trust_remote_code.
# One switch for the whole process, set from `--trust-remote-code` by the command line, so that every loader
# (config, tokenizer, model, in every recipe) obeys it alike. Off unless the user asks.
_REMOTE_CODE = {"trusted": False}
REMOTE_CODE_HINT = ("it ships its own Python code, which tunelab does not run unless you pass --trust-remote-code "
                    "(do so only for a source you trust)")


def trust_remote_code(enabled: bool) -> None:
    _REMOTE_CODE["trusted"] = bool(enabled)


def remote_code_trusted() -> bool:
    return _REMOTE_CODE["trusted"]


def load_error(spec: str, what: str, exc: Exception) -> ModelError:
    """A loading failure as a ModelError; a refusal to run shipped code says how to allow it."""
    text = str(exc)
    if "trust_remote_code" in text and not remote_code_trusted():
        return ModelError(f"{spec}: cannot load {what}: {REMOTE_CODE_HINT}")
    return ModelError(f"{spec}: cannot load {what}: {short(text)}")


def short(message: str, limit: int = 600) -> str:
    """A library's message cut to a readable length (some list every model type transformers knows)."""
    message = message.strip()
    return message if len(message) <= limit else message[:limit].rstrip() + " [...]"


def load_tokenizer(spec: str, *, padding_side: str = "right"):
    """A tokenizer with a pad token. Llama-family tokenizers ship none: use EOS (the model's config gets the
    same id in `align_pad_token`). Right padding for training and scoring, left for batched generation."""
    from transformers import AutoTokenizer

    path = resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code_trusted())
    except Exception as exc:
        raise load_error(spec, "its tokenizer", exc) from exc
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def align_pad_token(model, tokenizer) -> None:
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def _from_pretrained(cls, spec: str, **kwargs):
    path = resolve(spec)
    try:
        return cls.from_pretrained(path, output_loading_info=True, trust_remote_code=remote_code_trusted(),
                                   use_safetensors=True, **kwargs)
    except Exception as exc:
        raise load_error(spec, "model", exc) from exc


def load_causal_lm(spec: str, *, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model, info = _from_pretrained(AutoModelForCausalLM, spec, dtype=dtype)
    missing = [k for k in info["missing_keys"] if k != "lm_head.weight"]
    if missing:
        raise ModelError(f"{spec}: checkpoint lacks weights for {len(missing)} tensors, e.g. {missing[:3]}")
    return model


def saved_task(path: str) -> str | None:
    """The task of a folder tunelab fine-tuned (read from its config), or None for a base model."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return None
    arch = " ".join(json.loads(cfg.read_text()).get("architectures") or [])
    if "ForSequenceClassification" in arch:
        return "sst2"
    if "ForQuestionAnswering" in arch:
        return "squad"
    return None


def load_task_model(
    spec: str,
    task: str,
    *,
    num_labels: int = 2,
    dtype=torch.float32,
    head_init=None,
):
    """A classification (`sst2`) or span-QA (`squad`) model whose body holds the checkpoint's weights.

    transformers' LlamaForQuestionAnswering names its body `transformer` while causal-LM checkpoints name it
    `model`; a plain `from_pretrained` then silently leaves the whole body random. We map the keys, and
    refuse to return a model with any missing tensor other than the freshly added head.
    """
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    if task not in TASK_HEADS:
        raise ModelError(f"unknown task {task!r}: expected one of {', '.join(TASK_HEADS)}")
    path = resolve(spec)
    kwargs = {"dtype": dtype}
    if task == "sst2":
        cls = AutoModelForSequenceClassification
        if saved_task(path) is None:
            kwargs.update(num_labels=num_labels, id2label={0: "negative", 1: "positive"},
                          label2id={"negative": 0, "positive": 1})
    else:
        cls = AutoModelForQuestionAnswering
        if saved_task(path) is None:
            kwargs["key_mapping"] = {r"^model\.": "transformer."}
    # transformers logs a load report of the (expected) missing head; our own check below is the one that counts.
    # Raising that logger's level also switches on a tensor-parallel plan check that warns about unsharded
    # layers (irrelevant here: nothing is sharded), so that logger is quietened too.
    for name in ("transformers.modeling_utils", "transformers.distributed.tensor_parallel"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model, info = _from_pretrained(cls, spec, **kwargs)
    head = TASK_HEADS[task]
    missing = [k for k in info["missing_keys"] if not k.startswith(head + ".")]
    if missing:
        raise ModelError(
            f"{spec}: {len(missing)} body tensors were not found in the checkpoint (e.g. {missing[:3]}); "
            "refusing to fine-tune a randomly initialised body"
        )
    if saved_task(path) is None and head_init is not None:
        head_init(model)
    return model


def body(model):
    """The transformer body of a causal LM or a task model, whatever the class calls it."""
    return getattr(model, model.base_model_prefix)
