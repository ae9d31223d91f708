"""The question's words in zero-shot answers (tunelab.tasks.extractive_qa.question_words, and
generate_answers(question_words="avoid")): answers that only repeat the question are answered again, and
every answer loses the question's words and stop words at its ends."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, LlamaForCausalLM

from tunelab.data.squad import SquadExample
from tunelab.tasks.extractive_qa import generation
from tunelab.tasks.extractive_qa.generation import generate_answers, load_prompt
from tunelab.tasks.extractive_qa.question_words import content_words, is_echo, trim_answer


@pytest.mark.parametrize(
    "answer,question,echo",
    [
        ("Antarctica", "Where in Antarctica is Halley Station?", True),
        ("the Halley station", "Where in Antarctica is Halley Station?", True),  # case; stop words
        ("", "Where in Antarctica is Halley Station?", True),
        ("of the", "Who?", True),
        ("Brunt Ice Shelf", "Where in Antarctica is Halley Station?", False),
        ("Antarctica's Brunt Ice Shelf", "Where in Antarctica is Halley Station?", False),
    ],
)
def test_an_echo_says_no_word_the_question_does_not(answer, question, echo):
    assert is_echo(answer, question) is echo


@pytest.mark.parametrize(
    "answer,question,trimmed",
    [
        # the question's words and stop words go from both ends, with the punctuation they leave
        (
            "the Byzantine Emperor Alexios I Komnenos",
            "What Byzantine Emperor's request led to it?",
            "Alexios I Komnenos",
        ),
        ("bringing in the newspaper from the lawn", "Dogs are bringing in what from the lawn?", "newspaper"),
        ("Lagos, and", "Where?", "Lagos"),
        ("forty years", "How many years had passed?", "forty"),  # a quantity stays
        ("Van Halen brothers", "What brothers had classical training?", "Van Halen"),
        # inside an answer they stay; nothing is left: the answer as it was
        ("Loughborough University of Technology", "Was Loughborough University renamed?", "Technology"),
        ("Santa Clara in California", "Who won?", "Santa Clara in California"),
        ("two hundred", "How many?", "two hundred"),
        ("Boston", "Boston is similar to what area?", "Boston"),
        ("", "Who?", ""),
    ],
)
def test_trim_answer_drops_question_and_stop_words_at_the_ends(answer, question, trimmed):
    assert trim_answer(answer, question) == trimmed


def _ex(i: int, question: str, context: str = "Halley Station is on the Brunt Ice Shelf.") -> SquadExample:
    return SquadExample(id=f"q{i}", title="t", context=context, question=question, answers=[])


@pytest.mark.parametrize("version_2", [False, True])
def test_echo_answers_are_answered_again_avoiding_the_question_words(monkeypatch, version_2):
    """One pass as the decoding says; the echoes (v1: empty ones too) get one extractive pass together, in
    whole words avoiding their question's words; then every answer is trimmed. v2: an empty answer is the
    no-answer and stays; a re-answer that is empty keeps the first answer; the no-answer probabilities are
    the first pass's."""
    examples = [
        _ex(0, "Where in Antarctica is Halley Station?"),
        _ex(1, "On what is Halley Station?"),
        _ex(2, "What is Halley?"),
        _ex(3, "Where is the station?"),
    ]
    first = ["Antarctica", "the Brunt Ice Shelf of", "", "station"]
    again = {"q0": "Brunt Ice Shelf", "q2": "a research station", "q3": ""}
    calls = []

    def fake(model, tokenizer, exs, prompt, *, decoding, version_2, avoid_words=None, **kwargs):
        calls.append((decoding, [ex.id for ex in exs], avoid_words))
        na = {ex.id: 0.1 for ex in exs} if version_2 else None
        if avoid_words is not None:
            return (
                [f"again {ex.id}" for ex in exs],
                [again[ex.id] for ex in exs],
                na and dict.fromkeys(na, 0.7),
            )
        return [f"first {ex.id}" for ex in exs], list(first), na

    monkeypatch.setattr(generation, "_generate", fake)
    raw, answers, na = generate_answers(
        None,
        None,
        examples,
        load_prompt(None),
        decoding="extractive",
        version_2=version_2,
        question_words="avoid",
    )
    echoes = ["q0", "q3"] if version_2 else ["q0", "q2", "q3"]
    assert calls[0] == ("extractive", ["q0", "q1", "q2", "q3"], None)
    assert calls[1] == (
        "extractive",
        echoes,
        [content_words(ex.question) for ex in examples if ex.id in echoes],
    )
    assert len(calls) == 2
    assert answers[0] == "Brunt Ice Shelf" and raw[0] == "again q0"
    assert answers[1] == "Brunt Ice Shelf" and raw[1] == "first q1"  # trimmed, not answered again
    assert answers[2] == ("" if version_2 else "research station")  # trimmed ("a" is a stop word)
    assert answers[3] == ("station" if version_2 else "") and raw[3] == (
        "first q3" if version_2 else "again q3"
    )
    assert na == ({ex.id: 0.1 for ex in examples} if version_2 else None)


def test_keep_leaves_answers_as_the_decoding_gave_them(monkeypatch):
    calls = []

    def fake(model, tokenizer, exs, prompt, *, decoding, version_2, **kwargs):
        calls.append(decoding)
        return ["r"] * len(exs), ["the Antarctica"] * len(exs), None

    monkeypatch.setattr(generation, "_generate", fake)
    examples = [_ex(0, "Where in Antarctica is Halley Station?")]
    _, answers, _ = generate_answers(None, None, examples, load_prompt(None), decoding="free")
    assert answers == ["the Antarctica"] and calls == ["free"]
    with pytest.raises(Exception, match="question_words must be one of keep, avoid"):
        generate_answers(None, None, examples, load_prompt(None), question_words="drop")


def test_a_real_answer_avoiding_the_question_holds_its_one_new_word(tiny_model_dir):
    """The tiny random model (which, left alone, starts its extractive answers mid-word: "h"), avoiding the
    question's words: the answer starts at a word the question does not hold (or at a stop word leading into
    one: "by Denver") and stops only after one; trimmed, it is "Denver", the passage's only such word."""
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    context = "Santa Clara hosted the game won by Denver in February"
    questions = [
        "Which team won the game Santa Clara hosted in February?",
        "Who won the game hosted in Santa Clara in February?",
        "Santa Clara hosted the February game won by which team?",
    ]
    examples = [_ex(i, q, context) for i, q in enumerate(questions)]
    kwargs = dict(
        version_2=False,
        batch_size=2,
        max_new_tokens=24,
        progress=False,
        decoding="extractive",
        shots=(),
        kv_cache="dynamic",
        reuse_prefix=True,
    )
    _, free, _ = generation._generate(model, tok, examples, load_prompt(None), **kwargs)
    assert not all(a.startswith(("Denver", "by Denver")) for a in free), free
    _, answers, _ = generation._generate(
        model, tok, examples, load_prompt(None), avoid_words=[content_words(q) for q in questions], **kwargs
    )
    for answer, question in zip(answers, questions, strict=True):
        assert answer.startswith(("Denver", "by Denver")) and answer in context, answer
        assert trim_answer(answer, question) == "Denver"
