"""Zero-shot classification by label-word scoring: every class's score is the log-sum-exp of the probabilities
of that class's verbalizers after the prompt, each word whole (all its tokens, as lm-evaluation-harness scores
a continuation); one forward pass per example scores one-token words, and only longer words run further. Then
calibration corrects the classes' prior bias.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
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


Verbalizers = Mapping[str, Sequence[str | int]] | Sequence[Sequence[str | int]]
"""Each class's words (tokenized after each prompt) or token ids (one-token words), by label or in order."""


def trailing_spaces(texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each prompt without its trailing spaces, and those spaces: they are scored as the start of the words
    that follow (lm-evaluation-harness's rule), so a prompt ending in "Sentiment: " and the word "positive"
    score " positive" after "Sentiment:", a split the model has seen, not "positive" after a bare space."""
    contexts = [t.rstrip(" ") for t in texts]
    return contexts, [t[len(c) :] for t, c in zip(texts, contexts, strict=True)]


def word_tokens(
    tokenizer,
    texts: Sequence[str],
    enc: Sequence[list[int]],
    words: Sequence[str | int],
    special: bool,
    leads: Sequence[str] | None = None,
) -> list[list[tuple[int, ...]]]:
    """Each word's tokens after each prompt (`enc`: the prompts' tokens, `special`: their add_special_tokens;
    `leads`: each prompt's trailing spaces, taken off it, written before its words), found as
    lm-evaluation-harness finds a continuation's: the tokens of prompt+word after the prompt's own. Where
    the prompt's tokens are not a prefix of those (a merge across the boundary), the word is encoded alone.
    A token id stands for itself."""
    strs = list(dict.fromkeys(w for w in words if isinstance(w, str)))
    leads = leads or [""] * len(texts)
    alone = {
        lead + w: tuple(tokenizer.encode(lead + w, add_special_tokens=False))
        for lead in set(leads)
        for w in strs
    }
    empty = [w for w, ids in alone.items() if not ids]
    if empty:
        raise UsageError(f"verbalizers {empty} have no tokens in this tokenizer")
    joint = [t + lead + w for t, lead in zip(texts, leads, strict=True) for w in strs]
    joint_enc = tokenizer(joint, add_special_tokens=special).input_ids if joint else []
    out = []
    for i, e in enumerate(enc):
        found = {}
        for j, w in enumerate(strs):
            ids = joint_enc[i * len(strs) + j]
            # the prompt's tokens not a prefix of prompt+word's (a merge across the boundary): the word alone
            prefix = len(ids) > len(e) and ids[: len(e)] == e
            found[w] = tuple(ids[len(e) :]) if prefix else alone[leads[i] + w]
        out.append([(w,) if isinstance(w, int) else found[w] for w in words])
    return out


def _distinct(tokenizer, names: Sequence[str], flat: Sequence[tuple[int, str | int]], seqs) -> list[bool]:
    """Which of the words (`flat`: (class, word); `seqs`: their tokens) to score: a word of the same tokens as
    an earlier one of its class counts once; one of the same tokens as another class's is refused."""
    seen: dict[tuple[int, ...], int] = {}  # tokens -> the first word (its index in flat) of those tokens
    keep = []
    for k, ((c, word), seq) in enumerate(zip(flat, seqs, strict=True)):
        first = seen.setdefault(seq, k)
        other, other_word = flat[first]
        if other != c:
            raise UsageError(
                f"verbalizers of {names[other]!r} ({other_word!r}) and {names[c]!r} ({word!r}) start with "
                f"the same token and are the same whole word, {tokenizer.convert_ids_to_tokens(list(seq))},"
                " in this model's tokenizer: their scores would be tied; give the labels different words "
                "(the task file's `verbalizers:`)"
            )
        keep.append(first == k)
    return keep


def _classes(verbalizers: Verbalizers) -> tuple[list[str], list[tuple[int, str | int]]]:
    """Label names (class numbers where not given) and every (class, word)."""
    if isinstance(verbalizers, Mapping):
        names, words = [str(k) for k in verbalizers], list(verbalizers.values())
    else:
        names, words = [str(c) for c in range(len(verbalizers))], list(verbalizers)
    return names, [(c, w) for c, ws in enumerate(words) for w in ws]


def verbalizer_ids(tokenizer, prompt: ClassificationPrompt, move_spaces: bool = True) -> list[list[int]]:
    """Per class, the first token of each word as it follows the prompt (rendered around a stand-in text),
    a bare "▁" or other whitespace-only piece skipped (a SentencePiece tokenizer may start a word with one):
    the rows `head_init_from_verbalizers` starts from. `move_spaces`: the prompt's trailing spaces start
    the words, as zero-shot scores them (the fine-tuned head reads the whole prompt: False). Raises
    UsageError where two classes have a word of the same tokens (their scores would tie)."""
    text = prompt.render(tokenizer, "x", "x" if "{text_pair}" in prompt.text else None)
    special = prompt.add_special_tokens
    names, flat = _classes(prompt.verbalizers)
    (context,), leads = trailing_spaces([text]) if move_spaces else ([text], None)
    enc = tokenizer(context, add_special_tokens=special).input_ids
    seqs = word_tokens(tokenizer, [context], [enc], [w for _, w in flat], special, leads)[0]
    ids: list[set[int]] = [set() for _ in names]
    for (c, _), seq in zip(flat, seqs, strict=True):
        ids[c].add(next((t for t in seq if tokenizer.decode([t]).strip()), seq[0]))
    _distinct(tokenizer, names, flat, seqs)
    return [sorted(s) for s in ids]


def _fit(enc: list[list[int]], extra: list[int], limit: int | None, cut: bool) -> list[list[int]]:
    """Prompts that, with their longest word's tokens after the first (`extra`), take at most `limit` tokens:
    longer ones lose their beginning (`cut`: the label word is scored at the end), with a warning; without
    `cut` (k-shot: the instruction and shots would go) they are refused."""
    lengths = [len(e) + x for e, x in zip(enc, extra, strict=True)]
    then = f"each keeps its last {limit} tokens" + (
        ", less its label word's further tokens" if any(extra) else ""
    )
    over = check_context(lengths, limit, not cut, "prompts", then)
    return [e[-(limit - x) :] for e, x in zip(enc, extra, strict=True)] if over and limit else enc


def _rest_logprobs(
    model,
    cache,
    cache_key: str,
    mask: torch.Tensor,
    lengths: list[int],
    rows: list[int],
    seqs: list[tuple[int, ...]],
    pad: int,
) -> torch.Tensor:
    """log P(each word's tokens after its first | its prompt and first token): the batch's prompts are not
    run again, their key/value cache (`cache`, of the right-padded batch `mask`; `lengths`: each word's
    prompt's tokens) is taken by row (`rows`) and the words' tokens are computed after it."""
    device = next(model.parameters()).device
    n = max(len(s) for s in seqs) - 1
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    targets = torch.zeros((len(seqs), n), dtype=torch.long)
    own = torch.zeros((len(seqs), n), dtype=torch.long)
    for p, s in enumerate(seqs):
        ids[p, : len(s) - 1] = torch.tensor(s[:-1])
        targets[p, : len(s) - 1] = torch.tensor(s[1:])
        own[p, : len(s) - 1] = 1
    rows_t = torch.tensor(rows)
    cache.reorder_cache(rows_t.to(device))  # in place: the batch's cache, one row per word
    positions = torch.tensor(lengths)[:, None] + torch.arange(n)
    inputs = {
        "input_ids": ids.to(device),
        "attention_mask": torch.cat([mask[rows_t], own], 1).to(device),  # the prompt's pads stay masked
        "position_ids": positions.to(device),
        cache_key: cache,
        "use_cache": True,
    }
    logp = torch.log_softmax(model.lm_head(model.model(**inputs).last_hidden_state).float(), dim=-1)
    picked = logp.gather(2, targets.to(device)[..., None])[..., 0]
    return torch.where(own.to(device).bool(), picked, 0).double().sum(1)


@torch.no_grad()
def label_logprobs(
    model,
    tokenizer,
    texts: list[str],
    verbalizers: Verbalizers,
    batch_size: int | str = 32,
    max_length: int | None = None,
    progress: bool = True,
    reuse_prefix: bool = True,
    add_special_tokens: bool = True,
    cut: bool = True,
) -> np.ndarray:
    """Each class's log-probability after each text: the log-sum-exp over its words of log P(the word's
    tokens | text), each word's tokens as they follow that text (`word_tokens`); a word of the same tokens as
    another of its class counts once, as another class's is refused (UsageError). One forward pass per text,
    batched and sorted by length, gives every word's first token at the next-token position; only words of
    several tokens in context run further: their later tokens after the text's key/value cache, which is
    reused, not recomputed (`_rest_logprobs`).

    reuse_prefix: the tokens every prompt starts with are run once, and their key/value cache serves every
    batch, which then computes only each prompt's own tokens (for SST-2's chat prompt, well over half the
    tokens are the shared prefix). The prefix is found on the token ids themselves, so every prompt's tokens
    are exactly those of the whole-prompt path, and so are its scores, up to float rounding.
    add_special_tokens: False for chat-rendered texts (`ChatPrompt.add_special_tokens`).
    max_length: the most tokens a prompt (and its longest word) may have (None: the model's context length);
    a longer prompt keeps its end (`cut`, with a warning) or is refused (UsageError; k-shot prompts, whose
    shots would go)."""
    device = next(model.parameters()).device
    names, flat = _classes(verbalizers)
    leads = None  # (token ids given as words: the prompts are scored as they are)
    if all(isinstance(w, str) for _, w in flat):
        texts, leads = trailing_spaces(texts)
    enc = [tokenizer(t, add_special_tokens=add_special_tokens).input_ids for t in texts]
    seqs = word_tokens(tokenizer, texts, enc, [w for _, w in flat], add_special_tokens, leads)
    shape = (len(texts), len(flat))
    keep = np.array([_distinct(tokenizer, names, flat, s) for s in seqs], dtype=bool).reshape(shape)
    # words scored beyond their first token, per text
    longer = [[k for k, s in enumerate(row) if keep[i, k] and len(s) > 1] for i, row in enumerate(seqs)]
    limit = max_length or getattr(model.config, "max_position_embeddings", None)  # the model's context
    extra = [max((len(row[k]) - 1 for k in ks), default=0) for row, ks in zip(seqs, longer, strict=True)]
    enc = _fit(enc, extra, limit, cut)
    first = torch.tensor([[s[0] for s in row] for row in seqs], dtype=torch.long).reshape(shape)
    word_lp = np.zeros(shape, dtype=np.float64)  # log P(word | text)
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]), reverse=True)
    pad = tokenizer.pad_token_id
    cache_key = cache_argument(model.model)
    start = shared_prefix(enc) if reuse_prefix else 0
    prefix_cache = None
    if start >= MIN_PREFIX:
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
        pairs = [(row, i, k) for row, i in enumerate(idx) for k in longer[i]]
        if pairs:
            inputs["use_cache"] = True  # the words' further tokens are run after this cache
        out = model.model(**inputs)
        # Only the last position goes through the LM head: a full-vocabulary projection of every token is
        # waste.
        h = out.last_hidden_state[torch.arange(len(idx), device=device), last.to(device)]
        logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
        word_lp[idx] = logp.gather(1, first[idx].to(device)).double().cpu().numpy()
        if pairs:
            cache = getattr(out, "cache", None) or out.past_key_values
            rows, lengths = [r for r, _, _ in pairs], [len(enc[i]) for _, i, _ in pairs]
            words = [seqs[i][k] for _, i, k in pairs]
            rest = _rest_logprobs(model, cache, cache_key, mask, lengths, rows, words, pad)
            for (_, i, k), lp in zip(pairs, rest.tolist(), strict=True):
                word_lp[i, k] += lp

    # for batch_size auto, a prompt's whole length: the cached prefix is copied into every row
    lengths = [len(e) for e in enc]
    run_batches(
        order, batch_size, run, desc="zero-shot scoring", progress=progress, lengths=lengths, device=device
    )
    word_lp[~keep] = -np.inf
    classes = np.array([c for c, _ in flat])
    return np.stack([np.logaddexp.reduce(word_lp[:, classes == c], axis=1) for c in range(len(names))], 1)


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
    verbalizer_ids(tokenizer, prompt)  # refuses tied words before any text is scored
    special = prompt.add_special_tokens

    def score(xs):
        return label_logprobs(
            model,
            tokenizer,
            xs,
            prompt.verbalizers,
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
            prompt.verbalizers,
            batch_size,
            progress=False,
            add_special_tokens=special,
            cut=not shots,
        )
    norm = raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)
    return norm, calibrate(raw, calibration, cf)
