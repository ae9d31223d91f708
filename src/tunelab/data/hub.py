"""Rows of a Hugging Face dataset (`pip install 'tunelab[hub]'`), read through `datasets`: a Hub id with an
optional config (`nyu-mll/glue:sst2`, `rajpurkar/squad`), a local folder of data files that
`datasets.load_dataset` reads (parquet, JSON, CSV), or a folder written by `DatasetDict.save_to_disk` (a
leading `~` is expanded). Offline, `datasets` reads its local cache (HF_HUB_OFFLINE=1 /
HF_DATASETS_OFFLINE=1). Failures are one clear message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import UsageError

# a task's split names -> the usual names of a Hub dataset's splits
DEFAULT_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


@dataclass(frozen=True)
class DatasetRef:
    """A dataset to read: a Hub id or a local folder, and its config name (None: the default)."""

    id: str
    config: str | None = None

    @classmethod
    def parse(cls, spec: str, config: str | None = None, given_as: str = "--dataset") -> DatasetRef:
        """`ID[:CONFIG]` (a local folder is taken whole, colons and all); `given_as` names it in errors."""
        original = spec
        spec = _expand(spec.strip())
        if config is None and ":" in spec and not Path(spec).exists():
            spec, _, config = spec.partition(":")
            config = config or None
        if not spec.strip():
            raise UsageError(
                f"{given_as}: expected a Hub id (OWNER/NAME[:CONFIG]) or a local folder, got {original!r}"
            )
        return cls(spec, config)

    def where(self, split: str) -> str:
        """How messages and results name the data: `nyu-mll/glue:sst2 [validation]`."""
        return f"{self.id}{':' + self.config if self.config else ''} [{split}]"


def _expand(spec: str) -> str:
    """`spec` with a leading `~` or `~user` expanded (a local folder); anything else as given."""
    if not spec.startswith("~"):
        return spec
    try:
        return str(Path(spec).expanduser())
    except RuntimeError:  # an unknown user: left as given
        return spec


def _from_disk(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json"))


def load_rows(dataset: str, config: str | None, split: str, what: str) -> list[dict]:
    """The rows of `dataset` (`config`) split `split` as dicts; `what` names the data in messages."""
    try:
        import datasets
    except ImportError:
        raise UsageError(
            f"loading {what} from the Hub needs the `datasets` package: pip install 'tunelab[hub]' "
            "(or use local files with --data-dir / TUNELAB_DATA_DIR)"
        ) from None
    from tunelab.console import datasets_bars

    datasets_bars(datasets)
    name = dataset + (f", {config}" if config else "")
    dataset = _expand(dataset)
    try:
        path = Path(dataset)
        if _from_disk(path):  # a folder written by DatasetDict.save_to_disk
            loaded = datasets.load_from_disk(str(path))
            if not isinstance(loaded, datasets.DatasetDict):
                # one Dataset has no splits: every split would read the same rows (train = dev)
                raise UsageError(
                    f"could not load {what} split {split!r}: the folder {path} holds one Dataset, not a "
                    "DatasetDict with splits: save a DatasetDict (DatasetDict({'train': ..., 'validation': "
                    "...}).save_to_disk), or give the splits as files"
                )
            if split not in loaded:
                raise KeyError(f"no split {split!r}; the folder has {', '.join(loaded)}")
            return list(loaded[split])
        args = (dataset, config) if config else (dataset,)
        return list(datasets.load_dataset(*args, split=split))
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 -- offline, unknown split, changed schema: report plainly
        raise UsageError(
            f"could not load {what} split {split!r} of the dataset {name} (Hub or local folder): "
            f"{type(e).__name__}: {e}. Offline? Use local files with --data-dir / TUNELAB_DATA_DIR"
        ) from None
