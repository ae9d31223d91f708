"""tunelab.inference: batches of a fixed size, or (batch_size auto) filled up to a budget of padded tokens
that out-of-memory halves; and every evaluation path gives the same scores with auto as one at a time."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from helpers import SQUAD, SST2, qa_examples, sst2_examples

from tunelab import inference
from tunelab.errors import UsageError
from tunelab.inference import AUTO_MAX_EXAMPLES, auto_tokens, run_batches


def _oom(message="CUDA out of memory. Tried to allocate 2.00 GiB"):
    return torch.cuda.OutOfMemoryError(message)


def test_auto_fills_each_batch_up_to_the_token_budget(monkeypatch):
    monkeypatch.setitem(inference.AUTO_TOKENS, "cpu", 40)
    lengths = [20, 3, 7, 9, 10, 10, 2, 5, 41, 1, 4, 4, 6]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    assert run_batches(order, "auto", batches.append, desc="t", progress=False, lengths=lengths) == 40
    assert [i for b in batches for i in b] == order  # every example once, in order
    pos = 0
    for b in batches:
        padded = len(b) * max(lengths[i] for i in b)
        assert padded <= 40 or len(b) == 1  # one example longer than the budget still runs, alone
        nxt = order[pos + len(b)] if pos + len(b) < len(order) else None
        if nxt is not None:  # and the batch is as large as the budget allows
            assert (len(b) + 1) * max(lengths[i] for i in [*b, nxt]) > 40
        pos += len(b)
    assert batches[0] == [8]  # 41 tokens: alone
    assert [len(b) for b in batches][-1] > 4  # short inputs go in large batches


def test_auto_caps_the_examples_per_batch(monkeypatch):
    monkeypatch.setitem(inference.AUTO_TOKENS, "cpu", 10**9)
    batches: list[list[int]] = []
    n = AUTO_MAX_EXAMPLES + 5
    run_batches(range(n), "auto", batches.append, desc="t", progress=False, lengths=[1] * n)
    assert [len(b) for b in batches] == [AUTO_MAX_EXAMPLES, 5]


def test_auto_halves_its_budget_on_out_of_memory_and_keeps_it(monkeypatch, capsys):
    monkeypatch.setattr(inference, "AUTO_TOKENS", {"cuda": 1000, "cpu": 1000})
    lengths = [10] * 50 + [4] * 50
    fits = 130  # padded tokens a batch may hold before "the GPU" runs out
    seen, tried = [], []

    def run(idx):
        padded = len(idx) * max(lengths[i] for i in idx)
        tried.append(padded)
        if padded > fits:
            raise _oom()
        seen.extend(idx)

    budget = run_batches(list(range(100)), "auto", run, desc="eval", progress=False, lengths=lengths)
    assert seen == list(range(100))  # none lost to the failed batches
    # each retry gets half the failed batch's padded tokens: 1000, 500, 250, then 125 (12 examples of 10)
    assert tried[:4] == [1000, 500, 250, 120]
    assert budget == 125 and max(tried[3:]) <= 125  # the halved budget is kept to the end
    printed = capsys.readouterr()
    assert "continuing with batches of at most 125 tokens" in printed.out + printed.err


def test_auto_with_one_example_that_does_not_fit_is_a_clear_error():
    def run(idx):
        raise _oom()

    with pytest.raises(UsageError, match="one example at a time.*maximum length"):
        run_batches([0, 1], "auto", run, desc="t", progress=False, lengths=[5, 5])


def test_auto_needs_the_lengths_and_starts_higher_on_a_gpu():
    with pytest.raises(ValueError, match="lengths"):
        run_batches([0], "auto", lambda idx: None, desc="t", progress=False)
    assert auto_tokens("cuda") > auto_tokens("cpu") == auto_tokens(None) == auto_tokens(torch.device("cpu"))


# ------------------------------------------------------------------------------------------------------------
# every evaluation path, auto against one example at a time, on the tiny model


@pytest.fixture
def small_budget(monkeypatch):
    """A CPU budget of a few prompts, so that auto makes several batches of different sizes."""
    monkeypatch.setitem(inference.AUTO_TOKENS, "cpu", 96)
    sizes: list[int] = []
    real = inference.run_batches

    def spy(order, batch_size, run, **kw):
        def counted(idx):
            sizes.append(len(idx))
            run(idx)

        return real(order, batch_size, counted, **kw)

    for module in (
        "tunelab.tasks.classification.zero_shot",
        "tunelab.tasks.classification.head",
        "tunelab.tasks.extractive_qa.spans",
        "tunelab.tasks.extractive_qa.generation",
    ):
        monkeypatch.setattr(importlib.import_module(module), "run_batches", spy)
    return sizes


def test_zero_shot_scores_with_auto_equal_one_at_a_time(tiny_model_dir, small_budget, monkeypatch):
    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.tasks.classification import label_logprobs, verbalizer_ids

    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    for template in ("harness", "chat"):  # without and with the shared-prefix cache
        prompt = SST2.prompt(template)
        texts = [prompt.render(tok, ex.text) for ex in sst2_examples(14)]
        ids = verbalizer_ids(tok, prompt)
        longest = max(len(tok(t).input_ids) for t in texts)
        monkeypatch.setitem(inference.AUTO_TOKENS, "cpu", 3 * longest)  # 3 of the longest, more of the rest
        one = label_logprobs(model, tok, texts, ids, 1, progress=False)
        small_budget.clear()
        auto = label_logprobs(model, tok, texts, ids, "auto", progress=False)
        np.testing.assert_allclose(auto, one, rtol=0, atol=1e-5)
        assert len(set(small_budget)) > 1 and sum(small_budget) == len(texts)


def test_fine_tuned_heads_with_auto_equal_one_at_a_time(tiny_model_dir, small_budget):
    from tunelab.models import align_pad_token, load_task_model, load_tokenizer
    from tunelab.tasks.classification import classify
    from tunelab.tasks.extractive_qa.spans import predict_spans

    tok = load_tokenizer(tiny_model_dir)
    texts = [f"a good film number {i} " * (i % 5 + 1) for i in range(20)]
    model = load_task_model(tiny_model_dir, "classification").eval()
    align_pad_token(model, tok)
    one = classify(model, tok, texts, 64, batch_size=1, progress=False)
    small_budget.clear()
    np.testing.assert_allclose(
        classify(model, tok, texts, 64, batch_size="auto", progress=False), one, atol=1e-5
    )
    assert len(small_budget) > 1 and sum(small_budget) == len(texts)

    qa = load_task_model(tiny_model_dir, "span").eval()
    examples = qa_examples(9)
    one_preds, _, _ = predict_spans(qa, tok, examples, 48, 16, batch_size=1, progress=False)
    auto_preds, _, _ = predict_spans(qa, tok, examples, 48, 16, batch_size="auto", progress=False)
    assert auto_preds == one_preds


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
def test_zero_shot_answers_with_auto_equal_one_at_a_time(tiny_model_dir, small_budget, monkeypatch, kv_cache):
    from tunelab.models import load_causal_lm, load_tokenizer
    from tunelab.tasks.extractive_qa.generation import generate_answers

    monkeypatch.setitem(inference.AUTO_TOKENS, "cpu", 400)
    tok, model = load_tokenizer(tiny_model_dir), load_causal_lm(tiny_model_dir).eval()
    examples = qa_examples(7)
    prompt = SQUAD.prompt(SQUAD.default_prompt)
    one = generate_answers(model, tok, examples, prompt, max_new_tokens=4, batch_size=1, progress=False)
    small_budget.clear()
    auto = generate_answers(
        model, tok, examples, prompt, max_new_tokens=4, batch_size="auto", progress=False, kv_cache=kv_cache
    )
    assert auto[0] == one[0]
    assert len(small_budget) > 1 and sum(small_budget) == len(examples)
