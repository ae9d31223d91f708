"""Models: spec resolution and aliases (registry), loading (loading), exact parameter accounting (params)."""

from tunelab.models.loading import align_pad_token, load_causal_lm, load_task_model, load_tokenizer
from tunelab.models.params import LoraOptions, param_report
from tunelab.models.registry import ALIASES, DEFAULT_MODEL, load_config, resolve

__all__ = [
    "ALIASES", "DEFAULT_MODEL", "LoraOptions", "align_pad_token", "load_causal_lm", "load_config",
    "load_task_model", "load_tokenizer", "param_report", "resolve",
]
