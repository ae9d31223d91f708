"""tunelab.tasks.extractive_qa.metrics against the official SQuAD v1.1 / v2.0 evaluation scripts.

The reference below is a compact re-statement of `evaluate-v1.1.py` and `evaluate-v2.0.py`, kept in the shape
those scripts use (a SQuAD `data` list of articles/paragraphs/qas, a `preds` dict, an na-prob dict), so that
comparing on random cases also checks that tunelab's dict API maps onto the official data flow.
"""

from __future__ import annotations

import collections
import math
import re
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.tasks.extractive_qa import metrics as sm

# ------------------------------------------------------------------------------------------------------------
# Reference: the official formulas (re-derived, compact)


def ref_normalize(s):
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def ref_v1_f1(pred, gold):
    p, g = ref_normalize(pred).split(), ref_normalize(gold).split()
    same = sum((collections.Counter(p) & collections.Counter(g)).values())
    if same == 0:
        return 0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def ref_v1_evaluate(dataset, predictions):
    f1 = em = total = 0
    for article in dataset:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    continue
                golds = [a["text"] for a in qa["answers"]]
                pred = predictions[qa["id"]]
                em += max(int(ref_normalize(pred) == ref_normalize(g)) for g in golds)
                f1 += max(ref_v1_f1(pred, g) for g in golds)
    return {"exact_match": 100.0 * em / total, "f1": 100.0 * f1 / total}


def ref_v2_tokens(s):
    return ref_normalize(s).split() if s else []


def ref_v2_f1(gold, pred):
    g, p = ref_v2_tokens(gold), ref_v2_tokens(pred)
    same = sum((collections.Counter(g) & collections.Counter(p)).values())
    if len(g) == 0 or len(p) == 0:
        return int(g == p)
    if same == 0:
        return 0
    prec, rec = same / len(p), same / len(g)
    return 2 * prec * rec / (prec + rec)


def ref_v2_evaluate(dataset, preds, na_probs=None, na_prob_thresh=1.0):
    qas = [qa for art in dataset for para in art["paragraphs"] for qa in para["qas"]]
    has_ans = {qa["id"]: bool(qa["answers"]) for qa in qas}
    exact_raw, f1_raw = {}, {}
    for qa in qas:
        golds = [a["text"] for a in qa["answers"] if ref_normalize(a["text"])] or [""]
        p = preds[qa["id"]]
        exact_raw[qa["id"]] = max(int(ref_normalize(g) == ref_normalize(p)) for g in golds)
        f1_raw[qa["id"]] = max(ref_v2_f1(g, p) for g in golds)
    given_probs = na_probs is not None
    na_probs = na_probs if given_probs else {k: 0.0 for k in preds}

    def thresh(scores):
        return {k: (float(not has_ans[k]) if na_probs[k] > na_prob_thresh else s) for k, s in scores.items()}

    ex_t, f1_t = thresh(exact_raw), thresh(f1_raw)

    def block(ids):
        return {
            "exact": 100.0 * sum(ex_t[k] for k in ids) / len(ids),
            "f1": 100.0 * sum(f1_t[k] for k in ids) / len(ids),
            "total": len(ids),
        }

    out = block(list(ex_t))
    for prefix, ids in (
        ("HasAns", [k for k in has_ans if has_ans[k]]),
        ("NoAns", [k for k in has_ans if not has_ans[k]]),
    ):
        if ids:
            out.update({f"{prefix}_{k}": v for k, v in block(ids).items()})

    def best(scores):
        cur = best_score = sum(1 for k in has_ans if not has_ans[k])
        best_t = 0.0
        for k in sorted(na_probs, key=lambda k: na_probs[k]):
            if k not in scores:
                continue
            cur += scores[k] if has_ans[k] else (-1 if preds[k] else 0)
            if cur > best_score:
                best_score, best_t = cur, na_probs[k]
        return 100.0 * best_score / len(scores), best_t

    out["best_exact"], out["best_exact_thresh"] = best(exact_raw)
    out["best_f1"], out["best_f1_thresh"] = best(f1_raw)
    return out


def as_dataset(references):
    return [
        {
            "paragraphs": [
                {
                    "qas": [
                        {"id": qid, "answers": [{"text": t} for t in golds]}
                        for qid, golds in references.items()
                    ]
                }
            ]
        }
    ]


# ------------------------------------------------------------------------------------------------------------
# Hand-made cases


def test_normalize_answer():
    assert sm.normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert sm.normalize_answer("an apple a day") == "apple day"
    assert sm.normalize_answer("Theatre, another banana") == "theatre another banana"  # whole words only
    assert sm.normalize_answer("A") == ""
    assert sm.normalize_answer("the.") == ""  # punctuation goes first, then the article
    assert sm.normalize_answer("Café\tCRÈME\n") == "café crème"
    assert sm.normalize_answer("“quoted”") == "“quoted”"  # curly quotes are not in string.punctuation


def test_exact_match_articles_and_punctuation():
    assert sm.exact_match_score("the Denver Broncos", "Denver Broncos!") == 1
    assert sm.exact_match_score("Denver", "Denver Broncos") == 0


def test_f1_by_hand():
    assert sm.f1_score_v1("Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)  # p=2/3, r=1
    assert sm.f1_score_v2("Denver Broncos", "Denver Broncos team") == pytest.approx(0.8)
    assert sm.f1_score_v1("a a b", "a b b") == pytest.approx(2 / 3)  # 'a' is an article: 'b' vs 'b b'
    assert sm.f1_score_v1("x x y", "x y y") == pytest.approx(2 / 3)  # Counter overlap: x1 + y1 = 2 of 3
    assert sm.f1_score_v1("", "") == 0 and sm.f1_score_v2("", "") == 1  # the two scripts differ here
    assert sm.f1_score_v1("", "Broncos") == 0 and sm.f1_score_v2("", "Broncos") == 0


def test_v1_multiple_golds_take_max_and_missing_counts_zero():
    refs = {"q1": ["Broncos", "Denver Broncos", "The Denver Broncos"], "q2": ["Santa Clara"], "q3": ["1990s"]}
    preds = {"q1": "denver broncos.", "q2": "Santa Clara, California", "q4": "ignored"}
    out = sm.squad_v1(preds, refs)
    assert out["n"] == 3
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 * (2 / 3) * 1 / (2 / 3 + 1)) / 3)  # q2: p=2/3, r=1
    assert out == pytest.approx({**ref_v1_evaluate(as_dataset(refs), preds), "n": 3})


def test_v1_empty_prediction():
    out = sm.squad_v1({"q": ""}, {"q": ["Broncos"]})
    assert out["exact_match"] == 0 and out["f1"] == 0


def test_v1_rejects_unanswerable_and_str_refs():
    with pytest.raises(ValueError):
        sm.squad_v1({"q": ""}, {"q": []})
    with pytest.raises(TypeError):
        sm.squad_v1({"q": "x"}, {"q": "x"})


def test_v2_no_answer_handling_and_breakdown():
    refs = {"a1": ["Denver Broncos"], "a2": ["1990"], "n1": [], "n2": [], "n3": []}
    preds = {
        "a1": "Denver Broncos",
        "a2": "",
        "n1": "",
        "n2": "something",
        "n3": "the",
    }  # 'the' normalises to ''
    out = sm.squad_v2(preds, refs)
    per = sm.per_example_scores(preds, refs, version_2=True)
    assert per["n1"] == {"exact_match": 1.0, "f1": 1.0}  # "" on unanswerable: correct
    assert per["n2"] == {"exact_match": 0.0, "f1": 0.0}  # an answer on unanswerable: wrong
    assert per["n3"] == {"exact_match": 1.0, "f1": 1.0}  # normalises to no answer
    assert per["a2"] == {"exact_match": 0.0, "f1": 0.0}  # "" on answerable: wrong
    assert out["total"] == 5 and out["HasAns_total"] == 2 and out["NoAns_total"] == 3
    assert out["exact"] == pytest.approx(60.0) and out["exact_match"] == out["exact"]
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["NoAns_exact"] == pytest.approx(200 / 3)
    expected_keys = {
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
        "best_exact",
        "best_exact_thresh",
        "best_f1",
        "best_f1_thresh",
        "exact_match",
    }
    assert set(out) == expected_keys
    assert {k: v for k, v in out.items() if k != "exact_match"} == pytest.approx(
        ref_v2_evaluate(as_dataset(refs), preds)
    )


def test_v2_gold_that_normalises_to_nothing_is_no_answer_but_still_hasans():
    refs = {
        "q": ["The"]
    }  # official: gold becomes [''], but the question counts as HasAns (answers non-empty)
    out = sm.squad_v2({"q": ""}, refs)
    assert out["exact"] == 100.0 and out["HasAns_total"] == 1 and "NoAns_total" not in out


def test_v2_missing_prediction_raises():
    with pytest.raises(ValueError, match="no prediction"):
        sm.squad_v2({}, {"q": []})


def test_v2_best_threshold_by_hand():
    refs = {"q1": ["yes"], "q2": ["right"], "q3": [], "q4": []}
    preds = {"q1": "yes", "q2": "wrong", "q3": "x", "q4": "y"}
    na = {"q1": 0.1, "q2": 0.6, "q3": 0.9, "q4": 0.3}
    out = sm.squad_v2(preds, refs, na_probs=na)
    # start: all predicted no-answer = 2 of 4 right; +q1 (0.1) -> 3 (best, thresh 0.1); +q4 -> 2; +q2 -> 2;
    # +q3 -> 1
    assert out["best_exact"] == pytest.approx(75.0) and out["best_exact_thresh"] == 0.1
    assert out["best_f1"] == pytest.approx(75.0) and out["best_f1_thresh"] == 0.1
    assert out["exact"] == pytest.approx(25.0)  # default threshold 1.0: nothing is turned into no-answer
    out = sm.squad_v2(preds, refs, na_probs=na, na_threshold=0.5)
    # q2 (0.6) and q3 (0.9) become no-answer: q1 1, q2 0, q3 1, q4 0
    assert out["exact"] == pytest.approx(50.0)
    assert out == pytest.approx({**ref_v2_evaluate(as_dataset(refs), preds, na, 0.5), "exact_match": 50.0})


def test_per_example_scores_average_to_aggregate():
    refs = {"q1": ["a cat"], "q2": ["dog house", "house"], "q3": ["fish"]}
    preds = {"q1": "cat", "q2": "the dog", "q3": "bird"}
    per = sm.per_example_scores(preds, refs)
    agg = sm.squad_v1(preds, refs)
    assert list(per) == list(refs)
    assert 100 * sum(p["f1"] for p in per.values()) / 3 == pytest.approx(agg["f1"])
    assert 100 * sum(p["exact_match"] for p in per.values()) / 3 == pytest.approx(agg["exact_match"])


# ------------------------------------------------------------------------------------------------------------
# Random cases against the reference

WORDS = [
    "the",
    "The",
    "a",
    "an",
    "An",
    "Denver",
    "denver",
    "Broncos",
    "broncos!",
    "1990",
    "1,990",
    "café",
    "CAFÉ",
    "中文",
    "x",
    "x.",
    "-",
    "'s",
    "theatre",
    "and",
    "(b)",
    "😀",
]
answer_st = st.lists(st.sampled_from(WORDS), min_size=0, max_size=5).map(
    lambda ws: (" " * 2).join(ws) if len(ws) % 3 == 0 else " ".join(ws)
)


@st.composite
def qa_cases(draw, unanswerable=True):
    n = draw(st.integers(1, 8))
    refs, preds, na = {}, {}, {}
    for i in range(n):
        golds = draw(st.lists(answer_st, min_size=0 if unanswerable else 1, max_size=3))
        refs[f"q{i}"] = golds
        preds[f"q{i}"] = draw(
            st.one_of(st.just(""), answer_st, st.sampled_from(golds) if golds else answer_st)
        )
        na[f"q{i}"] = draw(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 1.0, 2.5]))
    return refs, preds, na


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qa_cases(unanswerable=False), st.booleans())
def test_v1_matches_reference_on_random_cases(case, drop_one):
    refs, preds, _ = case
    if drop_one:
        preds.pop(next(iter(preds)))
    out = sm.squad_v1(preds, refs)
    ref = ref_v1_evaluate(as_dataset(refs), preds)
    assert out["exact_match"] == pytest.approx(ref["exact_match"])
    assert out["f1"] == pytest.approx(ref["f1"])
    assert out["n"] == len(refs)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qa_cases(), st.sampled_from([None, 0.0, 0.3, 1.0]))
def test_v2_matches_reference_on_random_cases(case, threshold):
    refs, preds, na = case
    if threshold is None:
        out, ref = sm.squad_v2(preds, refs), ref_v2_evaluate(as_dataset(refs), preds)
    else:
        out = sm.squad_v2(preds, refs, na_probs=na, na_threshold=threshold)
        ref = ref_v2_evaluate(as_dataset(refs), preds, na, threshold)
    assert out.pop("exact_match") == out["exact"]
    assert set(out) == set(ref)
    for k in ref:
        assert out[k] == pytest.approx(ref[k]), k
    per = sm.per_example_scores(
        preds,
        refs,
        version_2=True,
        na_probs=None if threshold is None else na,
        na_threshold=1.0 if threshold is None else threshold,
    )
    assert 100 * sum(p["f1"] for p in per.values()) / len(per) == pytest.approx(out["f1"])
    assert all(0.0 <= p["f1"] <= 1.0 and p["exact_match"] in (0.0, 1.0) for p in per.values())


# ------------------------------------------------------------------------------------------------------------
# A maintained implementation (a dev dependency): equal to ours on v1.1 cases where both definitions agree


def test_matches_torchmetrics_squad():
    import torchmetrics.functional.text as tm

    cases = [
        ({"q": ["Denver Broncos", "Broncos"]}, {"q": "the Denver Broncos team"}),
        ({"q": ["1,990"], "r": ["café au lait"]}, {"q": "1990", "r": "Café"}),
        ({"q": ["x y y"]}, {"q": "x x y"}),
    ]
    for refs, preds in cases:
        ours = sm.squad_v1(preds, refs)
        theirs = tm.squad(
            [{"prediction_text": p, "id": k} for k, p in preds.items()],
            [{"answers": {"answer_start": [0] * len(g), "text": list(g)}, "id": k} for k, g in refs.items()],
        )
        assert ours["exact_match"] == pytest.approx(float(theirs["exact_match"]), abs=1e-4)
        assert ours["f1"] == pytest.approx(float(theirs["f1"]), abs=1e-4)


def test_nan_free_on_empty_everything():
    out = sm.squad_v2({"q": ""}, {"q": [""]})
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in out.values())


def test_v2_console_line_shows_only_the_kinds_the_questions_hold():
    """A v2.0 subset with no unanswerable question has no NoAns F1: the line leaves it out, never `nan`."""
    from tunelab.tasks import get_task

    refs = {"q1": ["Denver Broncos"], "q2": []}
    both = sm.squad_v2({"q1": "Denver Broncos", "q2": ""}, refs)
    only = sm.squad_v2({"q1": "Denver Broncos"}, {"q1": ["Denver Broncos"]})
    task = get_task("squad_v2")
    line = task.summary_line({**both, "mode": "zeroshot", "n": 2})
    assert "HasAns F1 100.00, NoAns F1 100.00, best F1" in line
    line = task.summary_line({**only, "mode": "finetuned", "n": 1})
    assert "SQuAD v2.0 fine-tuned: EM 100.00" in line and "(HasAns F1 100.00, best F1" in line
    assert "NoAns" not in line and "nan" not in line
