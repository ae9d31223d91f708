"""Out of memory during fine-tuning: the step is redone with each micro-batch in more pieces, and training
ends with the same weights as a run that never ran out of memory (the global batch and the update are
unchanged)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tunelab.errors import UsageError
from tunelab.models import load_task_model
from tunelab.training import TrainConfig, train


def _features(n: int = 24) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 12))
        out.append(
            {
                "input_ids": rng.integers(5, 300, size=length).tolist(),
                "attention_mask": [1] * length,
                "labels": i % 2,
            }
        )
    return out


def _model(tiny_model_dir, dtype=torch.float32):
    torch.manual_seed(0)
    model = load_task_model(tiny_model_dir, "classification").to(dtype)
    model.config.pad_token_id = 0
    return model


class FakeOOM:
    """Makes the model's forward raise CUDA's out-of-memory error for batches of more than `rows` examples,
    from its `after`-th call on (as a longer batch later in an epoch would)."""

    def __init__(self, model, rows: int, after: int = 0):
        self.calls = 0
        self.raised = 0
        forward = model.forward

        def guarded(*args, **kwargs):
            self.calls += 1
            if self.calls > after and kwargs["input_ids"].shape[0] > rows:
                self.raised += 1
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return forward(*args, **kwargs)

        model.forward = guarded


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
        "max_grad_norm": 1.0,
    }
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("after,grad_accum", [(0, 2), (3, 2), (4, 3)])
def test_out_of_memory_splits_micro_batches_and_keeps_the_update(tiny_model_dir, tmp_path, after, grad_accum):
    # after=3: the 4th forward (the 2nd and last micro-batch of step 2) fails; after=4 with 3 micro-batches a
    # step: the 2nd of step 2 fails, before gradients sync. Either way step 2's first micro-batch's gradients
    # are already accumulated and must be dropped before the step is redone.
    # Splitting a micro-batch into pieces changes only the order of float sums (the pieces' gradients are
    # added up instead of one batch's). AdamW at lr 3e-3 divides each gradient by its own running RMS, so a
    # rounding difference in a gradient near zero becomes an O(lr) difference in a weight: in float32 the two
    # runs agree to ~1e-4 on some CPUs and not on others. In float64 the rounding is ~1e-16 relative, the
    # amplified differences stay ~1e-12 after the 6 steps, and 1e-9 separates "same update, other summation
    # order" from any real difference (a dropped or doubled micro-batch moves weights by ~lr = 3e-3).
    feats = _features()
    plain = _model(tiny_model_dir, torch.float64)
    cfg = _cfg(grad_accum=grad_accum)
    ref = train(plain, feats, cfg, pad_id=0, work_dir=tmp_path / "ref", progress=False)
    squeezed = _model(tiny_model_dir, torch.float64)
    fake = FakeOOM(squeezed, rows=2, after=after)
    got = train(squeezed, feats, cfg, pad_id=0, work_dir=tmp_path / "oom", progress=False)
    # what must be equal exactly: the pieces, the steps, the examples and tokens trained on, the log's steps
    assert fake.raised >= 2 and got.chunks == 4 and ref.chunks == 1  # 8 -> pieces of 4 (fail) -> of 2
    assert got.steps == ref.steps and got.tokens == ref.tokens
    assert [e["step"] for e in got.log] == [e["step"] for e in ref.log]
    for a, b in zip(
        ref.log, got.log, strict=True
    ):  # the logged loss is summed in a float32 accumulator: ~1e-7 relative
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)
    ref_state, got_state = plain.state_dict(), squeezed.state_dict()
    for k in ref_state:
        torch.testing.assert_close(got_state[k], ref_state[k], rtol=1e-9, atol=1e-9, msg=k)


def test_out_of_memory_with_one_example_is_a_clear_error(tiny_model_dir, tmp_path):
    model = _model(tiny_model_dir)
    FakeOOM(model, rows=0)
    with pytest.raises(UsageError, match="one example at a time.*--max-length"):
        train(model, _features(), _cfg(), pad_id=0, work_dir=tmp_path / "w", progress=False)


def test_out_of_memory_in_the_optimizer_update_is_never_redone(tiny_model_dir, tmp_path, monkeypatch):
    """An update that ran out of memory part way (AdamW updates one parameter group after another) is not
    retried in smaller pieces, which would apply the first group's update twice: it is a clear error."""
    model = _model(tiny_model_dir)
    steps = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        steps.append(1)
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(UsageError, match="optimizer's update.*--method lora"):
        train(model, _features(), _cfg(), pad_id=0, work_dir=tmp_path / "w", progress=False)
    assert len(steps) == 1 and original is not step


def test_inference_batches_halve_on_out_of_memory():
    from tunelab.inference import run_batches

    seen: list[int] = []
    sizes: list[int] = []

    def run(idx):
        sizes.append(len(idx))
        if len(idx) > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        seen.extend(idx)

    order = [5, 3, 9, 0, 1, 2, 4, 6, 7, 8, 10]
    assert run_batches(order, 8, run, desc="t", progress=False) == 2
    assert seen == order  # every example once, in order, none lost to the failed batches
    assert sizes[:3] == [8, 4, 2]

    def always(idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(UsageError, match="one example at a time"):
        run_batches(order, 4, always, desc="t", progress=False)


def test_evaluation_gives_the_same_scores_after_out_of_memory(tiny_model_dir):
    from helpers import qa_examples

    from tunelab.models import align_pad_token, load_tokenizer
    from tunelab.tasks.classification import classify
    from tunelab.tasks.extractive_qa.spans import predict_spans

    tok = load_tokenizer(tiny_model_dir)
    texts = [f"a good film number {i} " * (i % 5 + 1) for i in range(20)]
    model = _model(tiny_model_dir).eval()
    align_pad_token(model, tok)  # the classifier reads the last token before the tokenizer's padding
    ref = classify(model, tok, texts, 64, batch_size=16, progress=False)
    FakeOOM(model, rows=3)
    torch.testing.assert_close(classify(model, tok, texts, 64, batch_size=16, progress=False), ref)

    qa = load_task_model(tiny_model_dir, "span").eval()
    examples = qa_examples(9)
    ref_preds, _, _ = predict_spans(qa, tok, examples, 48, 16, batch_size=16, progress=False)
    FakeOOM(qa, rows=2)
    preds, _, _ = predict_spans(qa, tok, examples, 48, 16, batch_size=16, progress=False)
    assert preds == ref_preds
