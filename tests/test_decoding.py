"""Extractive decoding (tunelab.decoding): generation constrained to spans of the passage.

The default tests use the tiny random Llama of conftest.py, whose preferences are arbitrary: whatever it
prefers, a constrained answer must be a piece of its own passage followed by a stop. The allowed sets are
checked against a brute-force reference over the whole (400-token) vocabulary. The slow test runs the real
SmolLM2 on the first Super Bowl 50 questions of the official dev set.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
from transformers import AutoTokenizer, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from tunelab.decoding import encode_with_passage, extractive_processor, stop_token_ids

PASSAGES = [
    "The Denver Broncos won Super Bowl 50 in Santa Clara .",
    "a good and great film , truly wonderful",
    "the of and to in is was it that",
    "Review : positive negative Sentiment : movie review sentiment",
]
STOPS = ("\n", '"')
PREFIX = 'The answer is "'


def only(text: str, context: str) -> int:
    """Where `context` is in `text`, which holds it once (what `QAPrompt.render_located` says for tunelab's
    own prompts)."""
    assert text.count(context) == 1, (text, context)
    return text.index(context)


def chat_prompt(tok, context: str, question: str = "Who won ?") -> str:
    user = f"{context}\n\nAnswer with a span of the passage.\n\nQuestion: {question}"
    return (
        tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        + PREFIX
    )


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, tok


def generate(
    model,
    tok,
    contexts,
    *,
    constrained=True,
    before=(),
    max_new_tokens=64,
    extra_answers=(),
    num_beams=1,
    processor=None,
):
    """Greedy answers batched with left padding, as tunelab's zero-shot SQuAD does. Returns (new token ids
    per row, the processor used, its passages)."""
    texts = [chat_prompt(tok, c) for c in contexts]
    enc = [encode_with_passage(tok, t, c, at=only(t, c)) for t, c in zip(texts, contexts, strict=True)]
    width = max(len(p) for p, _ in enc)
    ids = torch.full((len(enc), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for row, (p, _) in enumerate(enc):
        ids[row, width - len(p) :] = torch.tensor(p)
        mask[row, width - len(p) :] = 1
    procs = list(before)
    if constrained:
        processor = processor or extractive_processor(
            tok,
            [q for _, q in enc],
            prompt_length=width,
            stop_strings=STOPS,
            extra_answers=extra_answers,
            rows_per_passage=num_beams,
        )
        procs.append(processor)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            stop_strings=list(STOPS),
            tokenizer=tok,
            pad_token_id=tok.pad_token_id,
            logits_processor=LogitsProcessorList(procs),
        )
    return [row.tolist() for row in out[:, width:]], processor, [q for _, q in enc]


def split_answer(tok, new_ids):
    """(answer text, the stop token or None): the generation up to its first stop token."""
    stops = set(stop_token_ids(tok, STOPS).tolist())
    for k, t in enumerate(new_ids):
        if t in stops and k > 0:
            return tok.decode(new_ids[:k]), t
    return tok.decode(new_ids), None


def reference_allowed(tok, passage_ids, answer: bytes, extra_answers=()) -> set[int]:
    """Brute force over the vocabulary: the tokens t such that answer + t is the passage's text from the start
    of one of its tokens (or one byte later, after that token's leading space), or a prefix of an extra
    answer; plus every stop once the answer is not empty."""
    text, starts = b"", []
    for t in passage_ids:
        piece = tok.decode([t]).encode()
        starts.append(len(text))
        if piece[:1] == b" " and piece[1:2] not in (b"", b" "):
            starts.append(len(text) + 1)
        text += piece
    stops = set(stop_token_ids(tok, STOPS).tolist())
    special = set(tok.all_special_ids)
    allowed = set(stops) if answer else set()
    for t in range(len(tok)):
        if t in special or (t in stops and not answer):
            continue
        cand = answer + tok.decode([t]).encode()
        if any(s in cand.decode(errors="replace") for s in STOPS) and t not in stops:
            continue  # a token holding a stop string after its start
        if any(text[s : s + len(cand)] == cand for s in starts) or any(
            w.encode()[: len(cand)] == cand for w in extra_answers
        ):
            allowed.add(t)
    return allowed


class Discourage(LogitsProcessor):
    """Lowers the scores of some tokens (so that the constraint alone decides when they are written)."""

    def __init__(self, ids):
        self.ids = torch.as_tensor(ids)

    def __call__(self, input_ids, scores):
        scores[:, self.ids] -= 1000.0
        return scores


def allowed_set(proc, row: int) -> set[int]:
    return set(proc.allowed(row).tolist())


# ------------------------------------------------------------------------------------------------------------


def test_encode_with_passage_finds_the_passage_tokens_of_the_prompt(tiny):
    _, tok = tiny
    for c in PASSAGES:
        text = chat_prompt(tok, c)
        prompt, passage = encode_with_passage(tok, text, c, at=only(text, c))
        assert prompt == tok(text, add_special_tokens=False).input_ids
        assert tok.decode(passage) == c
        # contiguous in it
        at = next(i for i in range(len(prompt)) if prompt[i : i + len(passage)] == passage)
        assert at > 0


def test_a_passage_after_a_space_keeps_its_first_word(tiny):
    # the plain template's "Background: {context}": byte-level BPE gives " Denver" the offset of its space
    _, tok = tiny
    for c in (*PASSAGES, "Denver"):
        text = f"Title: x\n\nBackground: {c}\n\nQuestion: Who won?\n\nAnswer:"
        prompt, passage = encode_with_passage(tok, text, c, at=only(text, c), add_special_tokens=True)
        assert prompt == tok(text).input_ids
        assert tok.decode(passage).lstrip() == c  # " Denver" or " " + "Denver", as the tokenizer splits it
        assert any(prompt[i : i + len(passage)] == passage for i in range(len(prompt)))
        proc = extractive_processor(tok, [passage], prompt_length=len(prompt))
        assert passage[0] in allowed_set(proc, 0)


def test_stop_tokens_are_the_tokens_that_start_with_a_stop_string(tiny):
    _, tok = tiny
    stops = set(stop_token_ids(tok, STOPS).tolist())
    expected = {t for t in range(len(tok)) if tok.decode([t]).lstrip(" \t").startswith(STOPS)}
    assert stops == expected | {tok.eos_token_id}
    assert tok.convert_tokens_to_ids('"') in stops and tok.convert_tokens_to_ids("Ċ") in stops


def test_hand_built_logits_pick_the_best_allowed_token(tiny):
    _, tok = tiny
    passage = tok.encode(PASSAGES[0], add_special_tokens=False)  # The| Den|ver| Bron|cos| won ...
    proc = extractive_processor(tok, [passage], prompt_length=3)
    vocab = len(tok)
    film, den, sp_den, ver, quote = (
        tok.convert_tokens_to_ids(t) for t in ("Ġfilm", "Den", "ĠDen", "ver", '"')
    )
    scores = torch.zeros(1, vocab)
    scores[0, film] = 9.0  # the model's favourite is not in the passage
    scores[0, quote] = 8.0  # nor may the answer be empty
    scores[0, den] = 5.0  # "Den" is " Den" without its space: allowed first
    scores[0, sp_den] = 4.0
    out = proc(torch.tensor([[7, 7, 7]]), scores.clone())
    assert out[0].argmax().item() == den
    assert out[0, film] == -torch.inf and out[0, quote] == -torch.inf
    assert out[0, den] == 5.0 and out[0, sp_den] == 4.0  # allowed scores are left as they were
    assert torch.isfinite(out[0]).sum() == len(allowed_set(proc, 0))
    assert allowed_set(proc, 0) == reference_allowed(tok, passage, b"")
    r = tok.convert_tokens_to_ids("r")  # only inside "Clara": not an answer's first token ...
    assert r not in allowed_set(proc, 0)

    # after "Den" only "ver" (or a spelling of it) and the stops
    out = proc(torch.tensor([[7, 7, 7, den]]), scores.clone())
    assert out[0].argmax().item() == quote  # stopping is now allowed, and is the best allowed
    assert allowed_set(proc, 0) == reference_allowed(tok, passage, b"Den")
    assert ver in allowed_set(proc, 0) and film not in allowed_set(proc, 0)
    scores[0, quote] = 0.0
    scores[0, ver] = 1.0
    assert proc(torch.tensor([[7, 7, 7, den]]), scores.clone())[0].argmax().item() == ver

    # ... but "r" may continue "Cl" + "a"
    a, cl = tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("Cl")
    proc(torch.tensor([[7, 7, 7, cl, a]]), scores.clone())  # the processor resynchronises on a new answer
    assert r in allowed_set(proc, 0)
    assert allowed_set(proc, 0) == reference_allowed(tok, passage, b"Cla")


def test_allowed_sets_match_brute_force_along_random_answers(tiny):
    _, tok = tiny
    rng = np.random.default_rng(0)
    for c in PASSAGES:
        passage = tok.encode(c, add_special_tokens=False)
        proc = extractive_processor(tok, [passage], prompt_length=1)
        answer_ids: list[int] = []
        stops = set(stop_token_ids(tok, STOPS).tolist())
        for _ in range(6):
            proc(torch.tensor([[5] + answer_ids]), torch.zeros(1, len(tok)))
            allowed = allowed_set(proc, 0)
            assert allowed == reference_allowed(tok, passage, tok.decode(answer_ids).encode())
            choices = sorted(allowed - stops)
            if not choices:
                break
            answer_ids.append(int(rng.choice(choices)))
        assert tok.decode(answer_ids) in c


def test_tiny_model_answers_are_spans_of_their_own_passages(tiny):
    model, tok = tiny
    free, _, _ = generate(model, tok, PASSAGES, constrained=False)
    # unconstrained it strays
    assert any(split_answer(tok, ids)[0] not in c for ids, c in zip(free, PASSAGES, strict=True))
    new, _, passages = generate(model, tok, PASSAGES)
    stops = set(stop_token_ids(tok, STOPS).tolist())
    for ids, c, passage in zip(new, PASSAGES, passages, strict=True):
        answer, stop = split_answer(tok, ids)
        assert answer and answer in c, (answer, c)
        assert stop is not None  # no passage is 64 bytes long: every row had to stop before max_new_tokens
        k = ids.index(stop, 1)
        assert all(t == tok.eos_token_id for t in ids[k + 1 :])  # after the stop, EOS / padding only
        # the first token starts at a passage token, or just after its space
        assert any(
            tok.decode(passage[j:]).startswith(answer) or tok.decode(passage[j:]).startswith(" " + answer)
            for j in range(len(passage))
        )
        assert all(t not in stops for t in ids[:k])


def test_a_batch_with_different_passages_equals_each_row_alone(tiny):
    model, tok = tiny
    contexts = [PASSAGES[0], "film", PASSAGES[1], PASSAGES[3]]  # "film" is 4 bytes: that row stops early
    late = [Discourage(stop_token_ids(tok, STOPS))]  # the others go on until their passage ends
    batch, _, _ = generate(model, tok, contexts, before=late)
    lengths = []
    for row, c in enumerate(contexts):
        alone, _, _ = generate(model, tok, [c], before=late)
        a, b = split_answer(tok, batch[row]), split_answer(tok, alone[0])
        assert a == b, (c, a, b)
        lengths.append(batch[row].index(a[1], 1))
    # "film" is 4 bytes: that row had to stop at its end, within 4 tokens, while another went on
    assert "film".endswith(split_answer(tok, batch[1])[0])
    assert lengths[1] <= 4 < max(lengths)


def test_a_stopped_row_writes_only_eos_and_leaves_the_others_alone(tiny):
    _, tok = tiny
    passages = [tok.encode(c, add_special_tokens=False) for c in PASSAGES[:2]]
    both = extractive_processor(tok, passages, prompt_length=2)
    second = extractive_processor(tok, passages[1:], prompt_length=2)
    quote = tok.convert_tokens_to_ids('"')
    the, a_, good = (tok.convert_tokens_to_ids(t) for t in ("The", "a", "Ġgood"))
    scores = torch.randn(2, len(tok))
    both(torch.tensor([[9, 9, the, quote], [9, 9, a_, good]]), scores.clone())
    assert allowed_set(both, 0) == {tok.eos_token_id}
    second(torch.tensor([[9, 9, a_, good]]), scores[1:].clone())
    assert allowed_set(both, 1) == allowed_set(second, 0)
    eos = tok.eos_token_id
    out = both(
        torch.tensor([[9, 9, the, quote, eos], [9, 9, a_, good, tok.convert_tokens_to_ids("Ġand")]]),
        scores.clone(),
    )
    assert out[0].argmax().item() == eos and torch.isfinite(out[0]).sum() == 1


def test_no_answer_word_is_allowed_only_as_an_option(tiny):
    model, tok = tiny
    word = tok.encode("unanswerable", add_special_tokens=False)  # u|n|an|sw|er|a|bl|e

    class Push(LogitsProcessor):
        """Makes the model want to write "unanswerable" (so only the constraint can stop it)."""

        def __init__(self, start):
            self.start = start

        def __call__(self, input_ids, scores):
            k = input_ids.shape[1] - self.start
            if k < len(word):
                scores[:, word[k]] += 1000.0
            return scores

    contexts = [PASSAGES[0], PASSAGES[2]]
    width = max(len(tok(chat_prompt(tok, c), add_special_tokens=False).input_ids) for c in contexts)
    with_word, _, _ = generate(model, tok, contexts, before=[Push(width)], extra_answers=["unanswerable"])
    for ids in with_word:
        assert split_answer(tok, ids) == ("unanswerable", split_answer(tok, ids)[1])
        assert split_answer(tok, ids)[1] is not None  # the word is a whole answer: then a stop
    without, _, _ = generate(model, tok, contexts, before=[Push(width)])
    for ids, c in zip(without, contexts, strict=True):
        answer, _ = split_answer(tok, ids)
        assert answer != "unanswerable" and answer in c


def test_beam_search_and_a_reused_processor_stay_on_the_passage(tiny):
    model, tok = tiny
    beams, proc, _ = generate(model, tok, PASSAGES[:2], num_beams=2)
    for ids, c in zip(beams, PASSAGES[:2], strict=True):
        answer, _ = split_answer(tok, ids)
        assert answer and answer in c
    first, proc, _ = generate(model, tok, PASSAGES[:2])
    again, _, _ = generate(model, tok, PASSAGES[:2], processor=proc)  # state reset by the new prompt
    assert [split_answer(tok, x) for x in first] == [split_answer(tok, x) for x in again]


def test_a_batch_of_the_wrong_size_is_refused(tiny):
    _, tok = tiny
    proc = extractive_processor(tok, [tok.encode("film", add_special_tokens=False)], prompt_length=1)
    with pytest.raises(ValueError, match="built for 1 rows"):
        proc(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, len(tok)))


@pytest.mark.parametrize(
    "context,question",
    [
        ("art", "Who started it ?"),  # "art" also inside "started" and "<|im_start|>", after the passage
        ("film", "Is the film good ?"),  # the question holds the passage again, after a space
    ],
)
def test_the_passage_is_read_where_the_template_put_it(tiny, monkeypatch, context, question):
    from tunelab.data.squad import SquadExample
    from tunelab.tasks.extractive_qa import generation

    model, tok = tiny
    prompt = generation.load_prompt("chat")
    ex = SquadExample("q", "t", context, question, [])
    seen: list = []
    real = generation.extractive_processor
    monkeypatch.setattr(
        generation,
        "extractive_processor",
        lambda t, passages, **kw: seen.extend(passages) or real(t, passages, **kw),
    )
    _, answers, _ = generation.generate_answers(
        model, tok, [ex], prompt, decoding="extractive", max_new_tokens=4, progress=False
    )
    assert [tok.decode(p) for p in seen] == [context]  # the passage's own tokens, not the question's
    assert answers[0] in context
    text, (a, b) = prompt.render_located(tok, ex)
    assert text == prompt.render(tok, ex) and text[a:b] == context
    assert text.rfind(context) > a  # a search for the last copy would find another one


def test_a_passage_without_tokens_of_its_own_is_an_internal_error(tiny):
    _, tok = tiny
    text = "a truly wonderful film"
    with pytest.raises(RuntimeError, match="no token of the prompt lies inside its passage"):
        encode_with_passage(tok, text, "onder", at=text.index("onder"))  # inside the token " wonder"
    with pytest.raises(ValueError, match="not at character 0"):
        encode_with_passage(tok, text, "film", at=0)


def test_answers_start_and_stop_only_on_character_boundaries(tiny):
    from tunelab.decoding import token_bytes

    _, tok = tiny
    pieces = token_bytes(tok)
    c = "東京 😀 and café"
    passage = tok.encode(c, add_special_tokens=False)
    assert b"\x9d" in [pieces[t] for t in passage]  # a character split across tokens
    proc = extractive_processor(tok, [passage], prompt_length=1)
    stops = set(stop_token_ids(tok, STOPS).tolist())

    def whole(answer: bytes) -> bool:
        try:
            answer.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True

    frontier, checked = [[]], 0
    for _ in range(3):  # every answer of up to 3 tokens the constraint allows
        following = []
        for answer_ids in frontier:
            proc(torch.tensor([[5] + answer_ids]), torch.zeros(1, len(tok)))
            allowed = allowed_set(proc, 0)
            answer = b"".join(pieces[t] for t in answer_ids)
            if answer_ids:  # a stop exactly where the answer ends a character
                assert bool(allowed & stops) == whole(answer), answer
                checked += 1
            for t in sorted(allowed - stops):
                longer = answer + pieces[t]
                assert longer in c.encode() and longer[0] & 0xC0 != 0x80, longer  # never a continuation byte
                following.append(answer_ids + [t])
        frontier = following
    assert checked > 20


# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_super_bowl_answers_are_passage_spans(capsys):
    from tunelab.data.squad import read_squad
    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.tasks.extractive_qa.metrics import exact_match_score

    examples = read_squad("/work/shared/data/squad/v1.1-dev.json")[:10]  # Super Bowl 50
    assert examples[0].question == "Which NFL team represented the AFC at Super Bowl 50?"
    tok = load_tokenizer("smollm2-135m", padding_side="left")
    model = load_causal_lm("smollm2-135m").eval()

    def answers(constrained):
        texts = [chat_prompt_smol(tok, ex) for ex in examples]
        enc = [
            encode_with_passage(tok, t, ex.context, at=only(t, ex.context))
            for t, ex in zip(texts, examples, strict=True)
        ]
        width = max(len(p) for p, _ in enc)
        ids = torch.full((len(enc), width), tok.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, (p, _) in enumerate(enc):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        procs = [extractive_processor(tok, [q for _, q in enc], prompt_length=width)] if constrained else []
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=32,
                stop_strings=list(STOPS),
                tokenizer=tok,
                pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList(procs),
            )
        raw = [tok.decode(row[width:], skip_special_tokens=True) for row in out]
        return [r.split('"')[0].split("\n")[0] for r in raw]

    free, extractive = answers(False), answers(True)
    for ex, a in zip(examples, extractive, strict=True):
        assert a and a in ex.context, (ex.question, a)
    em = {
        name: sum(
            max(exact_match_score(a, g["text"]) for g in ex.answers)
            for ex, a in zip(examples, got, strict=True)
        )
        for name, got in (("free", free), ("extractive", extractive))
    }
    with capsys.disabled():
        print(f"\nSmolLM2 on the first {len(examples)} dev questions, exact matches: {em}")
        for ex, f, e in zip(examples, free, extractive, strict=True):
            print(f"  {ex.question!r}: gold {ex.answers[0]['text']!r}, free {f!r}, extractive {e!r}")


def chat_prompt_smol(tok, ex) -> str:
    """tunelab's default zero-shot SQuAD prompt (tasks/extractive_qa/generation.py, template "chat"), written
    out here."""
    user = (
        f"{ex.context}\n\nAnswer the question with a short span copied exactly from the passage above. "
        f"\n\nQuestion: {ex.question.strip()}"
    )
    return (
        tok.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        + PREFIX
    )


def reference_allowed_in_words(tok, passage_ids, answer: bytes, avoid: set[str]) -> set[int]:
    """Brute force for `whole_words` (and `avoid_words`): reference_allowed's tokens, from the starts that
    are no word's inside, no avoided word, no stop word leading into one, nor the space before those; stops
    once one occurrence of the answer ends a word (and holds a new word: neither avoided nor a stop word),
    or when nothing continues it. ASCII passages: a byte is a character."""
    text = tok.decode(passage_ids)
    starts, at = [], 0
    for t in passage_ids:
        piece = tok.decode([t])
        starts.append(at)
        if piece[:1] == " " and piece[1:2] not in ("", " "):
            starts.append(at + 1)
        at += len(piece)
    words = [(m.start(), m.end(), m.group().lower()) for m in re.finditer(r"\w+", text)]
    banned, leads_in = set(), False
    for a, b, w in reversed(words):
        leads_in = bool(avoid) and (w in avoid or (leads_in and w in ENGLISH_STOP_WORDS))
        if leads_in:
            banned |= set(range(a - 1 if a and text[a - 1] == " " else a, b))
    inside = {p for a, b, _ in words for p in range(a + 1, b)}
    starts = [s for s in starts if s not in banned | inside] or starts
    new = {p for a, b, w in words if w not in avoid and w not in ENGLISH_STOP_WORDS for p in range(a, b)}
    word_bytes = {p for a, b, _ in words for p in range(a, b)}
    stops = set(stop_token_ids(tok, STOPS).tolist())
    special = set(tok.all_special_ids)
    allowed = set()
    for t in range(len(tok)):
        if t in special or t in stops:
            continue
        cand = answer + tok.decode([t]).encode()
        if any(s in cand.decode(errors="replace") for s in STOPS):
            continue
        if any(text.encode()[s : s + len(cand)] == cand for s in starts):
            allowed.add(t)
    if answer:
        ends = [s + len(answer) for s in starts if text.encode()[s : s + len(answer)] == answer]
        if not allowed or any(
            e not in word_bytes and (not avoid or new & set(range(e - len(answer), e))) for e in ends
        ):
            allowed |= stops
    return allowed


@pytest.mark.parametrize(
    "context,avoid",
    [
        ("The Denver Broncos won Super Bowl 50 in Santa Clara .", set()),
        ("The Denver Broncos won Super Bowl 50 in Santa Clara .", {"denver", "bowl", "clara"}),
        ("Santa Clara hosted the game won by Denver in February", {"santa", "clara", "game", "february"}),
        ("the of and to in is was it that", {"was"}),
        ("a good and great film , truly wonderful", {"good", "great", "film", "truly", "wonderful"}),
    ],
)
def test_whole_words_and_avoided_words_match_brute_force_along_random_answers(tiny, context, avoid):
    """extractive_processor(whole_words=True, avoid_words=...): the allowed sets, step by step along random
    answers, are the brute-force reference's; a passage of only avoided words keeps its starts."""
    _, tok = tiny
    passage = tok.encode(context, add_special_tokens=False)
    stops = set(stop_token_ids(tok, STOPS).tolist())
    rng = np.random.default_rng(1)
    for _ in range(12):
        proc = extractive_processor(
            tok, [passage], prompt_length=1, stop_strings=STOPS, whole_words=True, avoid_words=[avoid]
        )
        answer_ids: list[int] = []
        for _ in range(8):
            proc(torch.tensor([[5] + answer_ids]), torch.zeros(1, len(tok)))
            allowed = allowed_set(proc, 0)
            want = reference_allowed_in_words(tok, passage, tok.decode(answer_ids).encode(), avoid)
            assert allowed == want, (tok.decode(answer_ids), allowed ^ want)
            choices = sorted(allowed - stops)
            if not choices or (answer_ids and allowed & stops and rng.random() < 0.3):
                break
            answer_ids.append(int(rng.choice(choices)))
        assert tok.decode(answer_ids) in context


def test_avoided_words_cannot_start_or_make_up_an_answer(tiny):
    """A hand-checked case: the first token may start only at "by" or "Denver" (or the space before them,
    or without it), never at "game" or at "the" before it; after "by" no stop until "Denver" is written."""
    _, tok = tiny
    context = "Santa Clara hosted the game won by Denver"
    passage = tok.encode(context, add_special_tokens=False)
    avoid = [{"santa", "clara", "hosted", "game", "won"}]
    proc = extractive_processor(tok, [passage], prompt_length=1, whole_words=True, avoid_words=avoid)
    proc(torch.tensor([[5]]), torch.zeros(1, len(tok)))
    firsts = {tok.decode([t]) for t in allowed_set(proc, 0)}
    assert {f.lstrip()[:1] for f in firsts} == {"", "b", "D"}, firsts
    by = tok.encode(" by", add_special_tokens=False)
    proc(torch.tensor([[5, *by]]), torch.zeros(1, len(tok)))
    assert not allowed_set(proc, 0) & set(stop_token_ids(tok, STOPS).tolist())
