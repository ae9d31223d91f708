"""Tasks as data: the Task interface and registry (base.py), the built-in tasks (builtin.py), the two kinds
(classification/, extractive_qa/) and the chat-prompt base they share (prompt.py)."""

from tunelab.tasks.base import DataFile, FineTuning, Task, builtin_names, get_task, load_task, task_from_meta

__all__ = ["DataFile", "FineTuning", "Task", "builtin_names", "get_task", "load_task", "task_from_meta"]
