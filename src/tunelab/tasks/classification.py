"""SST-2 as a task: prompt templates and verbalizers for zero-shot scoring, calibration, and the classifier head's
input format for fine-tuning.

Zero-shot classification scores the label words at the next-token position of one prompt: one forward pass
per example gives every class's score (log-sum-exp over that class's verbalizer first tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tunelab.config_files import read_mapping
from tunelab.errors import UsageError
from tunelab.inference import run_batches

LABELS = ("negative", "positive")

# Templates: {sentence} is replaced; `chat` wraps the user text in the model's chat template (instruct models).
TEMPLATES = {
    "plain": {
        "text": "Review: {sentence}\nSentiment (positive or negative):",
        "chat": False,
        "verbalizers": {"negative": [" negative", " Negative"], "positive": [" positive", " Positive"]},
    },
    "harness": {  # lm-evaluation-harness's GLUE sst2 prompt
        "text": "{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:",
        "chat": False,
        "verbalizers": {"negative": [" negative"], "positive": [" positive"]},
    },
    "chat": {  # the model's chat template, the answer started for it: "Sentiment:" then the label word
        "text": "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n"
        "Review: {sentence}",
        "chat": True,
        "answer_prefix": "Sentiment:",
        "verbalizers": {"negative": [" negative", " Negative"], "positive": [" positive", " Positive"]},
    },
}
CONTENT_FREE = ("N/A", "", "[MASK]")


@dataclass
class Prompt:
    text: str
    chat: bool
    verbalizers: dict[str, list[str]]
    system: str | None = None
    answer_prefix: str = ""

    @classmethod
    def from_config(cls, spec: str | dict) -> Prompt:
        if isinstance(spec, str):
            if spec not in TEMPLATES:
                raise UsageError(f"unknown prompt template {spec!r}: expected {', '.join(TEMPLATES)} or a mapping")
            spec = TEMPLATES[spec]
        unknown = set(spec) - {"text", "chat", "verbalizers", "system", "answer_prefix"}
        if unknown:
            raise UsageError(f"prompt: unknown keys {sorted(unknown)}")
        if "{sentence}" not in spec.get("text", ""):
            raise UsageError("prompt: `text` must contain {sentence}")
        verbal = spec.get("verbalizers") or TEMPLATES["plain"]["verbalizers"]
        if set(verbal) != set(LABELS) or not all(verbal[k] for k in LABELS):
            raise UsageError(f"prompt: verbalizers must give words for each of {LABELS}")
        return cls(spec["text"], bool(spec.get("chat", False)), {k: list(verbal[k]) for k in LABELS},
                   spec.get("system"), spec.get("answer_prefix", ""))

    @classmethod
    def load(cls, spec: str | dict | None) -> Prompt:
        """A template name, a mapping, or a YAML/JSON file defining one (None: the default, `chat`)."""
        if spec is None or isinstance(spec, dict) or spec in TEMPLATES:
            return cls.from_config(spec or "chat")
        loaded = read_mapping(spec, "prompt file", "text, chat, verbalizers, ...",
                              unreadable=f"not a template name ({', '.join(TEMPLATES)}) or a readable prompt file")
        return cls.from_config(loaded)

    def render(self, tokenizer, sentence: str) -> str:
        user = self.text.replace("{sentence}", sentence)
        if not self.chat:
            return user
        if tokenizer.chat_template is None:
            raise UsageError("prompt template needs a chat template, and this tokenizer has none: use `plain`")
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + self.answer_prefix


@dataclass
class Calibration:
    """How raw label scores are corrected. `contextual`: divide the class probabilities by those of content-free
    inputs (Zhao et al. 2021). `batch`: subtract the mean log-probability of each class over the evaluated
    inputs themselves (Batch Calibration, Zhou et al. 2024) — uses the inputs, never their labels. `none`."""

    method: str = "batch"
    content_free: tuple[str, ...] = CONTENT_FREE
    offset: list[float] = field(default_factory=list)  # per-class log-prob offset that was applied

    def __post_init__(self):
        if self.method not in ("batch", "contextual", "none"):
            raise UsageError(f"unknown calibration {self.method!r}: expected batch, contextual or none")


def verbalizer_ids(tokenizer, prompt: Prompt) -> list[list[int]]:
    """First token of each verbalizer, per class. Classes must not share a first token."""
    ids = []
    for label in LABELS:
        firsts = sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in prompt.verbalizers[label]})
        ids.append(firsts)
    if set(ids[0]) & set(ids[1]):
        raise UsageError("verbalizers of different classes start with the same token: scores would be tied")
    return ids


@torch.no_grad()
def label_logprobs(model, tokenizer, texts: list[str], label_ids: list[list[int]], batch_size: int = 32,
                   max_length: int = 512, progress: bool = True) -> np.ndarray:
    """Log-probabilities (over the whole vocabulary, log-sum-exp within a class) of each class's verbalizers at
    the next-token position after each text: one forward pass per text, batched and sorted by length."""
    device = next(model.parameters()).device
    # an over-long prompt loses its beginning, never the end where the label word is scored
    enc = [tokenizer(t, add_special_tokens=True).input_ids[-max_length:] for t in texts]
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]), reverse=True)
    out = np.zeros((len(texts), len(label_ids)), dtype=np.float64)
    pad = tokenizer.pad_token_id

    def run(idx):
        width = max(len(enc[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):  # right padding: the last real token sits at len-1
            ids[row, : len(enc[i])] = torch.tensor(enc[i])
            mask[row, : len(enc[i])] = 1
        last = mask.sum(1) - 1
        hidden = model.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        # Only the last position goes through the LM head: a full-vocabulary projection of every token is waste.
        h = hidden[torch.arange(len(idx), device=device), last.to(device)]
        logp = torch.log_softmax(model.lm_head(h).float(), dim=-1)
        for c, cls_ids in enumerate(label_ids):
            out[idx, c] = torch.logsumexp(logp[:, cls_ids], dim=-1).cpu().numpy()

    run_batches(order, batch_size, run, desc="zero-shot scoring", progress=progress)
    return out


def calibrate(scores: np.ndarray, calibration: Calibration, cf_scores: np.ndarray | None = None) -> np.ndarray:
    """Apply a calibration to per-class log-probabilities; returns calibrated class log-probabilities."""
    if calibration.method == "none":
        offset = np.zeros(scores.shape[1])
    elif calibration.method == "batch":
        offset = scores.mean(axis=0)
    else:  # contextual: p_cf averaged over content-free inputs, renormalised over the classes
        if cf_scores is None:
            raise ValueError("contextual calibration needs content-free scores")
        p = np.exp(cf_scores - np.logaddexp.reduce(cf_scores, axis=1, keepdims=True)).mean(axis=0)
        offset = np.log(p)
    calibration.offset = [float(x) for x in offset]
    cal = scores - offset
    return cal - np.logaddexp.reduce(cal, axis=1, keepdims=True)


def zero_shot(model, tokenizer, sentences: list[str], prompt: Prompt, calibration: Calibration,
              batch_size: int = 32, progress: bool = True, spread=None) -> tuple[np.ndarray, np.ndarray]:
    """Returns (raw class log-probs renormalised over classes, calibrated ones). Predictions = argmax.
    `spread(fn, texts)` applies the scorer to the texts (e.g. `training.sharded_map`, across processes);
    calibration then sees every text's scores."""
    label_ids = verbalizer_ids(tokenizer, prompt)
    texts = [prompt.render(tokenizer, s) for s in sentences]

    def score(xs):
        return label_logprobs(model, tokenizer, xs, label_ids, batch_size, progress=progress)

    raw = np.array(spread(score, texts) if spread else score(texts), dtype=np.float64)
    cf = None
    if calibration.method == "contextual":
        cf = label_logprobs(model, tokenizer, [prompt.render(tokenizer, s) for s in calibration.content_free],
                            label_ids, batch_size, progress=False)
    norm = raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)
    return norm, calibrate(raw, calibration, cf)


def head_init_from_verbalizers(tokenizer, prompt: Prompt):
    """Initialise the classification head from the LM head rows of the label words, so fine-tuning starts
    from the zero-shot classifier instead of a random one (the head has the same shape: hidden x labels)."""

    def init(model):
        if not getattr(model.config, "tie_word_embeddings", False):
            return  # the task model has no LM head to copy from; keep the default initialisation
        emb = model.get_input_embeddings().weight
        ids = verbalizer_ids(tokenizer, prompt)
        with torch.no_grad():
            rows = torch.stack([emb[cls_ids].mean(0) for cls_ids in ids])
            model.score.weight.copy_(rows.to(model.score.weight.dtype))

    return init


def format_input(prompt: Prompt | None, tokenizer, sentence: str) -> str:
    """Fine-tuning input: the sentence inside the zero-shot prompt (the head reads the last token, where the
    zero-shot model reads its answer), or the bare sentence when prompt is None (run_glue.py style)."""
    return sentence if prompt is None else prompt.render(tokenizer, sentence)
