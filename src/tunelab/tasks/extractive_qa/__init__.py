"""The extractive-QA kind, from SQuAD-format files (task.py): windows over the passage and the span loss
(windows.py), answers from span logits (postprocess.py, spans.py), zero-shot generation (generation.py), the
official scoring (metrics.py)."""

from tunelab.tasks.extractive_qa.task import ExtractiveQATask, SpanAnswers

__all__ = ["ExtractiveQATask", "SpanAnswers"]
