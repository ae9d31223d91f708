"""Zero-shot classification computes the prompts' shared prefix (chat template, system prompt, instruction)
once and reuses its key/value cache: the scores equal those of the whole-prompt path (float32 rounding:
1e-5), on the tiny model with SST-2's chat prompt, on made-up and real SST-2 sentences, while the batches
compute only each prompt's own tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import DATA, PLAIN, SST2, sst2_examples

from tunelab.models import load_causal_lm, load_tokenizer
from tunelab.prefix_cache import MIN_PREFIX, shared_prefix
from tunelab.tasks.classification import label_logprobs, verbalizer_ids


def test_shared_prefix_is_the_common_start_and_leaves_a_token_each():
    assert shared_prefix([[1, 2, 3, 4], [1, 2, 3, 5, 6], [1, 2, 9]]) == 2
    assert shared_prefix([[1, 2, 3], [1, 2, 3, 4]]) == 2  # a prompt that is all prefix keeps its last token
    assert shared_prefix([[7, 1], [8, 1]]) == 0 and shared_prefix([[5, 6]]) == 1 and shared_prefix([]) == 0


def _tokens_seen(model):
    seen = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    return seen


def _compare(model_dir, sentences, prompt, batch_size=4, abs_tol=1e-5):
    tok = load_tokenizer(model_dir)
    model = load_causal_lm(model_dir).eval()
    texts = [prompt.render(tok, s) for s in sentences]
    ids = verbalizer_ids(tok, prompt)
    seen = _tokens_seen(model)
    whole = label_logprobs(model, tok, texts, ids, batch_size, progress=False, reuse_prefix=False)
    whole_tokens = sum(seen)
    seen.clear()
    cached = label_logprobs(model, tok, texts, ids, batch_size, progress=False)
    np.testing.assert_allclose(cached, whole, rtol=0, atol=abs_tol)
    enc = [tok(t).input_ids for t in texts]
    return shared_prefix(enc), whole_tokens, sum(seen)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_prefix_cache_gives_the_whole_prompt_scores(tiny_model_dir, batch_size):
    sentences = [ex.text for ex in sst2_examples(11)]
    prefix, whole, cached = _compare(tiny_model_dir, sentences, SST2.prompt("chat"), batch_size)
    assert prefix >= MIN_PREFIX  # the cached path really ran
    # the prefix once, then only each prompt's own tokens (the same batches, each narrower by the prefix)
    assert cached == whole - (len(sentences) - 1) * prefix


def test_a_prompt_without_a_shared_prefix_takes_the_plain_path(tiny_model_dir):
    # the harness prompt starts with the sentence itself: nothing to share, the same tokens computed
    sentences = [ex.text for ex in sst2_examples(6)]
    prefix, whole, cached = _compare(tiny_model_dir, sentences, SST2.prompt("harness"))
    assert prefix < MIN_PREFIX and cached == whole
    prefix, _, _ = _compare(tiny_model_dir, sentences, PLAIN)  # "Review: {sentence}...": 2-3 tokens shared
    assert prefix >= 1


@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_prefix_cache_on_real_sst2_sentences(tiny_model_dir):
    examples = SST2.read(SST2.data_path("dev"))[:24]
    prefix, whole, cached = _compare(tiny_model_dir, [ex.text for ex in examples], SST2.prompt("chat"), 8)
    assert prefix >= MIN_PREFIX and cached == whole - (len(examples) - 1) * prefix


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="TUNELAB_DATA_DIR is not set")
def test_prefix_cache_on_smollm2(tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from tunelab.models.registry import resolve

    monkeypatch.setenv(
        "TUNELAB_CACHE", os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache/tunelab"))
    )
    examples = SST2.read(SST2.data_path("dev"))[:16]
    torch.manual_seed(0)
    prefix, whole, cached = _compare(
        resolve("smollm2-135m"), [ex.text for ex in examples], SST2.prompt("chat"), 8, 1e-4
    )
    assert prefix >= 20 and cached == whole - (len(examples) - 1) * prefix  # 44 of ~84 tokens shared


def test_the_fine_tuned_classifier_scores_the_same_with_its_prompt_prefix_run_once(tiny_model_dir):
    from tunelab.models import load_task_model
    from tunelab.tasks.classification import format_input
    from tunelab.tasks.classification.head import classify

    tok = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = load_task_model(tiny_model_dir, "classification").eval()
    model.config.pad_token_id = tok.pad_token_id
    prompt = SST2.input_prompt(SST2.finetune_extras()["input_prompt"])
    texts = [format_input(prompt, tok, ex.text) for ex in sst2_examples(11)]
    seen = _tokens_seen(model)
    whole = classify(model, tok, texts, 128, batch_size=4, progress=False, share_prefix=False)
    whole_tokens = sum(seen)
    seen.clear()
    shared = classify(model, tok, texts, 128, batch_size=4, progress=False)
    np.testing.assert_allclose(shared, whole, rtol=0, atol=1e-5)
    prefix = shared_prefix([tok(t).input_ids for t in texts])
    # batches of 4, 4 and 3 rows, each running its shared start (at least `prefix` tokens) once
    assert prefix >= MIN_PREFIX and sum(seen) <= whole_tokens - (3 + 3 + 2) * prefix
    # attending both ways, the prefix would see the rest: the whole inputs are run
    from tunelab.models.attention import make_bidirectional

    make_bidirectional(model)
    seen.clear()
    both_ways = classify(model, tok, texts, 128, batch_size=4, progress=False, share_prefix=True)
    assert sum(seen) == whole_tokens
    assert np.abs(both_ways - whole).max() > 1e-4  # (a different model: the mask really changed)
