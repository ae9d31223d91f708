"""The training loop's speed options (TrainConfig's `packing`, `share_prefix`, `micro_batch_size`,
`fused_optimizer`, `pin_memory`, `compile`) train the same model as the plain loop: the same logged losses
and the same weights (`share_prefix`: within the norms' float32 rounding, see its test).

Float64, as in test_oom: the options change only how the same sums are grouped (packed rows, pieces, foreach
kernels), i.e. rounding near 1e-16 relative, which AdamW's division by each gradient's running RMS amplifies
to ~1e-12 over a few steps; 1e-9 separates that from any real difference (one example dropped, a leak across
packed examples or a skipped clip moves weights by ~lr = 3e-3). `compile` runs in float32 (inductor's
kernels are float32 kernels; other fusion orders): losses within 1e-4 relative."""

from __future__ import annotations

import pytest
import torch
from helpers import prompted_features as _prompted
from helpers import training_features as _features
from test_oom import FakeOOM

from tunelab.errors import UsageError
from tunelab.models import load_task_model
from tunelab.models.params import LoraOptions, apply_method
from tunelab.options import TRAIN_OPTIONS, TrainConfig
from tunelab.tasks.extractive_qa.windows import span_loss
from tunelab.training import train
from tunelab.training.loop import Trainer
from tunelab.training.speed import bucket, padded

SIZE_RULE = r"micro_batch_size must be an integer in \[1, 65536\] or auto or null"


def _model(tiny_model_dir, head="classification", method="full", dtype=torch.float64):
    torch.manual_seed(0)
    model = load_task_model(tiny_model_dir, head).to(dtype)
    model.config.pad_token_id = 0
    return apply_method(model, head, method, LoraOptions(4, 8, 0.0, ("q_proj", "v_proj")))


def _cfg(**kw) -> TrainConfig:
    base = {
        "learning_rate": 3e-3,
        "epochs": 2,
        "batch_size": 8,
        "grad_accum": 2,
        "max_length": 32,
        "warmup_ratio": 0.0,
        "log_every": 1,
        "seed": 0,
        "bf16": False,
        "max_grad_norm": 0.5,  # small enough to clip: the foreach clipping path is exercised
    }
    base.update(kw)
    return TrainConfig(**base)


def _run(tiny_model_dir, tmp_path, name, *, head="classification", method="full", dtype=torch.float64, **kw):
    model = _model(tiny_model_dir, head, method, dtype)
    result = train(
        model,
        _features(span=head == "span"),
        _cfg(**kw),
        pad_id=0,
        work_dir=tmp_path / name,
        loss_fn=span_loss if head == "span" else None,
        progress=False,
    )
    return result, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(ref, got, rtol=1e-9, atol=1e-9, loss_rtol=1e-6):
    (r, r_state), (g, g_state) = ref, got
    assert g.steps == r.steps and g.tokens == r.tokens
    assert [e["step"] for e in g.log] == [e["step"] for e in r.log]
    for a, b in zip(r.log, g.log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=loss_rtol)
    for k in r_state:
        torch.testing.assert_close(g_state[k], r_state[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize(
    "head,method",
    [("classification", "full"), ("classification", "lora"), ("span", "full"), ("span", "head")],
)
def test_packing_trains_the_same_model(tiny_model_dir, tmp_path, head, method):
    ref = _run(tiny_model_dir, tmp_path, "ref", head=head, method=method)
    got = _run(tiny_model_dir, tmp_path, "packed", head=head, method=method, packing=True)
    _assert_same(ref, got)
    # negative control: a different order of examples is a different model, far outside the tolerance
    other = _run(tiny_model_dir, tmp_path, "other", head=head, method=method, seed=1)
    assert any(not torch.allclose(other[1][k], ref[1][k], rtol=1e-6, atol=1e-6) for k in ref[1])


def test_micro_batch_size_fused_and_pinned_train_the_same_model(tiny_model_dir, tmp_path):
    ref = _run(tiny_model_dir, tmp_path, "ref")
    micro = _run(tiny_model_dir, tmp_path, "micro", micro_batch_size=3)
    _assert_same(ref, micro)
    assert micro[0].chunks == 3 and ref[0].chunks == 1  # 8 examples in pieces of at most 3
    plain_loops = _run(
        tiny_model_dir, tmp_path, "loops", fused_optimizer=False
    )  # for-loop AdamW and clipping
    _assert_same(ref, plain_loops)
    pinned = _run(tiny_model_dir, tmp_path, "pinned", pin_memory=True)  # (a no-op without CUDA)
    _assert_same(ref, pinned)
    both = _run(tiny_model_dir, tmp_path, "both", packing=True, micro_batch_size=5)
    _assert_same(ref, both)


@pytest.mark.parametrize("method", ["full", "lora", "head"])
def test_a_shared_prefix_run_once_trains_the_same_model(tiny_model_dir, tmp_path, monkeypatch, method):
    import tunelab.prefix_cache as prefix_cache

    feats, calls = _prompted(), []
    real = prefix_cache.prefix_cache
    monkeypatch.setattr(
        prefix_cache,
        "prefix_cache",
        lambda d, ids, rows: calls.append((ids.shape[1], rows)) or real(d, ids, rows),
    )

    def run(name, **kw):
        model = _model(tiny_model_dir, method=method)
        result = train(model, feats, _cfg(**kw), pad_id=0, work_dir=tmp_path / name, progress=False)
        return result, {k: v.detach().clone() for k, v in model.state_dict().items()}

    ref = run("whole", share_prefix="off")
    assert calls == []
    got = run("shared", share_prefix="on")
    # The prefix's matmuls run on 1 row instead of 8: float64 rounding of other shapes, which the norms'
    # float32 upcast (LlamaRMSNorm) turns into ~1e-8 after 4 steps; a dropped example moves weights ~3e-3.
    _assert_same(ref, got, rtol=1e-5, atol=1e-6)
    # every micro-batch ran its 12 shared tokens once (2 epochs x 4 micro-batches of 8, 8, 8 and 2)
    assert len(calls) == 8 and {p for p, _ in calls} == {12} and sorted({r for _, r in calls}) == [2, 8]
    calls.clear()
    run("auto", share_prefix="auto")  # on a CPU, auto shares
    assert len(calls) == 8


def test_rows_that_share_too_little_take_the_whole_path(tiny_model_dir, tmp_path):
    trainer = Trainer(
        _model(tiny_model_dir), _prompted(), _cfg(), pad_id=0, work_dir=tmp_path, progress=False
    )
    assert trainer.share_prefix  # auto, on a CPU
    assert trainer._prefix_loss(_features(4)) is None  # no common start
    short = [{"input_ids": [1, 2, 3, 9], "attention_mask": [1] * 4, "labels": 0}] * 2
    assert trainer._prefix_loss(short) is None  # 3 shared tokens: below MIN_PREFIX
    padded_tail = _prompted(2)
    padded_tail[0] = {**padded_tail[0], "input_ids": padded_tail[0]["input_ids"][:12] + [0, 0]}
    assert trainer._prefix_loss(padded_tail) is None  # a row whose own tokens are all pad ids
    assert trainer._prefix_loss(_prompted(3)) is not None
    for kw in ({"compile": True}, {"packing": True}, {"share_prefix": "off"}):
        t = Trainer(
            _model(tiny_model_dir), _prompted(), _cfg(**kw), pad_id=0, work_dir=tmp_path, progress=False
        )
        assert not t.share_prefix, kw
    span = Trainer(
        _model(tiny_model_dir, "span"),
        _features(span=True),
        _cfg(),
        pad_id=0,
        work_dir=tmp_path,
        loss_fn=span_loss,
        progress=False,
    )
    assert not span.share_prefix  # the span loss indexes positions of the whole input


def test_the_default_optimizer_on_a_cpu_is_fused_adamw(tiny_model_dir, tmp_path):
    # Trainer's default (adamw_torch_fused) is fused on a CPU too; it beat foreach in results/speed-cpu.json
    def adamw(**kw):
        trainer = Trainer(
            _model(tiny_model_dir), _features(), _cfg(**kw), pad_id=0, work_dir=tmp_path, progress=False
        )
        return trainer.optimizer.optimizer.defaults  # accelerate's AcceleratedOptimizer around torch's AdamW

    assert (adamw()["fused"], adamw()["foreach"]) == (True, False)
    assert not adamw(fused_optimizer=False)["fused"] and not adamw(fused_optimizer=False)["foreach"]


def test_micro_batch_size_auto_finds_the_pieces_that_fit_and_leaves_training_unchanged(
    tiny_model_dir, tmp_path
):
    feats, cfg = _features(), _cfg(micro_batch_size="auto")
    ref = _run(tiny_model_dir, tmp_path, "ref")
    model = _model(tiny_model_dir)
    fake = FakeOOM(model, rows=2)  # any forward of more than 2 examples "runs out of memory"
    trainer = Trainer(model, feats, cfg, pad_id=0, work_dir=tmp_path / "auto", progress=False)
    trainer.restore(False)
    assert trainer._auto_chunks() == 4  # 8 -> 4 (fail) -> 2: four pieces
    assert fake.raised == 2 and all(p.grad is None for p in model.parameters())  # the probe left nothing
    trainer.chunks = 4
    got = trainer.run()
    _assert_same(ref, (got, model.state_dict()))
    # one example that still does not fit is the user's error, said clearly
    model = _model(tiny_model_dir)
    FakeOOM(model, rows=0)
    trainer = Trainer(model, feats, cfg, pad_id=0, work_dir=tmp_path / "auto2", progress=False)
    with pytest.raises(UsageError, match="one example at a time"):
        trainer._auto_chunks()


def test_micro_batch_size_is_an_integer_or_auto():
    opt = TRAIN_OPTIONS["micro_batch_size"]
    assert opt.check("auto", "f") == "auto" and opt.check("6", "f") == 6 and opt.check(6, "f") == 6
    assert opt.check(None, "f") is None
    for bad in (0, "0", "big", 2.5, True):
        with pytest.raises(UsageError, match=SIZE_RULE):
            opt.check(bad, "f")
    assert TrainConfig.from_dict({"micro_batch_size": "auto", "packing": True}).micro_batch_size == "auto"


def test_buckets_bound_the_widths_and_padding_keeps_the_examples():
    assert [bucket(n, 128) for n in (1, 16, 17, 33, 64, 65, 127, 128, 200)] == [
        16, 16, 32, 64, 64, 128, 128, 128, 200
    ]  # fmt: skip
    assert bucket(100, 96) == 100 and bucket(70, 96) == 96  # max_length caps the buckets
    feats = _features(5)
    batch = padded(feats, 0, 128, static=True)
    assert batch["input_ids"].shape == (5, 32)  # longest 19 -> 32
    for row, f in zip(batch["attention_mask"], feats, strict=True):
        assert int(row.sum()) == len(f["input_ids"])
    assert padded(feats, 0, 128, static=False)["input_ids"].shape[1] == max(
        len(f["input_ids"]) for f in feats
    )


@pytest.mark.slow
@pytest.mark.parametrize("packing", [False, True])
def test_compile_trains_like_eager(tiny_model_dir, tmp_path, packing):
    ref = _run(tiny_model_dir, tmp_path, "ref", dtype=torch.float32, packing=packing, epochs=1)
    got = _run(
        tiny_model_dir, tmp_path, "compiled", dtype=torch.float32, packing=packing, epochs=1, compile=True
    )
    _assert_same(ref, got, rtol=1e-3, atol=1e-4, loss_rtol=1e-4)


def test_the_finetune_flags_reach_the_training_config():
    from tunelab.cli import _train_config, build_parser
    from tunelab.tasks import get_task

    args = build_parser().parse_args(
        [
            "finetune",
            "m",
            "--task",
            "sst2",
            "--out",
            "o",
            "--packing",
            "--compile",
            "--micro-batch-size",
            "auto",
        ]
    )
    cfg = _train_config(args, get_task("sst2"))
    assert (cfg.packing, cfg.compile, cfg.micro_batch_size, cfg.fused_optimizer) == (True, True, "auto", True)
    args = build_parser().parse_args(
        ["finetune", "m", "--task", "sst2", "--out", "o", "--micro-batch-size", "4"]
    )
    assert _train_config(args, get_task("sst2")).micro_batch_size == 4
    args = build_parser().parse_args(
        ["finetune", "m", "--task", "sst2", "--out", "o", "--micro-batch-size", "x"]
    )
    with pytest.raises(
        UsageError, match=SIZE_RULE.replace("micro_batch_size", "--micro-batch-size") + ", got 'x'"
    ):
        _train_config(args, get_task("sst2"))


@pytest.mark.parametrize("head,method", [("classification", "full"), ("span", "lora")])
def test_training_and_evaluation_build_no_kv_cache(tiny_model_dir, tmp_path, head, method):
    """Llama configs say use_cache=True; nothing reads a cache in training or span/class evaluation, so none
    is built (under `compile` its per-layer state made dynamo compile the shared layer once per layer)."""
    from helpers import qa_examples
    from transformers.cache_utils import Cache

    from tunelab.models import load_tokenizer
    from tunelab.prefix_cache import decoder_of
    from tunelab.tasks.classification.head import classify
    from tunelab.tasks.extractive_qa.spans import predict_spans

    model = _model(tiny_model_dir, head, method, torch.float32)
    assert model.config.use_cache
    cached = []
    layer = decoder_of(model).layers[0]
    layer.register_forward_pre_hook(
        lambda m, a, kw: cached.append(any(isinstance(v, Cache) for v in kw.values())), with_kwargs=True
    )
    train(
        model,
        _features(8, span=head == "span"),
        _cfg(epochs=1, compile=False, share_prefix="off"),
        pad_id=0,
        work_dir=tmp_path / "t",
        loss_fn=span_loss if head == "span" else None,
        progress=False,
    )
    tok = load_tokenizer(tiny_model_dir)
    if head == "span":
        predict_spans(model, tok, qa_examples(2), 48, 16, progress=False)
    else:
        classify(model, tok, ["good film", "bad film"], 32, share_prefix=False, progress=False)
    assert cached and not any(cached)
