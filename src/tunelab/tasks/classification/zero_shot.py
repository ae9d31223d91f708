"""Zero-shot classification by label-word scoring: one forward pass per example gives every class's score (the
log-sum-exp of the probabilities of that class's verbalizers' first tokens at the next-token position), then
calibration corrects the classes' prior bias.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tunelab.errors import UsageError
from tunelab.inference import check_context, run_batches
from tunelab.prefix_cache import MIN_PREFIX, cache_argument, rows_of, shared_prefix
from tunelab.prefix_cache import prefix_cache as prefix_cache_of
from tunelab.tasks.prompt import ChatPrompt

CONTENT_FREE = ("N/A", "", "[MASK]")
CALIBRATIONS = ("batch", "contextual", "none")


@dataclass
class ClassificationPrompt(ChatPrompt):
    """A classification template: {text} (also written {sentence}) and, for sentence pairs, {text_pair};
    `verbalizers` give each label's words, scored where the answer starts."""

    verbalizers: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def from_mapping(
        cls, spec: dict, labels: Sequence[str], default_verbalizers: dict[str, list[str]], pairs: bool = False
    ) -> ClassificationPrompt:
        cls.check_keys(spec)
        text = spec["text"]
        if "{text}" not in text and "{sentence}" not in text:
            raise UsageError("prompt: `text` must contain {text} (or {sentence})")
        if pairs != ("{text_pair}" in text):
            need = "must contain" if pairs else "has no second text to put in"
            raise UsageError(
                f"prompt: `text` {need} {{text_pair}} (the task {'has' if pairs else 'has no'} "
                "sentence pairs)"
            )
        verbal = spec.get("verbalizers") or default_verbalizers
        if isinstance(verbal, dict):  # as the task's own: keys written as numbers, one word as a string
            verbal = {str(k): [v] if isinstance(v, str) else v for k, v in verbal.items()}
        if (
            not isinstance(verbal, dict)
            or set(verbal) != set(labels)
            or not all(
                isinstance(verbal[k], list) and verbal[k] and all(isinstance(w, str) and w for w in verbal[k])
                for k in labels
            )
        ):
            raise UsageError(f"prompt: verbalizers must give a list of words for each of {tuple(labels)}")
        return cls(
            text,
            bool(spec.get("chat", False)),
            spec.get("system"),
            spec.get("answer_prefix") or "",
            {k: list(verbal[k]) for k in labels},
        )

    def render(self, tokenizer, text: str, text_pair: str | None = None, shots: Sequence = ()) -> str:
        """The prompt for one input; `shots`: labelled examples (.text, .text_pair, .label: the label's
        index) shown first (k-shot), each answered with its label's first verbalizer word."""
        words = [w[0] for w in self.verbalizers.values()]
        demos = [(self._user(s.text, s.text_pair), words[s.label]) for s in shots]
        return self.wrap(tokenizer, self._user(text, text_pair), demos)

    def _user(self, text: str, text_pair: str | None) -> str:
        values = {"text": text, "sentence": text}
        if text_pair is not None:
            values["text_pair"] = text_pair
        return self.fill(values)


MIN_BATCH = 8  # inputs batch calibration needs to estimate the bias from


@dataclass
class Calibration:
    """How raw label scores are corrected. `contextual`: divide the class probabilities by those of
    content-free inputs (Zhao et al. 2021). `batch`: divide them by each class's mean probability over the
    evaluated inputs themselves (Batch Calibration, Zhou et al. 2024) — uses the inputs, never their labels;
    with fewer than MIN_BATCH inputs there is no mean to trust (one input's own scores would cancel) and none
    is applied, with a warning. `none`."""

    method: str = "batch"
    content_free: tuple[str, ...] = CONTENT_FREE
    offset: list[float] = field(default_factory=list)  # per-class log-prob offset that was applied

    def __post_init__(self):
        if self.method not in CALIBRATIONS:
            raise UsageError(f"unknown calibration {self.method!r}: expected batch, contextual or none")


def verbalizer_ids(tokenizer, prompt: ClassificationPrompt) -> list[list[int]]:
    """First token of each verbalizer, per class. Classes must not share a first token."""
    ids = []
    seen: dict[int, tuple[str, str]] = {}  # first token -> (label, word)
    for label, words in prompt.verbalizers.items():
        firsts = {}
        for word in words:
            token = tokenizer.encode(word, add_special_tokens=False)[0]
            if token in seen and seen[token][0] != label:
                other, other_word = seen[token]
                shown = tokenizer.convert_ids_to_tokens(token)
                raise UsageError(
                    f"verbalizers of {other!r} ({other_word!r}) and {label!r} ({word!r}) start with the same "
                    f"token {shown!r} in this model's tokenizer: their scores would be tied; give the labels "
                    "words that start differently (the task file's `verbalizers:`)"
                )
            firsts.setdefault(token, word)
        seen.update({token: (label, word) for token, word in firsts.items()})
        ids.append(sorted(firsts))
    return ids


def _fit(enc: list[list[int]], limit: int | None, cut: bool) -> list[list[int]]:
    """Prompts of at most `limit` tokens: longer ones lose their beginning (`cut`: the label word is scored at
    the end), with a warning; without `cut` (k-shot: the instruction and shots would go) they are refused."""
    over = check_context([len(e) for e in enc], limit, not cut, "prompts", f"each keeps its last {limit}")
    return [e[-limit:] for e in enc] if over else enc


@torch.no_grad()
def label_logprobs(
    model,
    tokenizer,
    texts: list[str],
    label_ids: list[list[int]],
    batch_size: int | str = 32,
    max_length: int | None = None,
    progress: bool = True,
    reuse_prefix: bool = True,
    add_special_tokens: bool = True,
    cut: bool = True,
) -> np.ndarray:
    """Log-probabilities (over the whole vocabulary, log-sum-exp within a class) of each class's verbalizers
    at the next-token position after each text: one forward pass per text, batched and sorted by length.

    reuse_prefix: the tokens every prompt starts with are run once, and their key/value cache serves every
    batch, which then computes only each prompt's own tokens (for SST-2's chat prompt, well over half the
    tokens are the shared prefix). The prefix is found on the token ids themselves, so every prompt's tokens
    are exactly those of the whole-prompt path, and so are its scores, up to float rounding.
    add_special_tokens: False for chat-rendered texts (`ChatPrompt.add_special_tokens`).
    max_length: the most tokens a prompt may have (None: the model's context length); a longer prompt keeps
    its end (`cut`, with a warning) or is refused (UsageError; k-shot prompts, whose shots would go)."""
    device = next(model.parameters()).device
    enc = [tokenizer(t, add_special_tokens=add_special_tokens).input_ids for t in texts]
    limit = max_length or getattr(model.config, "max_position_embeddings", None)  # the model's context
    enc = _fit(enc, limit, cut)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]), reverse=True)
    out = np.zeros((len(texts), len(label_ids)), dtype=np.float64)
    pad = tokenizer.pad_token_id
    start = shared_prefix(enc) if reuse_prefix else 0
    prefix_cache = None
    if start >= MIN_PREFIX:
        cache_key = cache_argument(model.model)
        prefix_cache = prefix_cache_of(model.model, torch.tensor([enc[order[0]][:start]], device=device), 1)
    else:
        start = 0

    def run(idx):
        width = max(len(enc[i]) for i in idx) - start
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), start + width), dtype=torch.long)
        for row, i in enumerate(idx):  # right padding: the last real token sits at len-1
            ids[row, : len(enc[i]) - start] = torch.tensor(enc[i][start:])
            mask[row, : len(enc[i])] = 1
        last = mask.sum(1) - 1 - start
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if prefix_cache is not None:
            cache = rows_of(prefix_cache, len(idx))
            positions = torch.arange(start, start + width, device=device).expand(len(idx), -1)
            inputs.update({cache_key: cache, "position_ids": positions, "use_cache": True})
        hidden = model.model(**inputs).last_hidden_state
        # Only the last position goes through the LM head: a full-vocabulary projection of every token is
        # waste.
        h = hidden[torch.arange(len(idx), device=device), last.to(device)]
        logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
        for c, cls_ids in enumerate(label_ids):
            out[idx, c] = torch.logsumexp(logp[:, cls_ids], dim=-1).cpu().numpy()

    # for batch_size auto, a prompt's whole length: the cached prefix is copied into every row
    lengths = [len(e) for e in enc]
    run_batches(
        order, batch_size, run, desc="zero-shot scoring", progress=progress, lengths=lengths, device=device
    )
    return out


def calibrate(
    scores: np.ndarray, calibration: Calibration, cf_scores: np.ndarray | None = None
) -> np.ndarray:
    """Apply a calibration to per-class log-probabilities; returns calibrated class log-probabilities."""
    if calibration.method == "none":
        offset = np.zeros(scores.shape[1])
    elif calibration.method == "batch" and len(scores) < MIN_BATCH:
        print(
            f"tunelab: warning: batch calibration needs at least {MIN_BATCH} inputs ({len(scores)} given): "
            "scored without it",
            file=sys.stderr,
        )
        offset = np.zeros(scores.shape[1])
    elif calibration.method == "batch":  # log of each class's mean probability (normalised over the classes)
        norm = scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)
        offset = np.logaddexp.reduce(norm, axis=0) - np.log(len(norm))
    else:  # contextual: p_cf averaged over content-free inputs, renormalised over the classes
        if cf_scores is None:
            raise ValueError("contextual calibration needs content-free scores")
        p = np.exp(cf_scores - np.logaddexp.reduce(cf_scores, axis=1, keepdims=True)).mean(axis=0)
        offset = np.log(p)
    calibration.offset = [float(x) for x in offset]
    cal = scores - offset
    return cal - np.logaddexp.reduce(cal, axis=1, keepdims=True)


def zero_shot(
    model,
    tokenizer,
    texts: list[str],
    prompt: ClassificationPrompt,
    calibration: Calibration,
    batch_size: int | str = 32,
    progress: bool = True,
    spread: Callable | None = None,
    content_free: list[str] | None = None,
    shots: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of rendered prompts `texts`: (raw class log-probs renormalised over the classes, calibrated
    ones). Predictions are the argmax. `spread(fn, texts)` applies the scorer (e.g. across processes:
    calibration then sees every text's scores). `content_free`: the rendered content-free prompts, for
    contextual calibration. `shots`: how many solved examples the prompts hold (an over-long k-shot prompt
    is refused rather than cut)."""
    label_ids = verbalizer_ids(tokenizer, prompt)
    special = prompt.add_special_tokens

    def score(xs):
        return label_logprobs(
            model,
            tokenizer,
            xs,
            label_ids,
            batch_size,
            progress=progress,
            add_special_tokens=special,
            cut=not shots,
        )

    raw = np.array(spread(score, texts) if spread else score(texts), dtype=np.float64)
    cf = None
    if calibration.method == "contextual":
        cf = label_logprobs(
            model,
            tokenizer,
            content_free or [],
            label_ids,
            batch_size,
            progress=False,
            add_special_tokens=special,
            cut=not shots,
        )
    norm = raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)
    return norm, calibrate(raw, calibration, cf)
