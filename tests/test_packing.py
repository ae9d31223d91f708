"""Padding-free packing (tunelab.packing): the packer's bookkeeping, and packed losses and gradients equal to
the padded path's for both heads and every method (full, LoRA, head-only).

Equivalence runs the tiny Llama in float64. The packed and padded paths add up the same terms in different
groupings (other matmul shapes, a masked row instead of a padded one), so they may differ by rounding only:
float64's 1.1e-16 compounded over two layers stays near 1e-14 (measured: losses equal, gradients within
4e-16). The tolerance (1e-10 relative, 1e-12 absolute) keeps orders of margin above that, while a leak across
examples moves the loss by >= 1e-4 and the gradients by ~0.1 (the negative controls), far above it. In float32
the tolerance would have to be ~1e-5, near what a small leak changes in the loss."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
import torch

from tunelab.models import align_pad_token, load_task_model, load_tokenizer
from tunelab.models.params import LoraOptions, apply_method
from tunelab.packing import first_fit_decreasing, pack, packed_logits, packed_loss, plan_rows
from tunelab.tasks.extractive_qa.windows import span_loss
from tunelab.training.batches import pad_batch

TOL = {"rtol": 1e-10, "atol": 1e-12}
LENGTHS = [7, 19, 1, 12, 30, 4, 23, 9, 15, 2]  # varied, one single-token example; budget 40 packs 2-4 a row
BUDGET = 40


# ---- the packer --------------------------------------------------------------------------------------------


def _features(lengths, seed=0, span=False):
    rng = random.Random(seed)
    feats = []
    for i, n in enumerate(lengths):
        f = {"input_ids": [rng.randrange(1, 1000) for _ in range(n)], "attention_mask": [1] * n}
        if span:
            s = rng.randrange(n)
            f["start_positions"], f["end_positions"] = s, rng.randrange(s, n)
        else:
            f["labels"] = i % 2
        feats.append(f)
    return feats


@pytest.mark.parametrize("span", [False, True])
def test_pack_places_every_example_once_within_budget(span):
    rng = random.Random(1)
    lengths = [rng.randrange(1, 60) for _ in range(80)]
    feats = _features(lengths, span=span)
    b = pack(feats, 64, pad_id=0)
    rows, width = b.input_ids.shape
    assert width <= 64
    # every example exactly once: its segment id covers exactly its own tokens, at row/start
    for i, f in enumerate(feats):
        r, s, n = int(b.row[i]), int(b.start[i]), len(f["input_ids"])
        assert int(b.length[i]) == n
        assert b.input_ids[r, s : s + n].tolist() == f["input_ids"]
        assert b.position_ids[r, s : s + n].tolist() == list(range(n))  # restarts at 0 per example
        assert int((b.segment_ids == i).sum()) == n
        assert (b.segment_ids[r, s : s + n] == i).all()
        if span:  # labels shifted by the example's offset: the same token is labelled
            assert int(b.start_positions[i]) == s + f["start_positions"]
            assert int(b.end_positions[i]) == s + f["end_positions"]
            assert b.input_ids[r, b.start_positions[i]] == f["input_ids"][f["start_positions"]]
        else:
            assert int(b.labels[i]) == f["labels"]
            assert int(b.pool_index[i]) == s + n - 1  # no example ends with the pad id: its last token
    assert b.real_tokens == sum(lengths)
    # the filler: pad ids, one segment per row (ids >= examples), positions from 0
    filler = b.segment_ids >= len(feats)
    assert (b.input_ids[filler] == 0).all()
    assert int(filler.sum()) == rows * width - sum(lengths)
    for r in range(rows):
        tail = filler[r].nonzero().flatten()
        if len(tail):
            assert b.position_ids[r, tail].tolist() == list(range(len(tail)))
            assert tail.tolist() == list(range(int(tail[0]), width))  # at the end of the row
    # cu_seqlens: the segments of the flattened stream, in order
    seg = b.segment_ids.flatten()
    bounds = [0] + [j for j in range(1, len(seg)) if seg[j] != seg[j - 1]] + [len(seg)]
    assert b.cu_seqlens.tolist() == bounds
    assert b.cu_seqlens.dtype == torch.int32
    assert b.max_seqlen == max(bounds[k + 1] - bounds[k] for k in range(len(bounds) - 1))


def test_first_fit_decreasing_rows():
    rng = random.Random(2)
    lengths = [rng.randrange(1, 60) for _ in range(200)]
    plan = first_fit_decreasing(lengths, 64)
    assert sorted(i for r in plan for i in r) == list(range(200))
    assert all(sum(lengths[i] for i in r) <= 64 for r in plan)
    assert len(plan) <= -(-sum(lengths) // 64) * 11 // 9 + 1  # FFD's bound over the fewest rows possible
    assert [sorted(r) for r in first_fit_decreasing([6, 5, 4, 3, 2], 10)] == [[0, 2], [1, 3, 4]]  # optimal


def test_rows_and_fixed_shapes():
    feats = _features(LENGTHS)
    total = sum(LENGTHS)
    plan = plan_rows(LENGTHS, rows=3)  # rows only: the narrowest width that fits in 3 rows
    width = max(sum(LENGTHS[i] for i in r) for r in plan)
    assert len(plan) <= 3 and width >= -(-total // 3)
    assert len(plan_rows(LENGTHS, width - 1)) > 3 or len(plan_rows(LENGTHS, width)) <= 3
    b = pack(feats, BUDGET, pad_id=0, rows=6, fixed_width=True)  # static shape, filler rows at the end
    assert tuple(b.input_ids.shape) == (6, BUDGET)
    assert b.real_tokens == total and int((b.segment_ids < len(feats)).sum()) == total
    with pytest.raises(ValueError, match="more than rows"):
        pack(feats, BUDGET, pad_id=0, rows=2)
    with pytest.raises(ValueError, match="more than the row budget"):
        pack(feats, 29, pad_id=0)
    padded = dict(feats[0], attention_mask=[1] * 6 + [0])
    with pytest.raises(ValueError, match="padding in its attention_mask"):
        pack([padded], BUDGET, pad_id=0)
    with pytest.raises(ValueError, match="outside"):
        pack([{"input_ids": [1, 2], "start_positions": 0, "end_positions": 2}], BUDGET, pad_id=0)


def test_pool_index_follows_the_padded_rule():
    """LlamaForSequenceClassification reads the rightmost token that is not the pad id: an example ending with
    the pad id (EOS here) is read at its last other token, as on the padded path."""
    b = pack([{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 2, 2]}, {"input_ids": [2]}], 10, pad_id=2)
    s = b.start.tolist()
    assert b.pool_index.tolist() == [s[0] + 2, s[1] + 1, s[2]]


# ---- equivalence with the padded path ----------------------------------------------------------------------


def _model(model_dir, kind, method, attn="sdpa"):
    torch.manual_seed(0)  # the new head's and LoRA A's initialisation: the same model on every run
    tok = load_tokenizer(model_dir)
    model = load_task_model(model_dir, kind, dtype=torch.float64)
    align_pad_token(model, tok)
    if attn != "sdpa":
        model.set_attn_implementation(attn)
    model = apply_method(model, kind, method, LoraOptions(r=4, alpha=8, dropout=0.0))
    if method == "lora":  # B starts at zero, which would make every A gradient zero: test real ones
        g = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.data.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    model.eval()  # no dropout anywhere: the two paths must see the same function
    return model, tok.pad_token_id


def _real_features(pad_id, kind, seed=0):
    """Token ids from the vocabulary, never the pad id (except one example ending with it, for the
    classifier)."""
    rng = random.Random(seed)
    feats = []
    for n in LENGTHS:
        ids = [rng.choice([t for t in range(3, 380) if t != pad_id]) for _ in range(n)]
        f = {"input_ids": ids, "attention_mask": [1] * n}
        if kind == "span":
            s = rng.randrange(n)
            f["start_positions"], f["end_positions"] = s, rng.randrange(s, min(n, s + 5))
        else:
            f["labels"] = rng.randrange(2)
        feats.append(f)
    if kind == "classification":
        feats[3]["input_ids"][-1] = pad_id  # ends with EOS = pad: both paths read the token before
    return feats


def _span_loss_f64(model, batch):
    """tunelab.tasks.extractive_qa.windows.span_loss line for line, less its `.float()`: on a float64 model
    that cast to float32 would cap the comparison at float32's precision (test_span_loss_itself compares with
    span_loss as it is)."""
    inputs = {k: v for k, v in batch.items() if k not in ("start_positions", "end_positions")}
    out = model(**inputs)
    pad = batch["attention_mask"] == 0
    start = out.start_logits.masked_fill(pad, float("-inf"))
    end = out.end_logits.masked_fill(pad, float("-inf"))
    return (
        torch.nn.functional.cross_entropy(start, batch["start_positions"])
        + torch.nn.functional.cross_entropy(end, batch["end_positions"])
    ) / 2


def _padded_loss(model, feats, pad_id, kind, span_fn=_span_loss_f64):
    batch = pad_batch(feats, pad_id)
    return model(**batch).loss if kind == "classification" else span_fn(model, batch)


def _loss_and_grads(model, loss_fn):
    model.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None for g in grads.values())
    return loss.detach(), grads


def _assert_same(model, feats, pad_id, kind, packed_fn, span_fn=_span_loss_f64, tol=TOL):
    ref_loss, ref = _loss_and_grads(model, lambda: _padded_loss(model, feats, pad_id, kind, span_fn))
    loss, got = _loss_and_grads(model, packed_fn)
    torch.testing.assert_close(loss, ref_loss, **tol)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], **tol, msg=lambda m, n=name: f"{n}: {m}")
    assert any(bool(g.abs().max() > 1e-6) for g in ref.values())  # the comparison is not between zeros
    return ref_loss, ref


@pytest.mark.parametrize("method", ["full", "lora", "head"])
@pytest.mark.parametrize("kind", ["classification", "span"])
def test_packed_equals_padded(tiny_model_dir, kind, method):
    model, pad_id = _model(tiny_model_dir, kind, method)
    feats = _real_features(pad_id, kind)
    packed = pack(feats, BUDGET, pad_id=pad_id)
    assert packed.input_ids.shape[0] < len(feats)  # several examples share rows
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if method == "head":
        assert trainable and all(n.split(".")[0] in ("score", "qa_outputs") for n in trainable)
    if method == "lora":
        assert any("lora_A" in n for n in trainable) and any("modules_to_save" in n for n in trainable)
    _assert_same(model, feats, pad_id, kind, lambda: packed_loss(model, packed, kind))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_span_loss_itself(tiny_model_dir, method):
    """Against tunelab's span_loss as it is. It computes the softmax in float32 (its `.float()`), so the two
    agree to float32's rounding of a logsumexp over ~30 logits (~1e-6 relative), not to float64's."""
    model, pad_id = _model(tiny_model_dir, "span", method)
    feats = _real_features(pad_id, "span")
    packed = pack(feats, BUDGET, pad_id=pad_id)
    _assert_same(
        model,
        feats,
        pad_id,
        "span",
        lambda: packed_loss(model, packed, "span"),
        span_fn=span_loss,
        tol={"rtol": 2e-5, "atol": 1e-6, "check_dtype": False},
    )


@pytest.mark.parametrize("attn,mask", [("sdpa", "explicit"), ("eager", "positions"), ("eager", "explicit")])
@pytest.mark.parametrize("kind", ["classification", "span"])
def test_other_masks_and_static_shapes(tiny_model_dir, kind, attn, mask):
    """The 4-D mask built here and eager attention agree too, on a static-shape batch with filler rows."""
    model, pad_id = _model(tiny_model_dir, kind, "full", attn)
    feats = _real_features(pad_id, kind, seed=1)
    packed = pack(feats, BUDGET, pad_id=pad_id, rows=7, fixed_width=True)
    # transformers' eager attention takes its softmax in float32 even for a float64 model, so the two paths
    # agree to float32's rounding, whose sum order follows the thread count (measured with one thread: 2.3e-10
    # absolute); the negative controls below move the gradients by ~0.1
    tol = TOL if attn == "sdpa" else {"rtol": 1e-6, "atol": 1e-8}
    _assert_same(model, feats, pad_id, kind, lambda: packed_loss(model, packed, kind, mask=mask), tol=tol)


@pytest.mark.parametrize("kind", ["classification", "span"])
def test_negative_control_without_document_mask(tiny_model_dir, kind):
    """Packing with a plain causal mask over the row (examples see the ones before them) gives another loss
    and other gradients: the equivalence test can fail. Same positions, same tokens; only the mask differs."""
    model, pad_id = _model(tiny_model_dir, kind, "full")
    feats = _real_features(pad_id, kind)
    packed = pack(feats, BUDGET, pad_id=pad_id)
    ref_loss, ref = _loss_and_grads(model, lambda: _padded_loss(model, feats, pad_id, kind))
    leaky = replace(packed, segment_ids=torch.zeros_like(packed.segment_ids))  # one segment per row
    loss, got = _loss_and_grads(model, lambda: packed_loss(model, leaky, kind, mask="explicit"))
    # (measured: the loss moves by 1e-4 to 1e-2, the gradients by ~0.1; the tolerance is 1e-10 relative)
    assert abs(float(loss - ref_loss)) > 1e-6
    assert max(float((got[n] - ref[n]).abs().max()) for n in ref) > 1e-3
    # positions that do not restart (the row read as one sequence): wrong as well
    positions = torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids)
    unrestarted = replace(packed, position_ids=positions)
    assert abs(float(packed_loss(model, unrestarted, kind).detach() - ref_loss)) > 1e-6


def test_use_cache_would_silently_disable_the_document_mask(tiny_model_dir):
    """Why packed_loss passes use_cache=False: with the config's use_cache=True the model builds a cache, and
    with a cache transformers skips the packed-sequence detection and attends across the row. (Pins the
    transformers behaviour packing relies on: if this starts failing, the detection rules changed.)"""
    model, pad_id = _model(tiny_model_dir, "span", "full")
    assert model.config.use_cache
    feats = _real_features(pad_id, "span")
    packed = pack(feats, BUDGET, pad_id=pad_id)
    i = next(j for j in range(len(feats)) if int(packed.start[j]) > 0)  # an example with others before it
    r, s, n = int(packed.row[i]), int(packed.start[i]), int(packed.length[i])
    args = {"input_ids": packed.input_ids, "position_ids": packed.position_ids}
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([feats[i]["input_ids"]]), use_cache=False).start_logits[0]
        isolated = model(**args, use_cache=False).start_logits[r, s : s + n]
        leaking = model(**args).start_logits[r, s : s + n]  # use_cache from the config: True
    torch.testing.assert_close(isolated, alone, **TOL)
    assert float((leaking - alone).abs().max()) > 1e-4


def test_packed_logits_match_padded_predictions(tiny_model_dir):
    """The per-example outputs, not only the loss: pooled classification logits and span logits."""
    model, pad_id = _model(tiny_model_dir, "classification", "full")
    feats = _real_features(pad_id, "classification")
    packed = pack(feats, BUDGET, pad_id=pad_id)
    with torch.no_grad():
        ref = model(**{k: v for k, v in pad_batch(feats, pad_id).items() if k != "labels"}).logits
        torch.testing.assert_close(packed_logits(model, packed, "classification"), ref, **TOL)
    qa, pad_id = _model(tiny_model_dir, "span", "full")
    feats = _real_features(pad_id, "span")
    packed = pack(feats, BUDGET, pad_id=pad_id)
    with torch.no_grad():
        batch = pad_batch(feats, pad_id)
        out = qa(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        start, end = packed_logits(qa, packed, "span")
    longest = max(LENGTHS)
    for got, want in ((start, out.start_logits), (end, out.end_logits)):
        want = want[:, :longest].masked_fill(batch["attention_mask"][:, :longest] == 0, float("-inf"))
        torch.testing.assert_close(got, want, **TOL)
