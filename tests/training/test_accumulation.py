"""Gradient accumulation and the data order: micro-batches of one optimizer step are weighted by their
examples (an epoch's short last batch counts per example, as in one large batch), and no seed replays another
seed's batch order in a later epoch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import tiny_train_config

from tunelab.models import load_task_model
from tunelab.training import TrainConfig, train
from tunelab.training.loop import Trainer


def _features(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        length = int(rng.integers(3, 12))
        ids = rng.integers(5, 300, size=length).tolist()
        out.append({"input_ids": ids, "attention_mask": [1] * length, "labels": i % 2})
    return out


def _cfg(**kw) -> TrainConfig:
    exact = {"learning_rate": 1e-3, "log_every": 1, "bf16": False, "max_grad_norm": 0.0}
    return tiny_train_config(**{**exact, "group_by_length": False, "share_prefix": "off", **kw})


def _trained(tiny_model_dir, feats, cfg, work):
    torch.manual_seed(0)
    model = load_task_model(tiny_model_dir, "classification").to(torch.float64)
    model.config.pad_token_id = 0
    result = train(model, feats, cfg, pad_id=0, work_dir=work, progress=False)
    return model.state_dict(), result


def test_accumulated_micro_batches_weigh_each_example_alike(tiny_model_dir, tmp_path):
    # 22 examples: batches of 4 (4, 4 | 4, 4 | 4, 2) two to a step, against batches of 8 (8 | 8 | 6)
    feats = _features(22)
    one, r1 = _trained(tiny_model_dir, feats, _cfg(batch_size=8), tmp_path / "b8")
    two, r2 = _trained(tiny_model_dir, feats, _cfg(batch_size=4, grad_accum=2), tmp_path / "b4x2")
    assert r1.steps == r2.steps == 3
    for a, b in zip(r1.log, r2.log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6)  # the last step's too: the mean over its 6
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-9, atol=1e-9, msg=k)


def test_no_seed_replays_another_seeds_batches(tiny_model_dir, tmp_path):
    feats = _features(40)

    def orders(seed):
        torch.manual_seed(0)
        model = load_task_model(tiny_model_dir, "classification")
        model.config.pad_token_id = 0
        cfg = _cfg(seed=seed, epochs=3, batch_size=4)
        trainer = Trainer(model, feats, cfg, pad_id=0, work_dir=tmp_path / f"s{seed}", progress=False)
        epochs: dict[int, list] = {}
        for epoch, _, batch, _, _ in trainer._micro_batches():
            epochs.setdefault(epoch, []).append(batch)
        return [epochs[e] for e in sorted(epochs)]

    s1, s2 = orders(1), orders(2)
    assert len(s1) == len(s2) == 3
    assert all(a != b for a in s1 for b in s2)
    from tunelab.training.batches import random_order

    assert s1[0] == random_order(40, 4, 1)  # the first epoch keeps the seed's own order
