"""Extractive QA with a decoder LM and a span head: the features (sliding windows over the passage) and the
span loss; post-processing is in postprocess.py.

The layout follows Hugging Face's `run_qa.py` / `utils_qa.py` recipe (question and passage as one pair
encoding, passage-only truncation into overlapping windows with the fast tokenizer's
`return_overflowing_tokens`, labels from character offsets, n-best search over the top start/end logits of
every window of an example, v2 null score as the minimum over windows). The code is written here, not copied,
and differs where a decoder-only model or exact answer text needs it:

* **The null position is the last token, an appended EOS.** An encoder labels "no answer" on [CLS] at position
  0, whose hidden state attends to the whole window. In a causal LM, position 0 (BOS, or the first question
  token) attends to nothing but itself, so its start/end logits cannot depend on the window: it could never
  learn *when* there is no answer. The last token attends to every token, so each window is tokenized to
  `max_length - 1` tokens and `tokenizer.eos_token_id` is appended as the null/summary token (the window stays
  <= `max_length`). A window that does not contain the whole answer, and every window of an unanswerable
  question, is labelled start = end = that last index. Whatever special tokens the tokenizer adds itself
  (Llama's BOS) are kept.
* **Offsets are trimmed to exclude leading whitespace.** Byte-level BPE tokenizers (GPT-2 style: SmolLM2,
  Llama 3) give a token such as " word" the offset of its leading space unless their post-processor trims
  offsets (SmolLM2's and Llama 3's do not). We move every context token's start offset past whitespace, so the
  text cut from the context is exactly the answer; a whitespace-only token becomes an empty span (start ==
  end), which is never used as a label boundary. (HF's utils_qa uses the raw offsets.)
* **Label tokens**: the start label is the first context token whose span reaches past the answer's first
  character, the end label the last context token that starts before the answer's end (HF scans the same way
  with <=/>=; ours picks the *first* of several tokens sharing one character, as byte-level BPE does for the
  bytes of an emoji). An answer that begins or ends inside a token is labelled with the whole token (as HF
  does).
* **Post-processing** masks non-context positions before taking each window's top-`n_best` starts and ends (HF
  takes the top-n over all positions and then discards question tokens, so an untrained head can leave no
  candidate), strips whitespace from candidate spans, and keeps one entry per distinct character span (windows
  overlap, so the same span shows up in several windows; the higher score wins).
* **The v2 null score is the minimum over windows** of start_logit[null] + end_logit[null], as in HF's
  utils_qa and Google's original BERT `run_squad.py`: an answer lies in at most a few windows, every other
  window is right to predict null, so the window least sure there is "no answer" is the one that speaks for
  the example.

Windows use HF's stride convention: `stride` is the number of context tokens shared by consecutive windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["prepare_eval_features", "prepare_train_features", "span_loss"]

Offset = tuple[int, int] | None


def _trim_leading_space(context: str, start: int, end: int) -> tuple[int, int]:
    while start < end and context[start].isspace():
        start += 1
    return start, end


def _check_tokenizer(tokenizer) -> int:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError("QA features need a fast (Rust `tokenizers`) tokenizer for offset mappings")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            "the tokenizer has no EOS token; it is needed as the null/summary token of each window"
        )
    return eos


def _encode_windows(examples, tokenizer, max_length: int, stride: int, question_first: bool):
    """Tokenize into windows; return a list of (example_index, input_ids, attention_mask, offsets) where
    offsets are trimmed (start, end) character offsets into the context for context tokens, None for every
    other token (question, special tokens, the appended EOS = the last position)."""
    eos = _check_tokenizer(tokenizer)
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    examples = list(examples)
    if not examples:
        return []
    # Leading whitespace in a question only wastes room (some SQuAD questions have lots of it; HF strips it
    # too).
    questions = [ex.question.lstrip() for ex in examples]
    contexts = [ex.context for ex in examples]
    # The Rust tokenizer panics (an uncatchable-by-`except Exception` PanicException) when the room left for
    # the passage is not larger than the stride, so check the room first and say which question is at fault.
    budget = max_length - 1 - tokenizer.num_special_tokens_to_add(pair=True)
    q_lens = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for ex, q_len in zip(examples, q_lens, strict=True):
        room = budget - q_len
        if room <= stride:
            raise ValueError(
                f"question of example {getattr(ex, 'id', '?')!r} takes {q_len} tokens: with max_length="
                f"{max_length} (one slot reserved for the null EOS) only {room} passage tokens fit per "
                "window, "
                f"which must be more than stride={stride}; raise max_length or lower stride"
            )
    first, second = (questions, contexts) if question_first else (contexts, questions)
    enc = tokenizer(
        first,
        second,
        truncation="only_second" if question_first else "only_first",
        max_length=max_length - 1,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    context_seq = 1 if question_first else 0
    windows = []
    for i, ids in enumerate(enc["input_ids"]):
        ex_idx = enc["overflow_to_sample_mapping"][i]
        context = contexts[ex_idx]
        offsets: list[Offset] = [
            _trim_leading_space(context, int(s), int(e)) if seq == context_seq else None
            for (s, e), seq in zip(enc["offset_mapping"][i], enc.sequence_ids(i), strict=True)
        ]
        windows.append((ex_idx, list(ids) + [eos], list(enc["attention_mask"][i]) + [1], offsets + [None]))
    return windows


def _answer_chars(ex) -> tuple[int, int] | None:
    """(start, end) character span of the first gold answer, whitespace stripped; None if unanswerable."""
    if getattr(ex, "is_impossible", False) or not ex.answers:
        return None
    ans = ex.answers[0]
    start = int(ans["answer_start"])
    end = start + len(ans["text"])
    while start < end and ex.context[start].isspace():
        start += 1
    while end > start and ex.context[end - 1].isspace():
        end -= 1
    return (start, end) if end > start else None


def _label_window(offsets: Sequence[Offset], start_char: int, end_char: int) -> tuple[int, int] | None:
    """Token (start, end) of the answer if this window contains all of it, else None."""
    ctx = [i for i, o in enumerate(offsets) if o is not None and o[1] > o[0]]
    if not ctx or offsets[ctx[0]][0] > start_char or offsets[ctx[-1]][1] < end_char:
        return None
    start_tok = next(i for i in ctx if offsets[i][1] > start_char)
    end_tok = next(i for i in reversed(ctx) if offsets[i][0] < end_char)
    if end_tok < start_tok:
        return None
    return start_tok, end_tok


def prepare_train_features(
    examples: Sequence[Any],
    tokenizer,
    max_length: int = 384,
    stride: int = 128,
    question_first: bool = True,
) -> dict[str, list]:
    """Training windows with span labels, unpadded (pad dynamically in the collator, on the right).

    `examples`: objects with .context, .question, .answers (list of {"text", "answer_start"}), .is_impossible
    (e.g. tunelab.data.squad.SquadExample). Question and passage form one pair encoding (question first by
    default, so that passage tokens can attend to the question in a causal LM); only the passage is truncated,
    into windows sharing `stride` tokens; each window gets `tokenizer.eos_token_id` appended as its last
    token, the null position (see the module docstring for why the last and not the first). Every window has
    <= `max_length` tokens.

    Labels: (start_positions, end_positions) are token indices of the first gold answer in a window that
    contains all of it; a window that cuts the answer, or any window of an unanswerable question, is labelled
    with its last index (the null/EOS position). Raises ValueError when a question leaves no more than
    `stride` passage tokens.

    Returns {"input_ids", "attention_mask", "start_positions", "end_positions"}: one list entry per window.
    """
    examples = list(examples)
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "start_positions": [], "end_positions": []}
    for ex_idx, ids, mask, offsets in _encode_windows(
        examples, tokenizer, max_length, stride, question_first
    ):
        null = len(ids) - 1
        span = _answer_chars(examples[ex_idx])
        label = _label_window(offsets, *span) if span is not None else None
        start, end = label if label is not None else (null, null)
        out["input_ids"].append(ids)
        out["attention_mask"].append(mask)
        out["start_positions"].append(start)
        out["end_positions"].append(end)
    return out


def prepare_eval_features(
    examples: Sequence[Any],
    tokenizer,
    max_length: int = 384,
    stride: int = 128,
    question_first: bool = True,
) -> dict[str, list]:
    """The same windows as `prepare_train_features`, for inference and post-processing.

    Returns {"input_ids", "attention_mask", "offset_mapping", "example_id", "null_index"}: per window,
    offset_mapping has a (start, end) character span into the example's context for each passage token
    (leading whitespace trimmed) and None for every other token (as HF run_qa does), example_id is the
    example's .id, and null_index the position of the null/EOS token (always the last one).
    """
    examples = list(examples)
    out: dict[str, list] = {
        "input_ids": [],
        "attention_mask": [],
        "offset_mapping": [],
        "example_id": [],
        "null_index": [],
    }
    for ex_idx, ids, mask, offsets in _encode_windows(
        examples, tokenizer, max_length, stride, question_first
    ):
        out["input_ids"].append(ids)
        out["attention_mask"].append(mask)
        out["offset_mapping"].append(offsets)
        out["example_id"].append(examples[ex_idx].id)
        out["null_index"].append(len(ids) - 1)
    return out


def span_loss(model, batch: dict) -> torch.Tensor:
    """The span head's training loss with padding left out: cross-entropy of the gold start and end over the
    window's real tokens, averaged. (transformers' QA loss takes the softmax over every position of the padded
    batch: with dynamic padding an example's loss would then depend on its batch-mates' lengths, and on how a
    global batch is split across processes.)"""
    inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")}
    out = model(**inputs)
    pad = batch["attention_mask"] == 0
    # at least float32 (bf16 logits are upcast); a float64 model keeps float64, as tunelab.packing does
    dtype = torch.promote_types(out.start_logits.dtype, torch.float32)
    start = out.start_logits.to(dtype).masked_fill(pad, float("-inf"))
    end = out.end_logits.to(dtype).masked_fill(pad, float("-inf"))
    return (
        torch.nn.functional.cross_entropy(start, batch["start_positions"])
        + torch.nn.functional.cross_entropy(end, batch["end_positions"])
    ) / 2
