"""`tunelab study`: the configuration and its layers (config.py), the stages and the run folder (run.py)."""

from tunelab.study.config import (
    PRESETS,
    StudyConfig,
    preset_path,
    resolve_config,
    train_config,
    validate_layer,
)
from tunelab.study.run import Study, count_finetuned, environment, run_study

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
