"""Experiment trackers (`--report-to`, a study's `report_to:`) through accelerate's tracker API: its tracker
classes (`accelerate.tracking`), set up as `Accelerator.init_trackers` does (start, the resolved config as
hyperparameters), then `log` and `finish`. Not through a second `Accelerator`: that would fix accelerate's
process-wide state (mixed precision) before the training loop's own Accelerator sets it. A tracker's package
is imported only when it is asked for; a missing one is one message."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from tunelab.errors import UsageError
from tunelab.options import TRACKERS

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}
TRAIN_KEYS = {"loss": "train/loss", "lr": "train/learning_rate", "tokens_per_s": "train/tokens_per_s"}


def check_available(names: list[str]) -> None:
    """Every asked-for tracker's package imports (UsageError naming the extra to install otherwise)."""
    for name in names:
        if name not in TRACKERS:
            raise UsageError(
                f"--report-to: unknown tracker {name!r} (expected {', '.join(TRACKERS)} or none)"
            )
        try:
            importlib.import_module(PACKAGES[name])
        except ImportError:
            raise UsageError(
                f"--report-to {name} needs the `{PACKAGES[name]}` package: pip install 'tunelab[{name}]' "
                "(or leave the tracker out: --report-to none)"
            ) from None


def flat_hparams(config: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config as tracker hyperparameters: dotted keys, scalars kept, anything else as JSON text."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, name + "."))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = value if value is not None else "null"
        else:
            out[name] = json.dumps(value)
    return out


class Tracking:
    """One tracker run (`run_name`) on every asked-for tracker; files (TensorBoard's events) under
    `logging_dir/run_name`. Log only from the main process."""

    def __init__(self, names: list[str], logging_dir: str | Path, run_name: str, config: dict):
        check_available(names)
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        self.names = list(names)
        self.trackers = []
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(run_name, str(logging_dir)) if cls.requires_logging_directory else cls(run_name)
            tracker.start()
            tracker.store_init_configuration(flat_hparams(config))
            self.trackers.append(tracker)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        values = {
            k: v for k, v in values.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def on_log(self, kind: str, entry: dict) -> None:
        """The training loop's hook: a train_log.jsonl line, or an evaluation during training."""
        step = int(entry["step"])
        if kind == "train":
            self.log({TRAIN_KEYS[k]: entry[k] for k in TRAIN_KEYS if k in entry}, step)
        else:
            self.log({f"eval/{k}": v for k, v in entry.items() if k != "step"}, step)

    def log_dev(self, metrics: dict, step: int) -> None:
        """A final evaluation's metrics (metrics.json) as dev/NAME: the same tags for zero-shot, fine-tuned
        and evaluated runs, so that they share charts."""
        self.log({f"dev/{k}": v for k, v in metrics.items()}, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def tracking(names: list[str], logging_dir: str | Path, run_name: str, config: dict) -> Tracking | None:
    """A Tracking, or None when no tracker is asked for (nothing imported)."""
    return Tracking(names, logging_dir, run_name, config) if names else None
