"""The classification kind: any number of labels, single texts or sentence pairs (task.py); zero-shot
label-word scoring and calibration (zero_shot.py); the fine-tuned head and its inputs (head.py)."""

from tunelab.tasks.classification.head import classify, encode, format_input, head_init_from_verbalizers
from tunelab.tasks.classification.task import ClassificationTask, ClassScores
from tunelab.tasks.classification.zero_shot import (
    Calibration,
    ClassificationPrompt,
    calibrate,
    label_logprobs,
    verbalizer_ids,
    zero_shot,
)

__all__ = [
    "Calibration",
    "ClassScores",
    "ClassificationPrompt",
    "ClassificationTask",
    "calibrate",
    "classify",
    "encode",
    "format_input",
    "head_init_from_verbalizers",
    "label_logprobs",
    "verbalizer_ids",
    "zero_shot",
]
