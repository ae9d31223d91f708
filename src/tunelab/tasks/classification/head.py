"""The fine-tuned classifier: its input (the text inside the zero-shot prompt, so that the head reads the last
token where the zero-shot model reads its answer), its head initialised from the label words, and batched
inference."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tunelab import precision
from tunelab.inference import run_batches
from tunelab.prefix_cache import prefix_inputs
from tunelab.tasks.classification.zero_shot import ClassificationPrompt, verbalizer_ids
from tunelab.training.batches import pad_batch


def format_input(
    prompt: ClassificationPrompt | None, tokenizer, text: str, text_pair: str | None = None
) -> str:
    """Fine-tuning input: the text inside the zero-shot prompt, or the bare text when prompt is None
    (run_glue.py style; a pair's two texts on two lines)."""
    if prompt is None:
        return text if text_pair is None else f"{text}\n{text_pair}"
    return prompt.render(tokenizer, text, text_pair)


def encode(tokenizer, texts: list[str], max_length: int, add_special_tokens: bool = True) -> list[list[int]]:
    """Token ids; an over-long text loses its beginning, never its end (where a prompt puts the answer and the
    classifier reads the last token). `add_special_tokens`: False for chat-rendered texts (`ChatPrompt`)."""
    enc = tokenizer(texts, add_special_tokens=add_special_tokens).input_ids if texts else []
    return [ids[-max_length:] for ids in enc]


def head_init_from_verbalizers(tokenizer, prompt: ClassificationPrompt) -> Callable[[torch.nn.Module], None]:
    """Initialise the classification head from the LM head rows of the label words (each word's first token
    after the prompt, a bare "▁" skipped: `verbalizer_ids`), so fine-tuning starts from the zero-shot
    classifier instead of a random one (the head has the same shape: hidden x labels). An approximation of
    it: a label's row is the mean of its words' rows (the scorer takes the log-sum-exp of their
    probabilities), and two labels whose words start with the same token start from the same row."""

    def init(model):
        if not getattr(model.config, "tie_word_embeddings", False):
            return  # the task model has no LM head to copy from; keep the default initialisation
        emb = model.get_input_embeddings().weight
        ids = verbalizer_ids(tokenizer, prompt, move_spaces=False)  # the head reads the prompt's last token
        with torch.no_grad():
            rows = torch.stack([emb[cls_ids].mean(0) for cls_ids in ids])
            model.score.weight.copy_(rows.to(model.score.weight.dtype))

    return init


@torch.no_grad()
def classify(
    model,
    tokenizer,
    texts: list[str],
    max_length: int,
    batch_size: int | str = 64,
    progress: bool = True,
    share_prefix: bool | None = None,
    bf16: bool = True,
    add_special_tokens: bool = True,
) -> np.ndarray:
    """Class log-probabilities of a sequence-classification model, batched by length; logits leave the GPU
    batch by batch. share_prefix: each batch runs the tokens its inputs all start with once
    (tunelab.prefix_cache), the same scores up to float rounding; None: on a CPU (as training's
    share_prefix auto; benchmarks/eval_batching.py --classify-n measures it). bf16: bfloat16 autocast where
    `precision.bf16_autocast` allows it. add_special_tokens: as `encode`."""
    dev = next(model.parameters()).device
    share_prefix = dev.type == "cpu" if share_prefix is None else share_prefix
    ids = encode(tokenizer, texts, max_length, add_special_tokens)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = np.zeros((len(ids), model.config.num_labels))

    def run(idx):
        feats = [{"input_ids": ids[i], "attention_mask": [1] * len(ids[i])} for i in idx]
        pad = tokenizer.pad_token_id
        with precision.autocast(dev, bf16):
            # the prompt's shared start (chat template, instruction) once per batch, when there is one
            batch = prefix_inputs(model, feats, pad, dev) if share_prefix else None
            if batch is None:  # no KV cache: nothing reads it
                batch = {**{k: v.to(dev) for k, v in pad_batch(feats, pad).items()}, "use_cache": False}
            logits = model(**batch).logits
        out[idx] = torch.log_softmax(logits.float(), -1).cpu().numpy()

    lengths = [len(x) for x in ids]
    run_batches(order, batch_size, run, desc="evaluating", progress=progress, lengths=lengths, device=dev)
    return out
