"""Zero-shot classification scores each label's words whole, as lm-evaluation-harness scores a continuation:
a class's score is the log-sum-exp over its words of log P(the word's tokens | prompt), a word's tokens being
those that follow the prompt's own in the encoding of prompt+word. One-token words keep one forward pass per
batch of prompts; a word of several tokens runs only its further tokens, after its prompt's key/value cache.
Checked on tiny random Llamas against full forward passes of prompt+word, with the byte-level BPE tokenizer
of the other tests and a Llama-2-style SentencePiece one (which starts a word encoded alone with a bare
"▁")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import CORPUS
from helpers import SST2, sst2_examples

from tunelab.errors import UsageError
from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.prefix_cache import MIN_PREFIX, shared_prefix
from tunelab.tasks.classification import (
    Calibration,
    head_init_from_verbalizers,
    label_logprobs,
    verbalizer_ids,
    zero_shot,
)

PLAIN = "Review: {sentence}\nSentiment:"


def by_hand(model, tok, text: str, words, special: bool = True) -> float:
    """log sum over `words` of P(word | text), each from one full forward pass of text+word (the word's
    tokens: those after the text's own)."""
    enc = tok(text, add_special_tokens=special).input_ids
    out = []
    for w in words:
        whole = tok(text + w, add_special_tokens=special).input_ids
        assert whole[: len(enc)] == enc and len(whole) > len(enc)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].double(), -1)
        out.append(sum(logp[j - 1, whole[j]].item() for j in range(len(enc), len(whole))))
    return float(np.logaddexp.reduce(out))


def embedded(model) -> list[tuple[int, int]]:
    """The (rows, width) of each batch of token ids the decoder runs, call by call."""
    seen: list = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    return seen


def pieces(tok, text: str) -> list[str]:
    return tok.convert_ids_to_tokens(tok.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("template", ["chat", "harness"])  # with and without the shared-prefix cache
def test_one_token_words_keep_one_forward_pass_and_their_scores(tiny_model_dir, template):
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    prompt = SST2.prompt(template)
    special = prompt.add_special_tokens
    assert all(len(pieces(tok, w)) == 1 for ws in prompt.verbalizers.values() for w in ws)
    texts = [prompt.render(tok, ex.text) for ex in sst2_examples(7)]
    seen = embedded(model)
    got = label_logprobs(model, tok, texts, prompt.verbalizers, 4, progress=False, add_special_tokens=special)
    # the prompts' shared prefix once (the chat prompt), then one pass per batch of 4 and 3 prompts: no more
    cached = shared_prefix([tok(t, add_special_tokens=special).input_ids for t in texts]) >= MIN_PREFIX
    assert [rows for rows, _ in seen] == [1] * cached + [4, 3] and cached == (template == "chat")
    ids = verbalizer_ids(tok, prompt)  # the words' tokens, as the scores read them before
    for i, t in enumerate(texts):
        with torch.no_grad():
            logits = model(**tok(t, add_special_tokens=special, return_tensors="pt")).logits[0, -1]
        logp = torch.log_softmax(logits.double(), -1)
        np.testing.assert_allclose(got[i], [torch.logsumexp(logp[c], 0).item() for c in ids], atol=1e-5)
    raw, _ = zero_shot(model, tok, texts, prompt, Calibration("none"), 4, progress=False)
    np.testing.assert_allclose(raw, got - np.logaddexp.reduce(got, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize(("template", "batch_size"), [("chat", 3), ("harness", 3), ("harness", 1)])
def test_a_word_of_several_tokens_is_scored_whole(tiny_model_dir, template, batch_size):
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    words = {"negative": [" terrible", " negative"], "positive": [" wonderful", " abbreviation"]}
    assert [len(pieces(tok, w)) for ws in words.values() for w in ws] == [3, 1, 2, 11]
    prompt = SST2.prompt(template)
    special = prompt.add_special_tokens
    texts = [prompt.render(tok, ex.text) for ex in sst2_examples(7)]
    seen = embedded(model)
    got = label_logprobs(model, tok, texts, words, batch_size, progress=False, add_special_tokens=special)
    # the chat prompt's shared prefix once, then each batch of prompts, then only the three longer words'
    # further tokens (at most 10) after the batch's cache: the prompts are not run again
    sizes = [min(batch_size, 7 - b) for b in range(0, 7, batch_size)]
    cached = int(template == "chat")
    assert [n for n, _ in seen] == [1] * cached + [rows for n in sizes for rows in (n, 3 * n)]
    assert seen[cached + 1 :: 2] == [(3 * n, 10) for n in sizes]
    for i, t in enumerate(texts):
        want = [by_hand(model, tok, t, ws, special) for ws in words.values()]
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-5)


def test_labels_sharing_a_first_token_are_told_apart_and_identical_words_refused(tiny_model_dir):
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    words = {"negative": [" greatly"], "positive": [" greats"]}
    assert pieces(tok, " greatly")[0] == pieces(tok, " greats")[0] == "Ġgreat"
    prompt = SST2.prompt({"text": PLAIN, "verbalizers": words})
    assert verbalizer_ids(tok, prompt)  # no longer refused
    texts = [prompt.render(tok, ex.text) for ex in sst2_examples(5)]
    raw, _ = zero_shot(model, tok, texts, prompt, Calibration("none"), 2, progress=False)
    want = np.array([[by_hand(model, tok, t, ws) for ws in words.values()] for t in texts])
    np.testing.assert_allclose(raw, want - np.logaddexp.reduce(want, axis=1, keepdims=True), atol=1e-5)
    assert np.abs(raw[:, 0] - raw[:, 1]).min() > 1e-3  # the labels' scores differ: no tie
    # a word of the same tokens in two labels is refused, naming both labels, the word and its tokens
    same = SST2.prompt(
        {"text": PLAIN, "verbalizers": {"negative": [" bad", " films"], "positive": [" films"]}}
    )
    tied = r"'negative' \(' films'\) and 'positive' \(' films'\) .* same whole word, \['Ġfilm', 's'\]"
    with pytest.raises(UsageError, match=tied):
        verbalizer_ids(tok, same)
    with pytest.raises(UsageError, match=tied):
        label_logprobs(model, tok, texts, same.verbalizers, progress=False)
    with pytest.raises(UsageError, match=tied):
        zero_shot(model, tok, texts, same, Calibration("none"), progress=False)


def test_a_word_is_the_tokens_after_the_prompts_own_or_else_itself(tiny_model_dir):
    from tunelab.tasks.classification.zero_shot import word_tokens

    tok = load_tokenizer(tiny_model_dir)
    texts = ["a good", "a goo"]  # "a goo" + "d": "a good" does not start with the tokens of "a goo"
    enc = [tok(t).input_ids for t in texts]
    assert tok("a good").input_ids[: len(enc[1])] != enc[1]
    found = word_tokens(tok, texts, enc, [" film", "d", 7], True)
    assert found[0] == [
        tuple(tok.encode(" film", add_special_tokens=False)),
        (tok.convert_tokens_to_ids("d"),),
        (7,),
    ]
    assert found[1][1] == tuple(tok.encode("d", add_special_tokens=False))  # encoded alone


def llama2_style_tokenizer():
    """A tiny tokenizer made as Llama-2's: SentencePiece BPE, the text prefixed with "▁" and its spaces made
    "▁" (its normalizer; no pre-tokenizer), pieces learnt within words. Alone, " positive" is "▁",
    "▁positive"; after a prompt, "▁positive"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()  # while learning the pieces: within words
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=["\n"], show_progress=False
    )
    tok.train_from_iterator(CORPUS * 5, trainer)
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )


def test_a_sentencepiece_word_is_scored_by_its_own_token_not_a_bare_space():
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tok = llama2_style_tokenizer()
    assert pieces(tok, " negative") == ["▁", "▁negative"] and pieces(tok, " positive") == ["▁", "▁positive"]
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    words = {"negative": [" negative"], "positive": [" positive"]}
    prompt = SST2.prompt({"text": PLAIN, "verbalizers": words})
    ids = verbalizer_ids(tok, prompt)  # not refused: the labels' words differ after their "▁"
    assert [tok.convert_ids_to_tokens(c) for c in ids] == [["▁negative"], ["▁positive"]]
    texts = [prompt.render(tok, ex.text) for ex in sst2_examples(5)]
    seen = embedded(model)
    raw, _ = zero_shot(model, tok, texts, prompt, Calibration("none"), 8, progress=False)
    assert len(seen) == 1  # one token each in context: the one forward pass
    want = np.array([[by_hand(model, tok, t, ws) for ws in words.values()] for t in texts])
    np.testing.assert_allclose(raw, want - np.logaddexp.reduce(want, axis=1, keepdims=True), atol=1e-5)
    # the fine-tuned head starts from the words' own rows, not the bare "▁"'s
    head = LlamaForSequenceClassification(cfg)
    head_init_from_verbalizers(tok, prompt)(head)
    emb = head.get_input_embeddings().weight
    assert torch.equal(head.score.weight, emb[[ids[0][0], ids[1][0]]])


def test_a_prompts_trailing_spaces_start_its_words(tiny_model_dir):
    """As lm-evaluation-harness does: a prompt ending in "Sentiment: " scores "positive" as " positive" after
    "Sentiment:" (a split the tokenizer makes), not "positive" after a bare space token."""
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    texts = [PLAIN.format(sentence=ex.text) for ex in sst2_examples(3)]
    bare = {"negative": ["negative"], "positive": ["positive"]}
    spaced = {"negative": [" negative"], "positive": [" positive"]}
    with_space = label_logprobs(model, tok, [t + " " for t in texts], bare, 2, progress=False)
    without = label_logprobs(model, tok, texts, spaced, 2, progress=False)
    np.testing.assert_allclose(with_space, without, atol=1e-6)
    assert pieces(tok, "Sentiment: positive")[-1] == pieces(tok, " positive")[-1]  # (one token, "Ġpositive")


def test_the_head_of_a_prompt_ending_in_a_space_starts_from_the_word_that_follows_it(tiny_model_dir):
    """Fine-tuning reads the prompt's last token, the space itself: its head starts from the rows of the
    words as they follow that space ("positive"), not as zero-shot scores them after the moved space."""
    from transformers import LlamaForSequenceClassification

    tok = load_tokenizer(tiny_model_dir)
    words = {"negative": ["negative"], "positive": ["positive"]}
    prompt = SST2.prompt({"text": PLAIN + " ", "verbalizers": words})
    alone = [[tok.encode(w, add_special_tokens=False)[0]] for w in ("negative", "positive")]
    assert verbalizer_ids(tok, prompt, move_spaces=False) == alone
    assert verbalizer_ids(tok, prompt) != alone  # zero-shot: " negative", " positive"
    head = LlamaForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    head_init_from_verbalizers(tok, prompt)(head)
    emb = head.get_input_embeddings().weight
    assert torch.equal(head.score.weight, emb[[alone[0][0], alone[1][0]]])


def test_token_id_words_keep_the_prompts_trailing_space(tiny_model_dir):
    """Words given as token ids are scored after the prompt as written (its trailing space included)."""
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    text = PLAIN.format(sentence=sst2_examples(1)[0].text) + " "
    ids = [[tok.encode(w, add_special_tokens=False)[0]] for w in ("negative", "positive")]
    got = label_logprobs(model, tok, [text], ids, 1, progress=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(**tok(text, return_tensors="pt")).logits[0, -1].double(), -1)
    np.testing.assert_allclose(got[0], [logp[i[0]].item() for i in ids], atol=1e-5)
