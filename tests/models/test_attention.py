"""Bidirectional attention (tunelab.models.attention, the `bidirectional` training option): with it a token's
hidden state depends on later tokens, without it (the default) it does not; padding stays masked; a fine-tuned
folder keeps the setting."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SQUAD

from tunelab import runs
from tunelab.models import load_task_model
from tunelab.models.attention import is_bidirectional, make_bidirectional
from tunelab.models.loading import body
from tunelab.training import TrainConfig


def hidden(model, ids, mask=None):
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return body(model)(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_later_tokens_reach_earlier_ones_only_when_bidirectional(tiny_model_dir, impl):
    model = load_task_model(tiny_model_dir, "span").eval()
    body(model).config._attn_implementation = impl
    a = torch.tensor([[5, 6, 7, 8, 9, 10]])
    b = a.clone()
    b[0, -1] = 20  # only the last token differs
    assert not is_bidirectional(model)
    assert torch.equal(hidden(model, a)[0, :-1], hidden(model, b)[0, :-1])  # default: causal
    make_bidirectional(model)
    assert is_bidirectional(model)
    diff = (hidden(model, a)[0, :-1] - hidden(model, b)[0, :-1]).abs().amax(-1)
    assert (diff > 1e-4).all()  # every earlier position now sees the last token
    # padding keys stay masked: a right-padded row equals the unpadded one on its real tokens
    padded = torch.cat([a, torch.tensor([[0, 0]])], 1)
    mask = torch.cat([torch.ones_like(a), torch.zeros(1, 2, dtype=torch.long)], 1)
    assert torch.allclose(hidden(model, padded, mask)[0, :6], hidden(model, a)[0], atol=1e-5)


def test_bidirectional_fine_tuning_is_kept_by_the_saved_folder(tiny_model_dir, tmp_path):
    from helpers import qa_examples

    examples = qa_examples(6)
    cfg = TrainConfig(
        method="full",
        epochs=1,
        batch_size=3,
        max_length=64,
        bf16=False,
        bidirectional=True,
        learning_rate=1e-3,
    )
    out = tmp_path / "ft"
    m = runs.finetune(SQUAD, tiny_model_dir, examples, examples, "x", out, cfg)
    assert m["bidirectional"] is True
    assert json.loads((out / "tunelab.json").read_text())["bidirectional"] is True
    model, tok, meta, task = runs.load_finetuned(out)
    assert is_bidirectional(model)
    again = runs.evaluate(out, examples, "x", tmp_path / "ev")
    assert again["f1"] == pytest.approx(m["f1"])  # the reloaded model answers as the trained one did
    default = runs.finetune(
        SQUAD,
        tiny_model_dir,
        examples,
        examples,
        "x",
        tmp_path / "c",
        TrainConfig(**{**cfg.to_dict(), "bidirectional": False}),
    )
    assert default["bidirectional"] is False and not is_bidirectional(runs.load_finetuned(tmp_path / "c")[0])
