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
  with <=/>=; of several tokens sharing one character, as byte-level BPE gives the bytes of an emoji, the
  start label is the first and the end label the last, so the span holds the whole character). An answer
  that begins or ends inside a token is labelled with the whole token (as HF does).
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

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
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


def _check_room(examples: Sequence[Any], q_lens: Sequence[int], budget: int, max_length: int, stride: int):
    for ex, q_len in zip(examples, q_lens, strict=True):
        room = budget - q_len
        if room <= stride:
            fit = f"only {room} passage tokens fit" if room > 0 else "no passage token fits"
            raise ValueError(
                f"question of example {getattr(ex, 'id', '?')!r} takes {q_len} tokens: with max_length="
                f"{max_length} (one slot reserved for the null EOS) {fit} per window, which must be more "
                f"than the {stride} tokens consecutive windows share; raise max_length"
            )


def _reference_windows(examples, tokenizer, max_length: int, stride: int, question_first: bool):
    """The windows from one pair encoding per question (the tokenizer's own overflow windows): the slow,
    obvious construction, kept as the reference the fast one (`_encode_windows`) is tested against. Returns
    a list of (example_index, input_ids, attention_mask, offsets) where offsets are trimmed (start, end)
    character offsets into the context for context tokens, None for every other token (question, special
    tokens, the appended EOS = the last position)."""
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
    _check_room(examples, q_lens, budget, max_length, stride)
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


@dataclass
class Encoded:
    """The windows of a list of examples, compactly: each question and each distinct passage tokenised once
    (flat token arrays with bounds; passage offsets trimmed), and per window its example, the passage tokens
    it holds ([start, stop)) and its span labels (window positions; -1: the null position). This is what the
    window cache stores (window_cache.py); `expand` builds the per-window lists from it."""

    question_first: bool
    prefix: list[int]  # special tokens before the first sequence, between the two, after the second
    middle: list[int]
    suffix: list[int]
    eos: int
    q_ids: np.ndarray  # flat question tokens; question i is q_ids[q_bounds[i]:q_bounds[i + 1]]
    q_bounds: np.ndarray
    c_ids: np.ndarray  # flat passage tokens and their trimmed character offsets, passage j at c_bounds[j]
    c_starts: np.ndarray
    c_ends: np.ndarray
    c_bounds: np.ndarray
    context_of: np.ndarray  # per example: its passage
    w_example: np.ndarray  # per window
    w_start: np.ndarray
    w_stop: np.ndarray
    w_label_start: np.ndarray
    w_label_end: np.ndarray

    ARRAYS: ClassVar[tuple[str, ...]] = (
        "q_ids",
        "q_bounds",
        "c_ids",
        "c_starts",
        "c_ends",
        "c_bounds",
        "context_of",
        "w_example",
        "w_start",
        "w_stop",
        "w_label_start",
        "w_label_end",
    )

    def check(self) -> None:
        """Raise ValueError unless the arrays fit together (a cache file that decodes but is not a set of
        windows must not be used)."""
        n_ex, n_ctx, n_win = len(self.context_of), len(self.c_bounds) - 1, len(self.w_example)
        ok = (
            len(self.q_bounds) == n_ex + 1
            and self.q_bounds[-1] == len(self.q_ids)
            and self.c_bounds[-1] == len(self.c_ids) == len(self.c_starts) == len(self.c_ends)
            and all(len(getattr(self, k)) == n_win for k in self.ARRAYS[7:])
            and (n_win == 0 or (self.w_example.min() >= 0 and self.w_example.max() < n_ex))
            and (n_ex == 0 or (self.context_of.min() >= 0 and self.context_of.max() < n_ctx))
            and bool(np.all(self.w_start <= self.w_stop))
        )
        if ok and n_win:
            ctx = self.context_of[self.w_example]
            ok = bool(np.all(self.w_stop <= self.c_bounds[ctx + 1] - self.c_bounds[ctx]))
        if not ok:
            raise ValueError("inconsistent window arrays")

    def expand(self):
        """(example_index, input_ids, attention_mask, offsets, (label_start, label_end) or None) per window,
        as `_reference_windows` gives them (plus the label)."""
        q_ids, qb = self.q_ids.tolist(), self.q_bounds.tolist()
        c_ids, cb = self.c_ids.tolist(), self.c_bounds.tolist()
        c_offsets = list(zip(self.c_starts.tolist(), self.c_ends.tolist(), strict=True))
        context_of = self.context_of.tolist()
        tail = [*self.suffix, self.eos]
        for ex, start, stop, ls, le in zip(
            self.w_example.tolist(),
            self.w_start.tolist(),
            self.w_stop.tolist(),
            self.w_label_start.tolist(),
            self.w_label_end.tolist(),
            strict=True,
        ):
            q = q_ids[qb[ex] : qb[ex + 1]]
            base = cb[context_of[ex]]
            ctx, offs = c_ids[base + start : base + stop], c_offsets[base + start : base + stop]
            if self.question_first:
                head = [*self.prefix, *q, *self.middle]
                ids = head + ctx + tail
                offsets = [None] * len(head) + offs + [None] * len(tail)
            else:
                mid = [*self.middle, *q, *self.suffix]
                ids = [*self.prefix, *ctx, *mid, self.eos]
                offsets = [None] * len(self.prefix) + offs + [None] * (len(mid) + 1)
            yield ex, ids, [1] * len(ids), offsets, ((ls, le) if ls >= 0 else None)


@functools.cache
def _whitespace() -> np.ndarray:
    """Per code point: does `str.isspace` call it whitespace (the offsets trimming's definition)."""
    table = np.zeros(0x110000, dtype=bool)
    table[[c for c in range(0x110000) if chr(c).isspace()]] = True
    return table


def _trimmed_starts(context: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """`_trim_leading_space` for every token of a passage at once."""
    codes = np.frombuffer(context.encode("utf-32-le"), dtype=np.uint32)
    n = len(codes)
    position = np.where(_whitespace()[codes], n, np.arange(n))
    next_text = np.append(np.minimum.accumulate(position[::-1])[::-1], n)  # first non-space at or after i
    return np.minimum(next_text[starts], ends)


def _layout(tokenizer, question_first: bool) -> tuple[list[int], list[int], list[int]] | None:
    """The special tokens the tokenizer puts before, between and after a pair, read from one probe encoding;
    None when the probe does not look like a fixed template (then the reference path is used)."""
    enc = tokenizer("a", "b", add_special_tokens=True)
    ids, seq = enc["input_ids"], enc.sequence_ids()
    parts: list[list[int]] = [[], [], []]
    part = 0
    for tid, s in zip(ids, seq, strict=True):
        if s is None:
            parts[part].append(tid)
        else:
            part = max(part, s + 1)
    if sum(map(len, parts)) != tokenizer.num_special_tokens_to_add(pair=True):
        return None
    return parts[0], parts[1], parts[2]


def _window_ranges(n: int, room: int, stride: int) -> list[tuple[int, int]]:
    """[start, stop) of the passage tokens of each window, as the Rust tokenizer's overflow truncation cuts
    them (windows of `room` tokens, each `room - stride` after the one before, until the passage ends)."""
    if n <= room:
        return [(0, n)]
    out = []
    for start in range(0, n, room - stride):
        stop = min(start + room, n)
        out.append((start, stop))
        if stop == n:
            break
    return out


def _window_label(
    starts: np.ndarray, ends: np.ndarray, answer: tuple[int, int] | None
) -> tuple[int, int] | None:
    """`_label_window` on one window's passage tokens: passage-relative (start, end) or None."""
    if answer is None:
        return None
    start_char, end_char = answer
    real = np.flatnonzero(ends > starts)
    if not len(real) or starts[real[0]] > start_char or ends[real[-1]] < end_char:
        return None
    start_tok = real[np.argmax(ends[real] > start_char)]
    end_tok = real[len(real) - 1 - np.argmax(starts[real][::-1] < end_char)]
    return (int(start_tok), int(end_tok)) if end_tok >= start_tok else None


def encode(
    examples: Sequence[Any], tokenizer, max_length: int, stride: int, question_first: bool = True
) -> Encoded | None:
    """The windows of `examples`, built from one tokenisation of each question and of each distinct passage
    (the reference tokenises question + passage once per question and Python-loops over every window token:
    minutes for the SQuAD training set). The same windows as `_reference_windows` (tested); None when the
    tokenizer's special tokens are not a fixed template."""
    eos = _check_tokenizer(tokenizer)
    if stride < 0:
        raise ValueError(f"stride must be >= 0, got {stride}")
    layout = _layout(tokenizer, question_first)
    if layout is None:
        return None
    examples = list(examples)
    index: dict[str, int] = {}
    context_of = [index.setdefault(ex.context, len(index)) for ex in examples]
    contexts = list(index)
    q_tok = tokenizer([ex.question.lstrip() for ex in examples], add_special_tokens=False)["input_ids"]
    budget = max_length - 1 - tokenizer.num_special_tokens_to_add(pair=True)
    _check_room(examples, [len(q) for q in q_tok], budget, max_length, stride)
    c_enc = tokenizer(contexts, add_special_tokens=False, return_offsets_mapping=True)
    c_ids, c_starts, c_ends, c_bounds = [], [], [], [0]
    for context, ids, offsets in zip(contexts, c_enc["input_ids"], c_enc["offset_mapping"], strict=True):
        off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
        c_ids.append(np.asarray(ids, dtype=np.int64))
        c_starts.append(_trimmed_starts(context, off[:, 0], off[:, 1]))
        c_ends.append(off[:, 1])
        c_bounds.append(c_bounds[-1] + len(ids))
    windows = []  # (example, start, stop, label start, label end)
    for i, ex in enumerate(examples):
        j = context_of[i]
        starts, ends = c_starts[j], c_ends[j]
        answer = _answer_chars(ex)
        before = len(layout[0]) + (len(q_tok[i]) + len(layout[1]) if question_first else 0)
        for start, stop in _window_ranges(len(starts), budget - len(q_tok[i]), stride):
            label = _window_label(starts[start:stop], ends[start:stop], answer)
            ls, le = (before + label[0], before + label[1]) if label else (-1, -1)
            windows.append((i, start, stop, ls, le))
    w = np.asarray(windows, dtype=np.int64).reshape(-1, 5)
    flat = [np.asarray(q, dtype=np.int64) for q in q_tok]

    def cat(parts):
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    return Encoded(
        question_first,
        *layout,
        eos,
        cat(flat),
        np.cumsum([0] + [len(q) for q in q_tok]),
        cat(c_ids),
        cat(c_starts),
        cat(c_ends),
        np.asarray(c_bounds, dtype=np.int64),
        np.asarray(context_of, dtype=np.int64),
        *(w[:, k].copy() for k in range(5)),
    )


def _encode_windows(examples, tokenizer, max_length: int, stride: int, question_first: bool):
    """Every window as (example_index, input_ids, attention_mask, offsets, label or None): from the window
    cache when it holds these examples' windows, else built by `encode` (and cached)."""
    from tunelab.tasks.extractive_qa.window_cache import cached_encode

    examples = list(examples)
    if not examples:
        return []
    enc = cached_encode(examples, tokenizer, max_length, stride, question_first)
    if enc is None:  # an unusual tokenizer: the slow path
        return [
            (i, ids, mask, offsets, _label_window(offsets, *span) if span else None)
            for (i, ids, mask, offsets) in _reference_windows(
                examples, tokenizer, max_length, stride, question_first
            )
            for span in [_answer_chars(examples[i])]
        ]
    return list(enc.expand())


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
    for _, ids, mask, _, label in _encode_windows(examples, tokenizer, max_length, stride, question_first):
        null = len(ids) - 1
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
    for ex_idx, ids, mask, offsets, _ in _encode_windows(
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
    out = model(**{**inputs, "use_cache": False})
    pad = batch["attention_mask"] == 0
    # at least float32 (bf16 logits are upcast); a float64 model keeps float64, as tunelab.packing does
    dtype = torch.promote_types(out.start_logits.dtype, torch.float32)
    start = out.start_logits.to(dtype).masked_fill(pad, float("-inf"))
    end = out.end_logits.to(dtype).masked_fill(pad, float("-inf"))
    return (
        torch.nn.functional.cross_entropy(start, batch["start_positions"])
        + torch.nn.functional.cross_entropy(end, batch["end_positions"])
    ) / 2
