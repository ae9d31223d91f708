"""Data files: classification tables (table), SQuAD-format JSON (squad), text and JSONL reading (text), the
data folder (folder) and Hub datasets (hub). Which file a task reads, and how, is the task's
(tunelab.tasks)."""

from tunelab.data.folder import resolve_data_dir
from tunelab.data.squad import SquadExample, read_squad, summarize_squad
from tunelab.data.table import Columns, LabelSet, TextExample, read_table

__all__ = [
    "Columns",
    "LabelSet",
    "SquadExample",
    "TextExample",
    "read_squad",
    "read_table",
    "resolve_data_dir",
    "summarize_squad",
]
