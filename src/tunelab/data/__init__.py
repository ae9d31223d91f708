"""Data: SST-2 and SQuAD readers with validation, locating the data folder, and `data check`."""

from .check import check_file, format_summary
from .folder import read_any, resolve_data_dir, squad_path, sst2_path
from .squad import SquadExample, load_squad_hub, read_squad, summarize_squad
from .sst2 import SST2Example, load_sst2_hub, read_sst2, summarize_sst2

__all__ = [
    "SST2Example",
    "SquadExample",
    "check_file",
    "format_summary",
    "load_squad_hub",
    "load_sst2_hub",
    "read_any",
    "read_squad",
    "read_sst2",
    "resolve_data_dir",
    "squad_path",
    "sst2_path",
    "summarize_squad",
    "summarize_sst2",
]
