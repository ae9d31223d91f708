"""Models: spec resolution and aliases (registry), loading (loading), the task heads (heads), exact parameter
accounting (params), the remote-code switch (remote_code)."""

from tunelab.models.loading import align_pad_token, load_causal_lm, load_task_model, load_tokenizer
from tunelab.models.params import LoraOptions, param_report
from tunelab.models.registry import ALIASES, DEFAULT_MODEL, load_config, resolve

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "LoraOptions",
    "align_pad_token",
    "load_causal_lm",
    "load_config",
    "load_task_model",
    "load_tokenizer",
    "param_report",
    "resolve",
]
