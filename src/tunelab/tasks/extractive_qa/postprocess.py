"""Per-window start/end logits of a span head turned into answer texts (the n-best search over the windows of
an example; the v2 null score is the minimum over windows). See windows.py for the window layout."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["NULL_ANSWER", "postprocess"]

NULL_ANSWER = ""


def _column(features, key: str) -> Sequence:
    if isinstance(features, (list, tuple)):  # a list of per-window dicts
        return [f[key] for f in features]
    return features[key]  # dict of lists (our output) or a datasets.Dataset


def postprocess(
    examples: Sequence[Any],
    features,
    all_start_logits,
    all_end_logits,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, list[dict]], dict[str, float]]:
    """Turn per-window start/end logits into answer texts.

    `features`: the output of `prepare_eval_features` (or a list of its rows). `all_start_logits[i]` /
    `all_end_logits[i]`: the logits of window i, indexed like its unpadded input_ids (a right-padded 2-D array
    is fine, positions past the window are ignored; strip *left* padding before calling).

    For each example, every window proposes the pairs of its top-`n_best` passage starts and ends with start
    <= end and at most `max_answer_length` tokens; a span's score is start_logit + end_logit and its text is
    cut from the context by character offsets. The null score is min over windows of the logits at the null
    index (HF utils_qa's choice; see module docstring).

    Returns (predictions, nbest, na_scores):
      predictions[id]: the best span's text; for `version_2`, "" when na_scores[id] > null_threshold;
        "" also when no span is possible at all.
      nbest[id]: up to n_best {"text", "score", "start", "end"} (character offsets into the context, end
        exclusive), best first, one per distinct span, null not included.
      na_scores[id]: null_score - best_span_score (inf when no span is possible); larger = more likely
        unanswerable. Pass it as `na_probs` to `tunelab.tasks.extractive_qa.metrics.squad_v2` (with
        na_threshold=null_threshold) to get the official best-threshold numbers.
    """
    if n_best < 1 or max_answer_length < 1:
        raise ValueError("n_best and max_answer_length must be >= 1")
    example_ids = _column(features, "example_id")
    offset_maps = _column(features, "offset_mapping")
    null_indices = _column(features, "null_index")
    if not (len(example_ids) == len(all_start_logits) == len(all_end_logits)):
        raise ValueError(
            f"{len(example_ids)} windows but {len(all_start_logits)} start and "
            f"{len(all_end_logits)} end logit rows"
        )
    windows_of: dict[Any, list[int]] = defaultdict(list)
    for fi, eid in enumerate(example_ids):
        windows_of[eid].append(fi)

    predictions: dict[str, str] = {}
    nbest: dict[str, list[dict]] = {}
    na_scores: dict[str, float] = {}
    for ex in examples:
        fis = windows_of.get(ex.id)
        if not fis:
            raise ValueError(f"example {ex.id!r} has no window in features")
        best_per_span: dict[tuple[int, int], float] = {}
        min_null = np.inf
        for fi in fis:
            null = _window_spans(
                ex.context,
                offset_maps[fi],
                all_start_logits[fi],
                all_end_logits[fi],
                int(null_indices[fi]),
                n_best,
                max_answer_length,
                best_per_span,
                fi,
            )
            min_null = min(min_null, null)
        ranked = sorted(best_per_span.items(), key=lambda kv: (-kv[1], kv[0]))[:n_best]
        nbest[ex.id] = [
            {"text": ex.context[cs:ce], "score": score, "start": cs, "end": ce} for (cs, ce), score in ranked
        ]
        if ranked:
            best_text, best_score = nbest[ex.id][0]["text"], nbest[ex.id][0]["score"]
        else:
            best_text, best_score = NULL_ANSWER, -np.inf
        na = float(min_null - best_score)
        na_scores[ex.id] = na
        predictions[ex.id] = NULL_ANSWER if (version_2 and na > null_threshold) else best_text
    return predictions, nbest, na_scores


def _window_spans(
    context: str,
    offsets,
    start_logits,
    end_logits,
    null: int,
    n_best: int,
    max_answer_length: int,
    best_per_span: dict[tuple[int, int], float],
    fi: int,
) -> float:
    """Add one window's candidate spans to `best_per_span` (character span -> best score over windows);
    returns the window's null score."""
    n = len(offsets)
    start_logits = np.asarray(start_logits, dtype=np.float64).reshape(-1)
    end_logits = np.asarray(end_logits, dtype=np.float64).reshape(-1)
    if start_logits.shape[0] < n or end_logits.shape[0] < n:
        raise ValueError(f"window {fi} has {n} tokens but fewer logits")
    start_logits, end_logits = start_logits[:n], end_logits[:n]
    null_score = start_logits[null] + end_logits[null]
    in_context = np.array([o is not None for o in offsets], dtype=bool)
    if not in_context.any():
        return null_score
    masked_s = np.where(in_context, start_logits, -np.inf)
    masked_e = np.where(in_context, end_logits, -np.inf)
    k = min(n_best, int(in_context.sum()))
    # stable sort on the negated logits: ties keep the earlier position
    top_starts = np.argsort(-masked_s, kind="stable")[:k]
    top_ends = np.argsort(-masked_e, kind="stable")[:k]
    lengths = top_ends[None, :] - top_starts[:, None] + 1
    valid = (lengths >= 1) & (lengths <= max_answer_length)  # end >= start, not too long
    for a, b in zip(*np.nonzero(valid), strict=True):
        s, e = top_starts[a], top_ends[b]
        cs, ce = int(offsets[s][0]), int(offsets[e][1])
        while cs < ce and context[cs].isspace():
            cs += 1
        while ce > cs and context[ce - 1].isspace():
            ce -= 1
        if ce <= cs:
            continue
        score = float(start_logits[s] + end_logits[e])
        if score > best_per_span.get((cs, ce), -np.inf):
            best_per_span[(cs, ce)] = score
    return null_score
