"""Zero-shot extractive QA by generation: prompt templates, greedy answers, and their clean-up.

A template's `text` holds {context} and {question} (and may hold {title}); `chat` wraps it as the user turn of
the model's chat template, `answer_prefix` starts the answer for the model (an answer prefix ending in a quote
makes the closing quote end the answer). For SQuAD v2 a sentence asking the model to say "unanswerable" goes
where the template has {unanswerable} (in a plain template followed by a blank line, as plain prompts put each
part in its own paragraph), or in front of the text when it has none; for v1, {unanswerable} is removed.

The default (`chat`) starts the answer as `The answer is "`, so that the model writes a span and closes the
quote; without that prefix, SmolLM2-135M-Instruct answers in whole sentences, which costs exact match. Its
full-dev score on an H200 is in benchmarks/results/h200-smollm2-study/squad11-zeroshot/metrics.json.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import LogitsProcessorList

from tunelab.decoding import encode_with_passage, extractive_processor
from tunelab.errors import UsageError
from tunelab.inference import check_context, run_batches
from tunelab.prefix_cache import cache_argument, decoder_of, prefix_cache, rows_of, shared_prefix
from tunelab.tasks.extractive_qa.metrics import get_tokens
from tunelab.tasks.extractive_qa.question_words import content_words, is_echo, trim_answer
from tunelab.tasks.prompt import ChatPrompt, build_prompt
from tunelab.training.speed import bucket

NO_ANSWER_WORD = "unanswerable"
NO_ANSWER_SPELLINGS = (
    NO_ANSWER_WORD,
    " " + NO_ANSWER_WORD,
    NO_ANSWER_WORD.capitalize(),
    " " + NO_ANSWER_WORD.capitalize(),
)
# How zero-shot answers are decoded: free greedy generation; greedy generation constrained to spans of the
# passage (extractive); or free generation grounded in the passage afterwards (`ground_answer`), extractive
# for the answers that share no word with it - the best of the three on 175 SQuAD training questions and on
# every 20th official v1.1 dev question (benchmarks/results/squad-zeroshot-decoding-*.json), so the task
# option's default.
DECODINGS = ("free", "extractive", "grounded")
# What becomes of the question's words in answers (`question_words`): keep; or avoid - an answer made only of
# them is answered again, extractive, constrained to whole words, not to start at them and to hold another
# word, and every answer loses them (and stop words) at its ends (see `question_words`)
QUESTION_WORDS = ("keep", "avoid")
GROUNDING_SLACK = 2  # a grounded span may have this many words more than the generated answer
MAX_PROMPT_BUCKET = 1 << 20  # kv_cache static: a prompt is padded up to a power of two (16, 32, ...)
# Generation reuses a shared prefix this long or longer (k-shot's solved examples); a zero-shot prompt's
# shared chat-template turn (~30 tokens) keeps the whole-prompt path and so the answers of earlier runs.
MIN_GENERATION_PREFIX = 128
# stands for the passage while a prompt is rendered, to find where the passage is (`render_located`)
PASSAGE_MARK = "\ue000tunelab passage\ue001"
V2_NOTE = f'If the passage does not answer the question, answer "{NO_ANSWER_WORD}".'

TEMPLATES = {
    "plain": {  # lm-evaluation-harness's squadv2 prompt
        "text": "Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\n{unanswerable}Answer:",
        "chat": False,
    },
    "chat": {  # the default
        "text": "{context}\n\nAnswer the question with a short span copied exactly from the passage above. "
        "{unanswerable}\n\nQuestion: {question}",
        "chat": True,
        "answer_prefix": 'The answer is "',  # the model then writes a span and closes the quote
    },
}
DEFAULT_TEMPLATE = "chat"


@dataclass
class QAPrompt(ChatPrompt):
    @classmethod
    def from_mapping(cls, spec: dict) -> QAPrompt:
        cls.check_keys(spec)
        text = spec["text"]
        if "{context}" not in text or "{question}" not in text:
            raise UsageError("prompt: `text` must contain {context} and {question}")
        return cls(text, bool(spec.get("chat", False)), spec.get("system"), spec.get("answer_prefix") or "")

    def stop_strings(self) -> list[str]:
        """Where an answer ends: the line, and the closing quote when the answer prefix opens one."""
        return ["\n", '"'] if self.answer_prefix.endswith('"') else ["\n"]

    def render(
        self, tokenizer, ex, version_2: bool = False, shots: Sequence = (), context: str | None = None
    ) -> str:
        """The prompt for question `ex`; `shots`: solved questions shown first (k-shot), each answered with
        its first gold answer (the no-answer word when it has none), closed as the answer prefix opens.
        `context`: written in place of `ex.context`."""
        close = '"' if self.answer_prefix.endswith('"') else ""
        # after "Answer:" (a plain prompt) the model writes " Bergen"; after `The answer is "`, "Bergen"
        space = "" if self.answer_prefix[-1:] in ('"', " ", "\n") else " "
        demos = [
            (
                self._user(s, version_2),
                space + (s.answers[0]["text"] if s.answers else NO_ANSWER_WORD) + close,
            )
            for s in shots
        ]
        return self.wrap(tokenizer, self._user(ex, version_2, context), demos)

    def render_located(
        self, tokenizer, ex, version_2: bool = False, shots: Sequence = ()
    ) -> tuple[str, tuple[int, int] | None]:
        """(the prompt `render` gives, the (start, end) characters of `ex`'s passage in it): the prompt is
        rendered again with a mark in place of the passage, so the span is the passage's own place, never
        another copy of its text (in the question, a shot, or inside a word); its text is the passage as
        the template wrote it (a chat template may trim it). None where the prompt around the mark is not the
        prompt around the passage (a template that rewrites its content)."""
        text = self.render(tokenizer, ex, version_2, shots)
        marked = self.render(tokenizer, ex, version_2, shots, context=PASSAGE_MARK)
        at = marked.rfind(PASSAGE_MARK)  # a template with {context} twice: the last is the passage
        if at < 0:
            return text, None
        before = marked[:at].replace(PASSAGE_MARK, ex.context)
        after = marked[at + len(PASSAGE_MARK) :]
        end = len(text) - len(after)
        if len(before) <= end and text.startswith(before) and text.endswith(after):
            return text, (len(before), end)
        return text, None

    def _user(self, ex, version_2: bool, context: str | None = None) -> str:
        note = V2_NOTE if version_2 else ""
        prompt = self
        if version_2 and "{unanswerable}" not in self.text:
            prompt = QAPrompt(note + "\n\n" + self.text, self.chat, self.system, self.answer_prefix)
        user = prompt.fill(
            {
                "unanswerable": note + "\n\n" if note and not self.chat else note,
                "title": ex.title.replace("_", " "),
                "context": ex.context if context is None else context,
                "question": ex.question.strip(),
            }
        )
        return user


def load_prompt(spec: str | dict | None, templates: dict[str, dict] | None = None) -> QAPrompt:
    """A template name (chat, plain; None: the default), a mapping, or a YAML/JSON file defining one."""
    return build_prompt(spec, templates or TEMPLATES, DEFAULT_TEMPLATE, QAPrompt.from_mapping)


def clean_answer(generated: str, context: str, stop_strings=("\n",)) -> str:
    """The generation up to its first stop string, without surrounding quotes, trailing periods or whitespace;
    when that is not in the passage as written but is in it up to case, the passage's own characters."""
    answer = generated
    for stop in stop_strings:
        answer = answer.split(stop, 1)[0]
    quotes = " \t\"'“”‘’`"
    answer = answer.strip(quotes).rstrip(".").strip(quotes)  # SQuAD scoring drops punctuation anyway
    if answer and answer not in context:
        at = context.lower().find(answer.lower())
        if at >= 0 and context[at : at + len(answer)].lower() == answer.lower():
            answer = context[at : at + len(answer)]
    return answer


def ground_answer(answer: str, context: str, slack: int = GROUNDING_SLACK) -> str | None:
    """`answer` as a span of its passage: itself when the passage holds it; otherwise the passage span of at
    most `slack` words more than `answer` with the highest SQuAD token F1 against it (ties: the shorter, then
    the earlier), without the punctuation around it; None when no passage word shares a token with `answer`.

    A small model's free answer is often near a span but not one ("Mumbai's Sun Life Stadium" for "Sun Life
    Stadium"); the span keeps what it got right. Written by hand: a scan over the passage's words, each
    window's token overlap updated one word at a time (SQuAD normalises word by word, so a window's tokens
    are its words' tokens)."""
    if answer and answer in context:
        return answer
    want = Counter(get_tokens(answer))
    total = sum(want.values())
    if not total:
        return None
    words = [(m.start(), m.end(), get_tokens(m.group())) for m in re.finditer(r"\S+", context)]
    limit = len(answer.split()) + slack
    best, span = 0.0, (0, 0)
    for i, (begin, _, _) in enumerate(words):
        have: Counter = Counter()
        common = tokens = 0
        for _, end, toks in words[i : i + limit]:
            for t in toks:
                have[t] += 1
                tokens += 1
                common += have[t] <= want[t]
            if not common:
                continue
            f1 = 2 * common / (tokens + total)  # 2PR/(P+R) with P = common/tokens, R = common/total
            if f1 > best or (f1 == best and end - begin < span[1] - span[0]):
                best, span = f1, (begin, end)
    if not best:
        return None
    return context[span[0] : span[1]].strip(" \t\"'“”‘’`,;:!?()[]").rstrip(".")


def says_unanswerable(answer: str) -> bool:
    return answer.lower().startswith(NO_ANSWER_WORD)


def _first_token_ids(tokenizer, words: list[str]) -> list[int]:
    return sorted({tokenizer.encode(w, add_special_tokens=False)[0] for w in words})


def generate_answers(
    model,
    tokenizer,
    examples,
    prompt: QAPrompt,
    *,
    version_2: bool = False,
    batch_size: int | str = 32,
    max_new_tokens: int = 32,
    progress: bool = True,
    decoding: str = "free",
    shots: Sequence = (),
    kv_cache: str = "dynamic",
    reuse_prefix: bool = True,
    question_words: str = "keep",
) -> tuple[list[str], list[str], dict[str, float] | None]:
    """Greedy answers, batched by prompt length with left padding; stops at a newline (or the closing quote
    of a quoting answer prefix) or the token limit. `decoding`: "free"; "extractive" (each answer constrained
    to a span of its passage by `tunelab.decoding.ExtractiveSpans`; for v2 the no-answer word is allowed as a
    whole answer); or "grounded" (free answers, each replaced by `ground_answer`'s span of its passage; the
    questions whose answer shares no word with the passage answered again, extractive). `kv_cache`:
    "dynamic", or "static" (a cache preallocated per batch, which transformers' generate compiles on a GPU;
    the same greedy tokens). `question_words`: "keep", or "avoid" (see QUESTION_WORDS; for v2 an empty
    answer is the no-answer and stays, and a re-answer keeps the first answer's no-answer probability).
    `reuse_prefix` (dynamic cache only): when the prompts share a prefix of at least
    MIN_GENERATION_PREFIX tokens (in practice k-shot's solved examples; a zero-shot prompt's shared
    chat-template turn is shorter), it runs once, and each batch's generation starts from a copy of its
    key/value cache.

    Returns (raw generations, cleaned answers, na_probs or None). For v2, na_prob is a softmax over two scores
    of the first generated token: log p("unanswerable", summed over its spellings' first tokens) against the
    log p of the best other first token (the one greedy decoding took, unless it began "unanswerable").
    """
    if decoding not in DECODINGS:
        raise UsageError(f"decoding must be one of {', '.join(DECODINGS)}, got {decoding!r}")
    if question_words not in QUESTION_WORDS:
        raise UsageError(f"question_words must be one of {', '.join(QUESTION_WORDS)}, got {question_words!r}")
    kwargs = dict(
        version_2=version_2,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        progress=progress,
        shots=shots,
        kv_cache=kv_cache,
        reuse_prefix=reuse_prefix,
    )
    if decoding != "grounded":
        raw, answers, na = _generate(model, tokenizer, examples, prompt, decoding=decoding, **kwargs)
    else:
        # grounded: free answers grounded in their passages; the ones sharing no word with it (and empty
        # ones; for v2 an empty answer is the no-answer and stays) answered again, extractive
        raw, answers, na = _generate(model, tokenizer, examples, prompt, decoding="free", **kwargs)
        grounded = [
            a if version_2 and not a else ground_answer(a, ex.context)
            for a, ex in zip(answers, examples, strict=True)
        ]
        again = [k for k, g in enumerate(grounded) if g is None]
        if again:
            raw2, answers2, na2 = _generate(
                model, tokenizer, [examples[k] for k in again], prompt, decoding="extractive", **kwargs
            )
            for k, r, a in zip(again, raw2, answers2, strict=True):
                raw[k], grounded[k] = r, a
            if na is not None:
                na.update(na2 or {})
        answers = grounded
    if question_words == "avoid":
        echoes = [
            k
            for k, (a, ex) in enumerate(zip(answers, examples, strict=True))
            if not (version_2 and not a) and is_echo(a, ex.question)
        ]
        if echoes:
            again = [examples[k] for k in echoes]
            raw2, answers2, _ = _generate(
                model,
                tokenizer,
                again,
                prompt,
                decoding="extractive",
                avoid_words=[content_words(ex.question) for ex in again],
                **kwargs,
            )
            for k, r, a in zip(echoes, raw2, answers2, strict=True):
                if a or not version_2:  # v2: the first answer's decision to answer stands
                    raw[k], answers[k] = r, a
        answers = [trim_answer(a, ex.question) for a, ex in zip(answers, examples, strict=True)]
    return raw, answers, na


@torch.no_grad()
def _generate(
    model,
    tokenizer,
    examples,
    prompt: QAPrompt,
    *,
    version_2: bool,
    batch_size: int | str,
    max_new_tokens: int,
    progress: bool,
    decoding: str,
    shots: Sequence,
    kv_cache: str,
    reuse_prefix: bool,
    avoid_words: list[set[str]] | None = None,
) -> tuple[list[str], list[str], dict[str, float] | None]:
    """generate_answers with free or extractive decoding; `avoid_words` (extractive): per example, the words
    its answer avoids, in whole words (`tunelab.decoding.SpanTable`)."""
    dev = next(model.parameters()).device
    passages: list[list[int]] = []
    if decoding == "extractive":  # the passage as the prompt tokenises it, found where the template put it
        pairs = []
        for ex in examples:
            text, span = prompt.render_located(tokenizer, ex, version_2, shots)
            context, at = (text[span[0] : span[1]], span[0]) if span else (ex.context, None)
            pairs.append(
                encode_with_passage(
                    tokenizer, text, context, at=at, add_special_tokens=prompt.add_special_tokens
                )
            )
        enc, passages = [p for p, _ in pairs], [q for _, q in pairs]
    else:
        texts = [prompt.render(tokenizer, ex, version_2, shots) for ex in examples]
        enc = [tokenizer(t, add_special_tokens=prompt.add_special_tokens).input_ids for t in texts]
    # never cut: from the left a prompt would lose its instruction or passage (past its context a model
    # degrades, so zero-shot is answered with a warning)
    limit = getattr(model.config, "max_position_embeddings", 0)
    lengths = [len(e) + max_new_tokens for e in enc]
    check_context(lengths, limit, len(shots), "prompts, with their answer,", "their answers may suffer")
    order = sorted(range(len(enc)), key=lambda i: len(enc[i]), reverse=True)
    null_ids = (
        _first_token_ids(
            tokenizer,
            list(NO_ANSWER_SPELLINGS),
        )
        if version_2
        else []
    )
    raw = [""] * len(examples)
    na = np.zeros(len(examples))
    pad = tokenizer.pad_token_id

    # The shared prefix sits left of the padding: [prefix | pad | prompt's own tokens]; the attention mask
    # skips the pad, and generate numbers positions from the mask, so each row reads as its unpadded prompt.
    start = shared_prefix(enc) if reuse_prefix and kv_cache == "dynamic" else 0
    cached = None
    if start >= MIN_GENERATION_PREFIX:
        cached = prefix_cache(decoder_of(model), torch.tensor([enc[0][:start]], device=dev), 1)
    else:
        start = 0

    def run(idx):
        width = max(len(enc[i]) for i in idx) - start
        if kv_cache == "static":  # a few widths, so that a compiled generate sees a few shapes (more padding)
            width = bucket(width, top=MAX_PROMPT_BUCKET)
        ids = torch.full((len(idx), start + width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), start + width), dtype=torch.long)
        ids[:, :start] = torch.tensor(enc[idx[0]][:start])
        mask[:, :start] = 1
        for row, i in enumerate(idx):  # left padding: every prompt ends at the last column
            own = enc[i][start:]
            ids[row, ids.shape[1] - len(own) :] = torch.tensor(own)
            mask[row, ids.shape[1] - len(own) :] = 1
        cache = {}
        if cached is not None:
            cache = {cache_argument(decoder_of(model)): rows_of(cached, len(idx))}
        processors = LogitsProcessorList()
        if decoding == "extractive":
            processors.append(
                extractive_processor(
                    tokenizer,
                    [passages[i] for i in idx],
                    prompt_length=start + width,
                    stop_strings=prompt.stop_strings(),
                    extra_answers=NO_ANSWER_SPELLINGS if version_2 else (),
                    eos_token_id=model.generation_config.eos_token_id,
                    whole_words=avoid_words is not None,
                    avoid_words=[avoid_words[i] for i in idx] if avoid_words is not None else None,
                )
            )
        out = model.generate(
            input_ids=ids.to(dev),
            attention_mask=mask.to(dev),
            do_sample=False,
            max_new_tokens=max_new_tokens,
            stop_strings=prompt.stop_strings(),
            tokenizer=tokenizer,
            pad_token_id=pad,
            output_scores=version_2,
            return_dict_in_generate=True,
            logits_processor=processors,
            **({"cache_implementation": "static"} if kv_cache == "static" else {}),
            **cache,
        )
        new = out.sequences[:, start + width :].cpu()
        for row, i in enumerate(idx):
            raw[i] = tokenizer.decode(new[row], skip_special_tokens=True)
        if version_2:
            logp = torch.log_softmax(out.scores[0].float(), dim=-1).cpu()
            lp_null = torch.logsumexp(logp[:, null_ids], dim=-1)
            logp[:, null_ids] = -torch.inf
            lp_answer = logp.max(dim=-1).values
            na[idx] = torch.sigmoid(lp_null - lp_answer).numpy()  # softmax over the two

    # for batch_size auto: the prompt (as padded) and its answer
    widths = [bucket(len(e), MAX_PROMPT_BUCKET) if kv_cache == "static" else len(e) for e in enc]
    lengths = [w + max_new_tokens for w in widths]
    run_batches(
        order, batch_size, run, desc="zero-shot answering", progress=progress, lengths=lengths, device=dev
    )
    answers = [
        clean_answer(r, ex.context, prompt.stop_strings()) for r, ex in zip(raw, examples, strict=True)
    ]
    na_probs = None
    if version_2:
        na_probs = {ex.id: float(p) for ex, p in zip(examples, na, strict=True)}
        answers = [
            "" if (says_unanswerable(a) or na_probs[ex.id] > 0.5) else a
            for a, ex in zip(answers, examples, strict=True)
        ]
    return raw, answers, na_probs
