"""Classification metrics: macro F1 is averaged over the same classes for every model scored on the same
examples (the classes the gold labels hold), and agrees with the per-class table."""

from __future__ import annotations

import numpy as np
import pytest

from tunelab.metrics import classification_metrics, mcnemar

TREC = ("ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM")


def test_macro_f1_ignores_a_class_the_gold_labels_lack():
    rng = np.random.default_rng(0)
    gold = rng.integers(1, 6, size=200)  # no ABBR, as in the first 200 TREC test questions
    wrong = int(np.flatnonzero(gold != 1)[0])
    into_abbr, into_enty = gold.copy(), gold.copy()
    into_abbr[wrong], into_enty[wrong] = 0, 1  # one mistake each, into the absent class or a present one
    a = classification_metrics(gold, into_abbr, labels=TREC, positive=None)
    b = classification_metrics(gold, into_enty, labels=TREC, positive=None)
    assert a["accuracy"] == b["accuracy"] == 0.995
    assert a["macro_f1"] > 0.99 and b["macro_f1"] > 0.99  # scikit-learn's default: 83.2 for the first
    for m in (a, b):
        shown = [c["f1"] for c in m["per_class"].values() if c["support"]]
        assert m["macro_f1"] == pytest.approx(np.mean(shown))
    assert a["per_class"]["ABBR"]["support"] == 0


def test_macro_f1_of_every_class_present_is_scikit_learns():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(1)
    gold, pred = rng.integers(0, 6, size=300), rng.integers(0, 6, size=300)
    m = classification_metrics(gold, pred, labels=TREC, positive=None)
    assert m["macro_f1"] == pytest.approx(f1_score(gold, pred, average="macro"))


def test_mcnemar_interval_excludes_zero_exactly_when_the_test_is_significant():
    for n in (30, 100, 872):
        for only_a in range(0, 16):
            for only_b in range(0, 16):
                a = np.zeros(n, bool)
                b = np.zeros(n, bool)
                a[:only_a] = True
                b[only_a : only_a + only_b] = True
                m = mcnemar(a, b)
                lo, hi = m["ci95"]
                assert lo <= m["difference"] == (only_b - only_a) / n <= hi
                assert (lo > 0 or hi < 0) == (m["p_value"] < 0.05), (n, only_a, only_b, m)


def test_the_accuracy_interval_is_exact_and_never_a_point():
    """Clopper-Pearson: 16 of 16 right is 79.4-100%, not the [1, 1] a bootstrap of the examples gives."""
    from tunelab.metrics import classification_metrics, proportion_ci

    m = classification_metrics([1] * 16, [1] * 16, labels=("0", "1"))
    lo, hi = m["accuracy_ci95"]
    assert hi == 1.0 and 0.79 < lo < 0.80
    lo, hi = proportion_ci(436, 872)
    assert 0.46 < lo < 0.5 < hi < 0.54 and proportion_ci(0, 0) == [0.0, 0.0]
