"""A chat-rendered prompt is tokenised as `apply_chat_template(tokenize=True)` would: the chat template writes
its own BOS and the tokenizer adds none (Llama 3's template starts with {{ bos_token }} and its tokenizer
adds <|begin_of_text|> too). Zero-shot scoring, fine-tuning inputs and fine-tuned prediction see the same
ids; a plain prompt keeps the tokenizer's BOS."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from conftest import CHAT_TEMPLATE, make_tokenizer
from helpers import PLAIN, SST2, sst2_examples, tiny_train_config
from tokenizers import processors

from tunelab.hub.card import _usage_classification
from tunelab.models import load_causal_lm
from tunelab.tasks.classification import Calibration, label_logprobs, verbalizer_ids, zero_shot


@pytest.fixture(scope="module")
def bos_tokenizer():
    """The tiny tokenizer made Llama-3-like: it adds a BOS to every text, and its chat template writes one."""
    tok = make_tokenizer()
    tok.bos_token = "<|endoftext|>"
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)]
    )
    tok.chat_template = "{{ bos_token }}" + CHAT_TEMPLATE
    tok.pad_token = tok.eos_token  # as load_tokenizer
    assert tok("a good film").input_ids[0] == bos
    return tok


def one_bos(tok, ids: list[int]) -> bool:
    return ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


def test_zero_shot_chat_prompt_has_one_bos(tiny_model_dir, bos_tokenizer):
    tok = bos_tokenizer
    model = load_causal_lm(tiny_model_dir).eval()
    prompt = SST2.prompt("chat")
    assert prompt.chat and not prompt.add_special_tokens
    texts = [prompt.render(tok, ex.text) for ex in sst2_examples(6)]
    assert all(one_bos(tok, tok(t, add_special_tokens=False).input_ids) for t in texts)
    ids = verbalizer_ids(tok, prompt)
    single = label_logprobs(model, tok, texts, ids, progress=False, add_special_tokens=False)
    double = label_logprobs(model, tok, texts, ids, progress=False)
    assert np.abs(single - double).max() > 1e-3  # the second BOS does change the scores
    raw, _ = zero_shot(model, tok, texts, prompt, Calibration("none"), progress=False)
    want = single - np.logaddexp.reduce(single, axis=1, keepdims=True)
    np.testing.assert_allclose(raw, want, atol=1e-6)


def test_fine_tuning_and_prediction_read_the_same_ids(tiny_model_dir, bos_tokenizer):
    from transformers import AutoModelForSequenceClassification

    tok = bos_tokenizer
    train = sst2_examples(4)
    cfg = tiny_train_config(max_length=512)
    for spec, chat in (("chat", True), (asdict(PLAIN), False)):
        ft = SST2.prepare_fine_tuning(tok, cfg, train, [], {"input_prompt": spec, "detokenize": False})
        prompt = SST2.input_prompt(ft.meta["input_prompt"])
        for feat, ex in zip(ft.features, train, strict=True):
            text = prompt.render(tok, ex.text)
            assert feat["input_ids"] == tok(text, add_special_tokens=not chat).input_ids
            assert one_bos(tok, feat["input_ids"])
    # prediction tokenises as training did: the classifier's scores of a chat input are those of its ids
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2).eval()
    model.config.pad_token_id = tok.eos_token_id
    ft = SST2.prepare_fine_tuning(tok, cfg, train, [], {"input_prompt": "chat", "detokenize": False})
    got = SST2.predict(model, tok, train, ft.meta, batch_size=1, progress=False, bf16=False).log_probs
    with torch.no_grad():
        want = [model(torch.tensor([f["input_ids"]])).logits.log_softmax(-1)[0].numpy() for f in ft.features]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-5)


def test_model_card_snippet_adds_no_special_tokens_to_a_chat_input():
    chat = _usage_classification(SST2, {"input_prompt": {"text": "{sentence}", "chat": True}}, "m")[0]
    plain = _usage_classification(SST2, {"input_prompt": asdict(PLAIN)}, "m")[0]
    assert "add_special_tokens=False" in chat and "add_special_tokens" not in plain
