"""Experiment trackers (`--report-to`, a study's `report_to:`) through accelerate's tracker API: its tracker
classes (`accelerate.tracking`), set up as `Accelerator.init_trackers` does (start, the resolved config as
hyperparameters), then `log` and `finish`. Not through a second `Accelerator`: that would fix accelerate's
process-wide state (mixed precision) before the training loop's own Accelerator sets it. A tracker's package
is imported only when it is asked for; a missing one is one message."""

from __future__ import annotations

import importlib
import json
import os
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
    """One tracker run (`run_name`) on every asked-for tracker, started by `start`; files (TensorBoard's
    events) under `logging_dir/run_name`. wandb and trackio log to the project, MLflow to the experiment,
    `project` (default: `project_name(logging_dir)`), under the run's name. Log only from the main process."""

    def __init__(
        self,
        names: list[str],
        logging_dir: str | Path,
        run_name: str,
        config: dict,
        project: str | None = None,
    ) -> None:
        check_available(names)
        self.names = list(names)
        self.logging_dir, self.run_name, self.config = Path(logging_dir), run_name, config
        self.project = project or project_name(logging_dir)
        self.trackers: list = []

    def start(self, step: int = 0) -> None:
        """Start the trackers for training that goes on after optimizer step `step` (0: from the beginning;
        the training loop's "start" hook), so that no step is logged twice. TensorBoard appends to the run's
        folder, which an earlier attempt may have written: from the beginning, that attempt's files are
        removed first; on a resume, purge_step=step+1 makes TensorBoard drop what the interrupted attempt
        logged past the checkpoint (it is logged again), and the hyperparameters, stored already, are not
        stored again. wandb, MLflow and trackio start a new run each time."""
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        folder = self.logging_dir / self.run_name
        if step == 0:
            _clear_tensorboard(folder)
        for name in self.names:
            cls = LOGGER_TYPE_TO_CLASS[name]
            if name == "tensorboard":
                stored = folder.is_dir() and any(folder.rglob("hparams.yml"))
                extra = {"purge_step": step + 1} if step else {}  # SummaryWriter's keyword
                tracker = cls(self.run_name, str(self.logging_dir), **extra)
            elif name == "mlflow":
                stored, tracker = False, cls(self.project, run_name=self.run_name)  # (experiment_name, ...)
            else:  # wandb.init, trackio.init: (project=, name=)
                stored, tracker = False, cls(self.project, name=self.run_name)
            tracker.start()
            if not stored:
                tracker.store_init_configuration(flat_hparams(self.config))
            self.trackers.append(tracker)

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        if not self.trackers:
            raise RuntimeError("Tracking.log before Tracking.start")
        values = {
            k: v for k, v in values.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def on_log(self, kind: str, entry: dict) -> None:
        """The training loop's hook: where training starts ("start"), a train_log.jsonl line ("train"), or an
        evaluation during training ("eval")."""
        step = int(entry["step"])
        if kind == "start":
            self.start(step)
        elif kind == "train":
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
        self.trackers = []


def project_name(logging_dir: str | Path) -> str:
    """The project (wandb, trackio) or experiment (MLflow) of the runs logged under `logging_dir`: the name of
    the output folder that holds it (OUT/tracking, a study's RUN/tracking), as it is called once written, not
    its work folder OUT.partial (outputs.partial_dir)."""
    name = Path(os.path.abspath(logging_dir)).parent.name
    return name.removesuffix(".partial") or name


def _clear_tensorboard(folder: Path) -> None:
    """Remove what TensorBoard's tracker writes under `folder` (event files, hparams.yml) and the folders that
    leaves empty; any other file stays."""
    if not folder.is_dir():
        return
    for f in folder.rglob("*"):
        if f.is_file() and (f.name.startswith("events.out.tfevents.") or f.name == "hparams.yml"):
            f.unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(d.iterdir()):
            d.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def tracking(
    names: list[str], logging_dir: str | Path, run_name: str, config: dict, project: str | None = None
) -> Tracking | None:
    """A Tracking (not started), or None when no tracker is asked for (nothing imported)."""
    return Tracking(names, logging_dir, run_name, config, project) if names else None
