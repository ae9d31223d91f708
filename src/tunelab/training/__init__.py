"""Fine-tuning: the loop (loop.py), batches (batches.py) and checkpoints for --resume (checkpoint.py). The
options are tunelab.options.TrainConfig."""

from tunelab.options import TrainConfig
from tunelab.training.batches import length_grouped_order, pad_batch, random_order, shard_batch
from tunelab.training.checkpoint import last_checkpoint
from tunelab.training.loop import TrainResult, save_config, set_seed, train, whole_model

__all__ = [
    "TrainConfig",
    "TrainResult",
    "last_checkpoint",
    "length_grouped_order",
    "pad_batch",
    "random_order",
    "save_config",
    "set_seed",
    "shard_batch",
    "train",
    "whole_model",
]
