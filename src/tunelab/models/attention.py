"""Bidirectional attention for a decoder's task model: no causal mask, so that every token attends to the
whole window (for the span head: passage tokens see what follows them).

transformers builds a Llama body's causal mask from the 2-D padding mask, but takes an already prepared 4-D
mask as it is (`masking_utils`: "If the mask is already 4D, simply return as-is"). A forward pre-hook on the
body turns the padding mask into that 4-D mask - every query may attend to every real (non-padding) key - so
the change reaches every caller (training loss, evaluation, `tunelab predict`) without touching them. SDPA
takes a boolean mask (True: attend); eager attention adds a float mask (0 or float32's minimum). Flash
attention takes no 4-D mask and is refused. A Hub export (`tunelab export`) loads as a plain, causal
transformers model: only tunelab's own loading keeps the setting (tunelab.json's `bidirectional`).
"""

from __future__ import annotations

import torch

from tunelab.errors import ModelError

_FLAG = "_tunelab_bidirectional"


def _hook(module: torch.nn.Module, args: tuple, kwargs: dict):
    args = list(args)
    if "attention_mask" in kwargs or len(args) < 2:
        mask = kwargs.get("attention_mask")
    else:
        mask = args[1]
    if mask is not None and mask.dim() == 4:
        return None  # a prepared mask (e.g. packing's): left alone
    if mask is None:
        ref = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ref is None:
            ref = kwargs["inputs_embeds"][..., 0]
        mask = torch.ones(ref.shape[:2], dtype=torch.long, device=ref.device)
    keys = mask.bool()[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
    if module.config._attn_implementation == "eager":
        full = torch.zeros(keys.shape, dtype=torch.float32, device=mask.device)
        full = full.masked_fill(~keys, torch.finfo(torch.float32).min)
    else:
        full = keys
    if "attention_mask" in kwargs or len(args) < 2:
        kwargs["attention_mask"] = full
    else:
        args[1] = full
    return tuple(args), kwargs


def make_bidirectional(model: torch.nn.Module) -> torch.nn.Module:
    """Switch off the causal mask of `model`'s transformer body (in place; once); returns the model."""
    from tunelab.models.loading import body

    inner = body(model)
    if getattr(inner, _FLAG, False):
        return model
    impl = getattr(inner.config, "_attn_implementation", "sdpa") or "sdpa"
    if "flash" in impl:
        raise ModelError(f"bidirectional attention needs sdpa or eager attention, not {impl}")
    inner.register_forward_pre_hook(_hook, with_kwargs=True)
    setattr(inner, _FLAG, True)
    return model


def is_bidirectional(model: torch.nn.Module) -> bool:
    from tunelab.models.loading import body

    return bool(getattr(body(model), _FLAG, False))
