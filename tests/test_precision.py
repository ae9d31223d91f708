"""bfloat16 where the hardware runs it natively (tunelab.precision): the CPU check and its override, and that
training, zero-shot and evaluation really run in bfloat16 when it is on, in float32 when `bf16` is off, and
give what float32 gives up to bfloat16's rounding. The suite runs with TUNELAB_CPU_BF16=off (conftest); these
tests turn it on, so they exercise the bfloat16 path on any CPU (emulated where it is not native)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import prompted_features, sst2_examples, sst2_tsv, training_features

from tunelab import precision
from tunelab.cli import main
from tunelab.errors import UsageError
from tunelab.models import load_task_model
from tunelab.options import TrainConfig
from tunelab.tasks.extractive_qa.windows import span_loss
from tunelab.training import train

CPU = torch.device("cpu")


@pytest.fixture
def bf16_on(monkeypatch):
    monkeypatch.setenv(precision.ENV, "on")


def test_the_cpu_defaults_and_their_override(monkeypatch):
    """auto: zero-shot weights in bfloat16 where the CPU has it natively, fine-tuning and evaluation in
    float32; on: bfloat16 for all of it; off: float32 for all of it; a `bf16` option of false: float32."""
    monkeypatch.setenv(precision.ENV, "auto")
    native = precision._cpu_has_native_bf16()
    assert precision.bf16_native(CPU) is native
    assert precision.eval_dtype(CPU) == (torch.bfloat16 if native else torch.float32)
    assert not precision.bf16_autocast(CPU) and precision.autocast_dtype(CPU) == "float32"
    for value, expected in [("on", True), ("ON", True), ("1", True), ("off", False), ("0", False)]:
        monkeypatch.setenv(precision.ENV, value)
        assert precision.eval_dtype(CPU) == (torch.bfloat16 if expected else torch.float32)
        assert precision.bf16_autocast(CPU) is expected
        assert precision.autocast_dtype(CPU) == ("bfloat16" if expected else "float32")
        assert precision.bf16_native(CPU) is native  # the hardware's answer, whatever the override
    monkeypatch.setenv(precision.ENV, "on")
    assert precision.eval_dtype(CPU, bf16=False) == torch.float32  # the option turns it off
    assert precision.autocast(CPU).fast_dtype == torch.bfloat16
    assert not precision.autocast(CPU, bf16=False)._enabled
    assert not precision.bf16_weights(torch.device("meta"))
    monkeypatch.setenv(precision.ENV, "sometimes")
    with pytest.raises(UsageError, match="TUNELAB_CPU_BF16='sometimes' must be auto, on or off"):
        precision.eval_dtype(CPU)


def _model(tiny_model_dir, head: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_task_model(tiny_model_dir, head)
    model.config.pad_token_id = 0
    return model


def _train(tiny_model_dir, tmp_path, name: str, head: str = "classification", feats=None, **kw):
    """A short run; returns (result, the dtypes q_proj's outputs had during training)."""
    model = _model(tiny_model_dir, head)
    seen = set()
    q_proj = next(m for n, m in model.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    q_proj.register_forward_hook(lambda m, a, out: seen.add(out.dtype))
    cfg = TrainConfig(
        learning_rate=1e-3, epochs=1, batch_size=8, max_length=32, warmup_ratio=0.0, log_every=1, seed=0, **kw
    )
    span = head == "span"
    result = train(
        model,
        feats or training_features(span=span),
        cfg,
        pad_id=0,
        work_dir=tmp_path / name,
        loss_fn=span_loss if span else None,
        progress=False,
    )
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: float32 weights
    return result, seen


@pytest.mark.parametrize("head", ["classification", "span"])
def test_training_runs_in_bf16_autocast_when_on(tiny_model_dir, tmp_path, bf16_on, head):
    fp32, seen32 = _train(tiny_model_dir, tmp_path, "fp32", head, bf16=False)
    bf16, seen16 = _train(tiny_model_dir, tmp_path, "bf16", head)
    assert (fp32.dtype, seen32) == ("float32", {torch.float32})
    assert (bf16.dtype, seen16) == ("bfloat16", {torch.bfloat16})
    # the same training up to bfloat16's rounding (8 bits of mantissa: ~0.4% a product)
    for a, b in zip(fp32.log, bf16.log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.03)
    assert bf16.log[0]["loss"] != fp32.log[0]["loss"]  # it did compute in another precision


def test_the_speed_options_run_under_bf16_autocast(tiny_model_dir, tmp_path, bf16_on):
    """packing (document mask, per-example heads) and share_prefix (the prefix's cache made under the same
    autocast) in bfloat16 train like the plain bfloat16 loop."""
    plain, _ = _train(tiny_model_dir, tmp_path, "plain", "span", share_prefix="off")
    packed, seen = _train(tiny_model_dir, tmp_path, "packed", "span", packing=True)
    assert seen == {torch.bfloat16}
    for a, b in zip(plain.log, packed.log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.03)
    whole, _ = _train(tiny_model_dir, tmp_path, "whole", feats=prompted_features(), share_prefix="off")
    shared, seen = _train(tiny_model_dir, tmp_path, "shared", feats=prompted_features(), share_prefix="on")
    assert shared.shared_prefix and not whole.shared_prefix and seen == {torch.bfloat16}
    for a, b in zip(whole.log, shared.log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.03)


def _metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_commands_record_and_honour_the_precision(tiny_model_dir, tmp_path, bf16_on, monkeypatch):
    """zeroshot loads bfloat16 weights, finetune trains and evaluates under bfloat16 autocast, evaluate too;
    --no-bf16 keeps each in float32; the scores agree up to bfloat16's rounding."""
    (tmp_path / "data" / "SST-2").mkdir(parents=True)
    sst2_tsv(sst2_examples(32), tmp_path / "data" / "SST-2" / "train.tsv")
    sst2_tsv(sst2_examples(12, seed=1), tmp_path / "data" / "SST-2" / "dev.tsv")
    data = ["--task", "sst2", "--data-dir", str(tmp_path / "data")]
    zs = {}
    for flag in ([], ["--no-bf16"]):
        out = tmp_path / f"zs{len(flag)}"
        assert main(["zeroshot", tiny_model_dir, *data, "--out", str(out), *flag]) == 0
        zs[len(flag)] = _metrics(out)
    assert (zs[0]["dtype"], zs[1]["dtype"]) == ("bfloat16", "float32")

    ft = tmp_path / "ft"
    train_flags = ["--epochs", "1", "--batch-size", "8", "--max-length", "64", "--method", "full"]
    assert main(["finetune", tiny_model_dir, *data, *train_flags, "--out", str(ft)]) == 0
    m = _metrics(ft / "eval")
    assert (m["train_dtype"], m["dtype"]) == ("bfloat16", "bfloat16")
    evals = {}
    for flag in ([], ["--no-bf16"]):
        out = tmp_path / f"ev{len(flag)}"
        assert main(["evaluate", str(ft), *data, "--out", str(out), *flag]) == 0
        evals[len(flag)] = _metrics(out)
    assert (evals[0]["dtype"], evals[1]["dtype"]) == ("bfloat16", "float32")
    assert evals[0]["accuracy"] == m["accuracy"]  # the same bfloat16 evaluation as fine-tuning's own
    monkeypatch.setenv(precision.ENV, "auto")  # the CPU default: fine-tuned models evaluate in float32
    assert main(["evaluate", str(ft), *data, "--out", str(tmp_path / "ev-auto")]) == 0
    assert _metrics(tmp_path / "ev-auto")["dtype"] == "float32"
    for runs in (("zs0", "zs1"), ("ev0", "ev1")):
        bf16, fp32 = (_scores(tmp_path / name) for name in runs)
        assert not torch.equal(bf16, fp32)  # computed in two precisions
        torch.testing.assert_close(bf16, fp32, atol=0.02, rtol=0)


def _scores(folder) -> torch.Tensor:
    rows = (folder / "predictions.jsonl").read_text().splitlines()
    return torch.tensor([list(json.loads(r)["scores"].values()) for r in rows])


def test_a_float32_head_keeps_what_bfloat16_rounds_away():
    """Two class rows whose scores differ by 0.004 at a magnitude of 256: bfloat16 (a step of 2 there) rounds
    both to the same number and argmax takes the first class; the float32 head keeps the difference."""
    torch.manual_seed(0)
    plain = torch.nn.Linear(64, 2, bias=False)
    with torch.no_grad():
        plain.weight.fill_(1.0)
        plain.weight[1, 0] += 1e-3
    h = torch.full((3, 64), 4.0)
    head = precision.float32_head(torch.nn.Linear(64, 2, bias=False))
    head.load_state_dict(plain.state_dict())  # the same parameter names: a class swap, not a wrapper
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded, kept = plain(h), head(h)
    assert rounded.dtype == torch.bfloat16 and torch.equal(rounded[:, 0], rounded[:, 1])
    assert kept.dtype == torch.float32 and kept.argmax(-1).tolist() == [1, 1, 1]
    torch.testing.assert_close(kept, torch.nn.functional.linear(h, plain.weight))
    bf16_weights = precision.float32_head(torch.nn.Linear(64, 2, bias=False).to(torch.bfloat16))
    assert bf16_weights(h.to(torch.bfloat16)).dtype == torch.float32


def test_models_are_loaded_with_float32_heads(tiny_model_dir):
    from tunelab.models import load_causal_lm
    from tunelab.models.params import LoraOptions, apply_method

    for head, module in (("classification", "score"), ("span", "qa_outputs")):
        model = load_task_model(tiny_model_dir, head)
        assert type(getattr(model, module)) is precision.Float32Linear
        assert f"{module}.weight" in model.state_dict()
        lora = apply_method(model, head, "lora", LoraOptions(4, 8, 0.0, ("q_proj",)))
        copies = [m for n, m in lora.named_modules() if n.endswith(f"{module}.modules_to_save.default")]
        assert len(copies) == 1 and type(copies[0]) is precision.Float32Linear  # peft's trained copy
    fp32 = load_causal_lm(tiny_model_dir)
    assert fp32.lm_head.weight is fp32.get_input_embeddings().weight  # still tied
    bf16 = load_causal_lm(tiny_model_dir, dtype=torch.bfloat16)
    assert bf16.get_input_embeddings().weight.dtype == torch.bfloat16
    assert bf16.lm_head.weight.dtype == torch.float32  # an untied float32 copy
    torch.testing.assert_close(bf16.lm_head.weight, fp32.lm_head.weight, atol=0.01, rtol=0.01)
    logits = bf16(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("major,native", [(7, False), (8, True), (9, True)])
def test_a_gpu_before_ampere_only_emulates_bfloat16(monkeypatch, major, native):
    """T4/V100 (compute capability 7.x) run bfloat16 emulated and slowly (torch.cuda.is_bf16_supported() says
    True there by default): tunelab keeps them in float32; the device asked about is the one checked."""
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or (major, 0))
    gpu = torch.device("cuda", 1)
    assert precision.bf16_native(gpu) is native and asked == [gpu]
    assert precision.bf16_autocast(gpu) is native
    assert precision.eval_dtype(gpu) == (torch.bfloat16 if native else torch.float32)
