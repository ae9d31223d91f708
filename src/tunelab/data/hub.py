"""Rows of a Hugging Face Hub dataset (`pip install 'tunelab[hub]'`), with failures as one clear message."""

from __future__ import annotations

from tunelab.errors import UsageError


def load_rows(dataset: str, config: str | None, split: str, what: str) -> list[dict]:
    """The rows of `dataset` (`config`) split `split`; `what` names the data in messages."""
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"loading {what} from the Hub needs the `datasets` package: pip install 'tunelab[hub]' "
            "(or use local files with --data-dir / TUNELAB_DATA_DIR)"
        ) from None
    name = dataset + (f", {config}" if config else "")
    try:
        args = (dataset, config) if config else (dataset,)
        return list(datasets.load_dataset(*args, split=split))
    except Exception as e:  # noqa: BLE001 -- offline, unknown split, changed schema: report plainly
        raise UsageError(
            f"could not load {what} split {split!r} from the Hugging Face Hub ({name}): "
            f"{type(e).__name__}: {e}. Offline? Use local files with --data-dir / TUNELAB_DATA_DIR"
        ) from None
