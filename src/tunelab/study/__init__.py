"""`tunelab study`: the configuration and its layers (config.py), the stages and the run folder (run.py).

run.py's names are imported when first used (PEP 562): the command line reads the presets from config.py
while building its parser, and importing run.py would import torch (3 s; `tunelab --help` needs none)."""

from tunelab.study.config import (
    PRESETS,
    StudyConfig,
    preset_path,
    resolve_config,
    train_config,
    validate_layer,
)

_FROM_RUN = ("Study", "count_finetuned", "environment", "run_study")

__all__ = [
    "PRESETS",
    "Study",
    "StudyConfig",
    "count_finetuned",
    "environment",
    "preset_path",
    "resolve_config",
    "run_study",
    "train_config",
    "validate_layer",
]


def __getattr__(name: str):
    if name in _FROM_RUN:
        from tunelab.study import run

        return getattr(run, name)
    raise AttributeError(f"module 'tunelab.study' has no attribute {name!r}")
