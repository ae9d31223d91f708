"""Grounded zero-shot answers (tunelab.tasks.extractive_qa.generation): a free answer becomes the passage span
closest to it; answers sharing no word with the passage are answered again with extractive decoding."""

from __future__ import annotations

import pytest

from tunelab.data.squad import SquadExample
from tunelab.tasks.extractive_qa import generation
from tunelab.tasks.extractive_qa.generation import ground_answer, load_prompt
from tunelab.tasks.extractive_qa.metrics import f1_score_v1

CONTEXT = (
    "The Denver Broncos beat the Carolina Panthers 24–10 at Levi's Stadium in Santa Clara, California. "
    "Von Miller, the game's MVP, forced two fumbles."
)


@pytest.mark.parametrize(
    "answer,span",
    [
        ("Denver Broncos", "Denver Broncos"),  # already a span: unchanged
        ("Mumbai's Levi's Stadium", "Levi's Stadium"),  # the words it got right
        ("Dreem Miller", "Miller"),  # F1 0.67 (precision 1, recall 1/2) beats "Von Miller"'s 0.5
        ("the Carolina Panthers team", "Carolina Panthers"),  # articles do not count
        ("california", "California"),  # case
        ("Santa Clara California", "Santa Clara, California"),  # a span may hold punctuation inside
        ("Von Miller MVP", "Von Miller, the game's MVP"),  # but not around it ("MVP,")
    ],
)
def test_ground_answer_takes_the_closest_passage_span(answer, span):
    assert ground_answer(answer, CONTEXT) == span
    assert span in CONTEXT


def test_ground_answer_maximises_f1_among_spans_and_prefers_the_shorter():
    answer = "Carolina Panthers forced fumbles"
    got = ground_answer(answer, CONTEXT)
    words = CONTEXT.split()
    best = max(
        f1_score_v1(" ".join(words[i:j]), answer)
        for i in range(len(words))
        for j in range(i + 1, min(len(words), i + len(answer.split()) + 2) + 1)
    )
    assert f1_score_v1(got, answer) == pytest.approx(best)
    # a tie between "Broncos" and "the Denver Broncos" goes to the shorter, then the earlier
    assert ground_answer("Broncos team", CONTEXT) == "Broncos"
    assert ground_answer("two", "one two, two three") == "two"


def test_ground_answer_keeps_within_the_slack():
    context = "alpha beta delta gamma"  # "alpha beta delta": F1 0.8; "alpha": 0.67; "alpha beta": 0.5
    assert ground_answer("alpha delta", context, slack=0) == "alpha"
    assert ground_answer("alpha delta", context, slack=1) == "alpha beta delta"


@pytest.mark.parametrize("answer", ["Dallas Cowboys", "", "An.", "...", "a quarterback"])
def test_ground_answer_gives_none_without_a_shared_word(answer):
    assert ground_answer(answer, CONTEXT) is None


def _ex(i: int, context: str) -> SquadExample:
    return SquadExample(id=f"q{i}", title="t", context=context, question="Who?", answers=[])


@pytest.mark.parametrize("version_2", [False, True])
def test_grounded_decoding_grounds_free_answers_and_asks_extractive_for_the_rest(monkeypatch, version_2):
    """generate_answers(decoding="grounded"): one free pass; answers with a shared word become their span;
    the others (and v1's empty ones) get one extractive pass together; v2's empty answer is the no-answer."""
    examples = [_ex(i, CONTEXT) for i in range(4)]
    free = ["Mumbai's Levi's Stadium", "Dallas Cowboys", "", "Von Miller"]
    calls = []

    def fake(model, tokenizer, exs, prompt, *, decoding, version_2, **kwargs):
        calls.append((decoding, [ex.id for ex in exs]))
        if decoding == "free":
            na = (
                {ex.id: 0.9 if a == "" else 0.1 for ex, a in zip(exs, free, strict=True)}
                if version_2
                else None
            )
            return [f'{a}"' for a in free], list(free), na
        na = dict.fromkeys((ex.id for ex in exs), 0.2) if version_2 else None
        return [f"extractive {ex.id}" for ex in exs], ["Santa Clara"] * len(exs), na

    monkeypatch.setattr(generation, "_generate", fake)
    raw, answers, na = generation.generate_answers(
        None, None, examples, load_prompt(None), decoding="grounded", version_2=version_2
    )
    again = ["q1"] if version_2 else ["q1", "q2"]
    assert calls == [("free", ["q0", "q1", "q2", "q3"]), ("extractive", again)]
    assert answers[0] == "Levi's Stadium" and answers[3] == "Von Miller"
    assert answers[1] == "Santa Clara" and raw[1] == "extractive q1"
    assert answers[2] == ("" if version_2 else "Santa Clara")
    if version_2:
        assert na == {"q0": 0.1, "q1": 0.2, "q2": 0.9, "q3": 0.1}
    else:
        assert na is None
