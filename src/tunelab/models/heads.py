"""The two task heads a decoder gets: a sequence classifier and a span (question answering) head."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Head:
    name: str  # classification | span
    module: str  # the head's module in the transformers task model
    auto_class: str  # the transformers Auto class of the task model
    peft_task: str  # peft's task_type for LoRA
    what: str  # for messages and parameter reports


HEADS = {
    "classification": Head(
        "classification", "score", "AutoModelForSequenceClassification", "SEQ_CLS", "sequence classification"
    ),
    "span": Head("span", "qa_outputs", "AutoModelForQuestionAnswering", "QUESTION_ANS", "span QA"),
}


def head(name: str) -> Head:
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}: expected one of {', '.join(HEADS)}")
    return HEADS[name]


def auto_class(name: str) -> type:
    import transformers

    return getattr(transformers, head(name).auto_class)
