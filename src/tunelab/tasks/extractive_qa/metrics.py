"""The official SQuAD v1.1 and v2.0 evaluation, as plain functions over dicts, and the question word a report
groups questions by.

Why hand-written: the maintained implementations are not usable offline here. `evaluate.load("squad")` /
`evaluate.load("squad_v2")` download the metric's code from the Hugging Face Hub at run time (and `evaluate`
is not a dependency), and `torchmetrics.text.SQuAD` covers v1.1 only and is not a dependency either (its F1
also differs from the v1.1 script on empty answers: it returns 1 when both sides normalise to nothing, the
v1.1 script returns 0). So this module re-states the definitions of the two official scripts
(`evaluate-v1.1.py` and `evaluate-v2.0.py`, the ones the SQuAD leaderboard ran), function for function;
tests/tasks/test_squad_metrics.py checks it against a second, independently written copy of those formulas on
hand-made and random cases (and against torchmetrics' v1.1 when that happens to be importable).

The definitions (both versions share the normalisation):

* normalize_answer: lower-case; drop every character of `string.punctuation`; replace the whole words a/an/the
  by a space; collapse whitespace.
* exact match: normalised strings equal. F1: bag-of-tokens overlap (Counter intersection) of the normalised,
  whitespace-split strings. A question scores the max over its gold answers.
* v1.1 only: every gold answer counts (even one that normalises to nothing); F1 is 0 whenever there is no
  overlap (so an empty prediction never gets F1 credit); a question with no prediction scores 0 and still
  counts.
* v2.0 only: gold answers that normalise to nothing are dropped, and a question with no gold answer left has
  gold `[""]`; an empty prediction means "no answer"; F1 is 1 when both sides are empty, 0 when one side is.
  The HasAns/NoAns split follows the *raw* gold list (non-empty = has an answer). `na_probs` ("no-answer
  probability", any score where larger means "more likely unanswerable") above `na_threshold` turns a
  prediction into "no answer" (score 1 on unanswerable, 0 on answerable); `best_exact`/`best_f1` are the
  scores at the best such threshold found by the official `find_best_thresh` sweep.

Scores per question are in 0..1; the aggregates are percentages (0..100), as the official scripts print them.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = [
    "exact_match_score",
    "f1_score_v1",
    "f1_score_v2",
    "find_best_thresh",
    "get_tokens",
    "normalize_answer",
    "per_example_scores",
    "question_type",
    "squad_v1",
    "squad_v2",
]

_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (official order: lower, punctuation,
    articles, whitespace)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    return normalize_answer(s).split() if s else []


def exact_match_score(prediction: str, ground_truth: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(ground_truth))


def f1_score_v1(prediction: str, ground_truth: str) -> float:
    """F1 as in evaluate-v1.1.py: 0 when nothing overlaps (so also when either side is empty)."""
    pred_toks = normalize_answer(prediction).split()
    gold_toks = normalize_answer(ground_truth).split()
    num_same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def f1_score_v2(prediction: str, ground_truth: str) -> float:
    """F1 as in evaluate-v2.0.py: if either side is empty (no answer), 1 when both are, else 0."""
    gold_toks = get_tokens(ground_truth)
    pred_toks = get_tokens(prediction)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    num_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def _golds_v2(golds: Sequence[str]) -> list[str]:
    kept = [a for a in golds if normalize_answer(a)]
    return kept if kept else [""]  # unanswerable: the only correct answer is the empty string


def _check_refs(references: Mapping[str, Sequence[str]]) -> None:
    for qid, golds in references.items():
        if isinstance(golds, str):
            raise TypeError(f"references[{qid!r}] must be a list of answer strings, not a str")


def _raw_scores_v1(predictions, references):
    _check_refs(references)
    em, f1 = {}, {}
    for qid, golds in references.items():
        if not golds:
            raise ValueError(
                f"SQuAD v1.1 question {qid!r} has no gold answer (use squad_v2 for unanswerable ones)"
            )
        if qid not in predictions:  # official v1.1: "Unanswered question will receive score 0."
            em[qid], f1[qid] = 0.0, 0.0
            continue
        pred = predictions[qid]
        em[qid] = float(max(exact_match_score(pred, g) for g in golds))
        f1[qid] = max(f1_score_v1(pred, g) for g in golds)
    return em, f1


def _raw_scores_v2(predictions, references):
    _check_refs(references)
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        # The official v2 script prints "Missing prediction" and then fails on the HasAns/NoAns breakdown.
        raise ValueError(
            f"{len(missing)} question(s) have no prediction, e.g. {missing[0]!r} (predict '' for no answer)"
        )
    em, f1 = {}, {}
    for qid, golds in references.items():
        golds = _golds_v2(golds)
        pred = predictions[qid]
        em[qid] = float(max(exact_match_score(pred, g) for g in golds))
        f1[qid] = max(f1_score_v2(pred, g) for g in golds)
    return em, f1


def _apply_no_ans_threshold(scores, na_probs, has_ans, na_threshold):
    return {
        qid: (float(not has_ans[qid]) if na_probs[qid] > na_threshold else s) for qid, s in scores.items()
    }


def _na_probs_or_zero(na_probs, references):
    if na_probs is None:
        return {qid: 0.0 for qid in references}  # the official default when no na-prob file is given
    missing = [qid for qid in references if qid not in na_probs]
    if missing:
        raise ValueError(f"na_probs lacks {len(missing)} question(s), e.g. {missing[0]!r}")
    return {qid: float(na_probs[qid]) for qid in references}


def per_example_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    *,
    version_2: bool = False,
    na_probs: Mapping[str, float] | None = None,
    na_threshold: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Per-question scores in 0..1: {id: {"exact_match": 0/1, "f1": 0..1}}, in the order of `references`.

    These are the numbers the aggregates average (for v2 after the no-answer threshold), so
    `100 * mean(per_example[...]["f1"]) == squad_vX(...)["f1"]`; a paired bootstrap resamples them.
    """
    if version_2:
        em, f1 = _raw_scores_v2(predictions, references)
        probs = _na_probs_or_zero(na_probs, references)
        has_ans = {qid: bool(golds) for qid, golds in references.items()}
        em = _apply_no_ans_threshold(em, probs, has_ans, na_threshold)
        f1 = _apply_no_ans_threshold(f1, probs, has_ans, na_threshold)
    else:
        em, f1 = _raw_scores_v1(predictions, references)
    return {qid: {"exact_match": em[qid], "f1": f1[qid]} for qid in references}


def squad_v1(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict:
    """Official SQuAD v1.1: {"exact_match": %, "f1": %, "n": number of questions}.

    Every id in `references` counts; one without a prediction scores 0; extra predictions are ignored.
    """
    em, f1 = _raw_scores_v1(predictions, references)
    n = len(references)
    if n == 0:
        raise ValueError("no references to score")
    return {"exact_match": 100.0 * sum(em.values()) / n, "f1": 100.0 * sum(f1.values()) / n, "n": n}


def find_best_thresh(preds, scores, na_probs, has_ans) -> tuple[float, float]:
    """The official sweep: start from "every question answered 'no answer'" and, in increasing order of
    na_prob, let each question keep its prediction; return (best score in %, the na_prob at which it was
    reached).

    `preds` here are the raw predictions (a non-empty prediction on an unanswerable question costs 1 once it
    is kept), `scores` the raw (un-thresholded) per-question scores.
    """
    cur = sum(1 for qid in has_ans if not has_ans[qid])
    best, best_thresh = cur, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur += diff
        if cur > best:
            best, best_thresh = cur, na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def squad_v2(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    na_probs: Mapping[str, float] | None = None,
    na_threshold: float = 1.0,
) -> dict:
    """Official SQuAD v2.0. `references[id]` is the list of gold answer texts, empty for an unanswerable
    question; a prediction of "" means "no answer". `na_probs[id]`: larger = more likely unanswerable (a
    probability, or tunelab's null-score difference); if None, all 0.0 (the official default), so the
    threshold changes nothing.

    Keys, named as the official script prints them: exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total,
    NoAns_exact, NoAns_f1, NoAns_total (HasAns_*/NoAns_* only when such questions exist, as officially),
    best_exact, best_exact_thresh, best_f1, best_f1_thresh (the official script adds these only when given an
    na-prob file; here always, computed with the all-zero default when na_probs is None, as HF's squad_v2
    does), plus exact_match (= exact) for uniformity with squad_v1.
    """
    if not references:
        raise ValueError("no references to score")
    exact_raw, f1_raw = _raw_scores_v2(predictions, references)
    probs = _na_probs_or_zero(na_probs, references)
    has_ans = {qid: bool(golds) for qid, golds in references.items()}
    exact_t = _apply_no_ans_threshold(exact_raw, probs, has_ans, na_threshold)
    f1_t = _apply_no_ans_threshold(f1_raw, probs, has_ans, na_threshold)

    def block(qids):
        total = len(qids)
        return {
            "exact": 100.0 * sum(exact_t[q] for q in qids) / total,
            "f1": 100.0 * sum(f1_t[q] for q in qids) / total,
            "total": total,
        }

    out = block(list(references))
    for prefix, qids in (
        ("HasAns", [q for q in references if has_ans[q]]),
        ("NoAns", [q for q in references if not has_ans[q]]),
    ):
        if qids:
            out.update({f"{prefix}_{k}": v for k, v in block(qids).items()})
    out["best_exact"], out["best_exact_thresh"] = find_best_thresh(predictions, exact_raw, probs, has_ans)
    out["best_f1"], out["best_f1_thresh"] = find_best_thresh(predictions, f1_raw, probs, has_ans)
    out["exact_match"] = out["exact"]
    return out


WH_WORDS = ("what", "which", "who", "whom", "whose", "when", "where", "why", "how")


def question_type(question: str) -> str:
    """The first wh-word of the question ("what", "how", ...), else "other"."""
    for word in re.findall(r"[a-z]+", question.lower()):  # "What's" -> what, s
        if word in WH_WORDS:
            return word
    return "other"
