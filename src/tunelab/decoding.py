"""Extractive decoding: greedy generation constrained to spans of the passage.

Zero-shot SQuAD asks a chat model for a span of the passage, but a small model answers freely, with words the
passage does not hold (SmolLM2-135M: "Mumbai's Sun Life Stadium", "Dreem Miller"). `ExtractiveSpans`
is a transformers `LogitsProcessor` that leaves the model, at each step, only the tokens that keep its answer
a contiguous piece of the passage, plus a stop; every other token's score becomes -inf, so greedy decoding
takes the model's favourite *allowed* token.

The constraint, per batch row; the passage is the token ids it has inside the prompt, read as the bytes they
spell:

* **first answer token**: a token that spells the passage's text from the start of one of the passage's
  tokens, or from one byte later when that token starts with a space - the **space-less variant**. After an
  answer prefix such as `The answer is "` the model writes `Denver`, not ` Denver`, while the passage holds
  ` Denver` (byte-level BPE folds the space before a word into the word's token), so an answer must be able
  to start after that space;
* **every later token**: a token whose bytes continue the passage from where some occurrence of the answer so
  far ends - in any tokenization, not only the passage's own: the model spells "AFC" `A` + `FC` where the
  passage, "(AFC)", holds `AF` + `C`, and a token-by-token match would forbid the model's own spelling;
* **stops** - EOS and every token whose text starts, after optional spaces, with a stop string (`"`, a
  newline) - only after at least one answer token, and where it ends a character; a row that has stopped may
  only write EOS afterwards (so `generate` ends it even where its stop criteria would not notice a stop token
  such as `".`). Tokens that hold a stop string further in (`."`) are never allowed;
* optionally **extra answers**, allowed as whole answers from the first token whatever the passage (the
  no-answer word of SQuAD v2.0);
* optionally **whole words**: an answer starts where a word of the passage starts (or at the space before
  it) and stops only where a word ends;
* optionally **words to avoid** (the question's, when its first answer only repeated them; see
  `tunelab.tasks.extractive_qa.question_words`): an answer may not start at one of them, nor at a run of
  stop words leading into one, and may stop only once it holds a word that is neither one of them nor a stop
  word.

Answers are whole UTF-8 characters: an answer never starts on a continuation byte of the passage, and a stop
is allowed only where the answer so far ends a character (byte-level BPE splits a CJK character across
tokens, and a half character decodes as U+FFFD, which no passage holds).

`encode_with_passage` tokenises a prompt once and returns the passage's tokens as they are in it, given where
the passage starts in the prompt (`QAPrompt.render_located` knows; a search could find another copy, in the
question or inside a word); `extractive_processor` builds the processor for a batch. With left padding every
answer starts at the same column, the padded prompt width::

    located = [prompt.render_located(tok, ex) for ex in batch]  # (prompt, (start, end) of its passage)
    enc = [encode_with_passage(tok, text, text[a:b], at=a) for text, (a, b) in located]
    ids, mask = left_pad([p for p, _ in enc])
    proc = extractive_processor(tok, [q for _, q in enc], prompt_length=ids.shape[1])
    model.generate(input_ids=ids, attention_mask=mask, logits_processor=LogitsProcessorList([proc]),
                   do_sample=False, stop_strings=['\\n', '"'], tokenizer=tok, ...)

How it is computed: once per tokenizer, a map from each token's bytes to its id and the set of all token
prefixes (cached). Once per passage, the table of (byte position, token, length) for every vocabulary token
that spells the passage from that position (a walk along the prefix set from each byte: a few thousand set
look-ups, milliseconds). A row's state is the array of byte positions where the answer so far can end. Per
step: one (batch x vocabulary) fill with -inf and one indexed copy of the allowed scores for the whole batch;
per row, numpy work proportional to the table entries at the row's positions (all start positions at the first
step, usually one or a few positions after it). Nothing loops over the vocabulary while generating.

With `output_scores=True`, `generate` returns the constrained scores: a no-answer probability read from the
first step's scores (SQuAD v2.0) needs the no-answer spellings among the extra answers, or it sees -inf.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Collection, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

DEFAULT_STOP_STRINGS = ("\n", '"')

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {what: value}


def _cache(tokenizer) -> dict:
    try:
        return _CACHE.setdefault(tokenizer, {})
    except TypeError:  # not weak-referenceable: no cache
        return {}


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 bytes (as in its `bytes_to_unicode`), character -> byte."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id spells (None for special and added tokens). Byte-level BPE (GPT-2, Llama 3,
    SmolLM2) maps exactly; otherwise SentencePiece conventions (`▁` a space, `<0x41>` a byte) are assumed.
    Cached per tokenizer."""
    cache = _cache(tokenizer)
    if "bytes" not in cache:
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
        alphabet = _byte_level_alphabet()
        byte_level = all(p is None or all(ch in alphabet for ch in p) for p in pieces)
        out: list[bytes | None] = []
        for i, p in enumerate(pieces):
            if p is None or i in special:
                out.append(None)
            elif byte_level:
                out.append(bytes(alphabet[ch] for ch in p))
            elif len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
                out.append(bytes([int(p[3:5], 16)]))
            else:
                out.append(p.replace("▁", " ").encode("utf-8"))
        cache["bytes"] = out
    return cache["bytes"]


def _is_stop(text: str, stop_strings: Sequence[str]) -> bool:
    return bool(stop_strings) and text.lstrip(" \t").startswith(tuple(stop_strings))


def stop_token_ids(tokenizer, stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS) -> np.ndarray:
    """Ids of the tokens that end an answer: every token whose text, after optional spaces or tabs, starts
    with one of `stop_strings`, and the tokenizer's EOS. Computed once per tokenizer and cached."""
    key = ("stops", tuple(stop_strings))
    cache = _cache(tokenizer)
    if key not in cache:
        ids = {
            i
            for i, b in enumerate(token_bytes(tokenizer))
            if b is not None and _is_stop(b.decode("utf-8", errors="replace"), stop_strings)
        }
        if tokenizer.eos_token_id is not None:
            ids.add(tokenizer.eos_token_id)
        cache[key] = np.array(sorted(ids), dtype=np.int64)
    return cache[key]


def _vocabulary(tokenizer, stop_strings: Sequence[str]) -> tuple[dict[bytes, int], set[bytes]]:
    """(bytes -> token id, every prefix of those bytes) over the tokens an answer may contain: all but special
    tokens and tokens holding a stop string after their start. Cached per tokenizer."""
    key = ("vocabulary", tuple(stop_strings))
    cache = _cache(tokenizer)
    if key not in cache:
        spelled: dict[bytes, int] = {}
        prefixes: set[bytes] = set()
        for i, b in enumerate(token_bytes(tokenizer)):
            if not b or b in spelled:
                continue
            text = b.decode("utf-8", errors="replace")
            if any(s in text for s in stop_strings) and not _is_stop(text, stop_strings):
                continue
            spelled[b] = i
            prefixes.update(b[:k] for k in range(1, len(b) + 1))
        cache[key] = (spelled, prefixes)
    return cache[key]


def _words(passage: bytes) -> list[tuple[int, int, str]]:
    """(start byte, end byte, lowercased word) of each `\\w+` word of the UTF-8 `passage`."""
    text = passage.decode("utf-8", errors="surrogateescape")  # one character per undecodable byte
    at = np.cumsum([0] + [len(ch.encode("utf-8", errors="surrogateescape")) for ch in text])
    return [(int(at[m.start()]), int(at[m.end()]), m.group().lower()) for m in re.finditer(r"\w+", text)]


def _ranges(off: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The concatenated index ranges off[p]:off[p+1] for p in positions."""
    lo, hi = off[positions], off[positions + 1]
    lengths = hi - lo
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(lo - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return shift + np.arange(total)


class SpanTable:
    """What the answers of one passage may be, as a table over byte positions.

    `segments` are the passage's bytes and each extra answer's; position p is a byte of their concatenation
    with one empty position after each segment (segment k starts at the sum of len + 1 of those before it).
    Entry e of the table says that token `tok[e]` spells the bytes from position `pos[e]` on for `length[e]`
    bytes, never across a segment's end; entries are sorted by position; `off[p]:off[p+1]` are position p's.
    `starts` are the positions a first answer token may start at: each passage token's start, one byte later
    where that byte is a space, and each extra answer's start, but never a UTF-8 continuation byte (a token
    may start mid-character). `boundary[p]`: whether an answer ending before position p ends a character. A
    row's state is the array of positions where its answer so far can end.

    `whole_words`: starts only where no word character precedes a word's first byte (or at the space before
    a word), and `stops_at` only where a word ends. `avoid_words` (lowercased): no start inside one of these
    words of the passage, or a run of stop words leading into one, or the space before either; `stops_at`
    only once the answer holds a byte of a `new` word, one that is neither avoided nor a stop word (extra
    answers count as new).
    """

    def __init__(
        self,
        segments: Sequence[bytes],
        starts: np.ndarray,
        spelled: dict[bytes, int],
        prefixes: set[bytes],
        stop_ids: np.ndarray,
        *,
        whole_words: bool = False,
        avoid_words: Collection[str] = (),
    ):
        pos, tok, length = [], [], []
        base = 0
        for seg in segments:  # one empty position after each segment, so that none runs on into the next
            for c in range(len(seg)):
                end = c + 1
                while end <= len(seg) and seg[c:end] in prefixes:
                    t = spelled.get(seg[c:end])
                    if t is not None:
                        pos.append(base + c)
                        tok.append(t)
                        length.append(end - c)
                    end += 1
            base += len(seg) + 1
        self.size = base
        joined = b"".join(seg + b"\0" for seg in segments)  # a NUL at each empty position
        self.boundary = np.frombuffer(joined + b"\0", dtype=np.uint8) & 0xC0 != 0x80
        self.pos = np.array(pos, dtype=np.int64)
        self.tok = np.array(tok, dtype=np.int64)
        self.length = np.array(length, dtype=np.int64)
        self.off = np.searchsorted(self.pos, np.arange(base + 2)).astype(np.int64)  # positions 0..base
        starts = np.unique(np.asarray(starts, dtype=np.int64))
        starts = starts[self.boundary[starts]]
        # per position: inside a word; inside a new word (see above)
        self.word = np.zeros(base + 2, dtype=bool)
        self.new = np.ones(base + 2, dtype=bool)
        self.new[: len(segments[0]) + 1] = False
        self.whole_words, self.avoiding = whole_words, bool(avoid_words)
        if whole_words or avoid_words:
            from sklearn.feature_extraction.text import (
                ENGLISH_STOP_WORDS as stop,
            )  # a slow import: only when used

            words = _words(segments[0])
            banned = np.zeros(base + 2, dtype=bool)
            leads_in = False  # the next word is avoided, or a stop word leading into one
            for a, b, w in reversed(words):
                self.word[a:b] = True
                self.new[a:b] = w not in avoid_words and w not in stop
                leads_in = bool(avoid_words) and (w in avoid_words or (leads_in and w in stop))
                if leads_in:
                    banned[max(a - 1, 0) if segments[0][a - 1 : a] == b" " else a : b] = True
            if whole_words:
                banned[1:] |= self.word[1:] & self.word[:-1]  # inside a word, past its first byte
            if not banned[starts].all():  # a passage of only avoided words keeps its starts
                starts = starts[~banned[starts]]
        self.starts = starts
        self._new_before = np.concatenate([[0], np.cumsum(self.new)])  # new positions before each position
        first = self.tok[_ranges(self.off, self.starts)]
        self.first_tokens = np.unique(first[~np.isin(first, stop_ids)])  # a stop cannot be the first token

    def allowed(self, positions: np.ndarray) -> np.ndarray:
        """Tokens that continue an answer ending at any of `positions` (with repeats)."""
        return self.tok[_ranges(self.off, positions)]

    def stops_at(self, positions: np.ndarray, length: int) -> bool:
        """Whether an answer of `length` bytes ending at `positions` may stop there: where it ends a
        character, and the options' conditions (see the class docstring) hold for one of its occurrences."""
        ok = self.boundary[positions]
        if self.whole_words:
            ok = ok & ~self.word[positions]
        if self.avoiding:
            ok = ok & (self._new_before[positions] > self._new_before[np.maximum(positions - length, 0)])
        return bool(ok.any())

    def step(self, positions: np.ndarray, token_id: int) -> tuple[np.ndarray, int]:
        """Where the answer can end after `token_id` was written to an answer ending at `positions`, and the
        token's length in bytes."""
        idx = _ranges(self.off, positions)
        idx = idx[self.tok[idx] == token_id]
        return np.unique(self.pos[idx] + self.length[idx]), int(self.length[idx[0]]) if len(idx) else 0


def span_table(
    tokenizer,
    passage_ids: Sequence[int],
    *,
    extra_answers: Sequence[str] = (),
    stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
    whole_words: bool = False,
    avoid_words: Collection[str] = (),
) -> SpanTable:
    """The `SpanTable` of a passage given as the token ids it has in the prompt (the options: `SpanTable`)."""
    spelled, prefixes = _vocabulary(tokenizer, stop_strings)
    pieces = token_bytes(tokenizer)
    starts, passage, at = [], [], 0
    for t in passage_ids:
        b = pieces[int(t)] or b""
        starts.append(at)
        if b[:1] == b" " and b[1:2] not in (b"", b" "):
            starts.append(at + 1)  # the space-less variant
        passage.append(b)
        at += len(b)
    segments = [b"".join(passage)] + [a.encode("utf-8") for a in extra_answers]
    at += 1  # the empty position after the passage (see SpanTable)
    for seg in segments[1:]:
        starts.append(at)
        at += len(seg) + 1
    return SpanTable(
        segments,
        np.array(starts, dtype=np.int64),
        spelled,
        prefixes,
        stop_token_ids(tokenizer, stop_strings),
        whole_words=whole_words,
        avoid_words=frozenset(avoid_words),
    )


class ExtractiveSpans(LogitsProcessor):
    """Greedy generation constrained to spans of each row's passage (see the module docstring).

    `tables[i]` is the passage of batch rows i*rows_per_table .. (i+1)*rows_per_table - 1 (more than one row
    per passage under num_beams or num_return_sequences, which repeat each prompt in place). `prompt_length`
    is the column where answers start (the padded prompt width, the same for every row with left padding);
    None takes it from the first call. `stop_ids` end an answer; a row that wrote one may then write only
    `eos_ids`.

    Each row's state (the byte positions where its answer so far can end) is updated with each new token. When
    a row's generated tokens are not the ones it has seen (beam search reorders rows; the processor is reused
    for another `generate` call), its state is rebuilt from its tokens.
    """

    def __init__(
        self,
        tables: Sequence[SpanTable],
        stop_ids: np.ndarray,
        *,
        prompt_length: int | None = None,
        eos_ids: Sequence[int] = (),
        rows_per_table: int = 1,
    ):
        self.tables = list(tables)
        self.stop_ids = np.asarray(stop_ids, dtype=np.int64)
        self._stop_set = frozenset(int(t) for t in self.stop_ids)
        self.eos_ids = np.asarray(sorted({int(e) for e in eos_ids}), dtype=np.int64)
        if not len(self.eos_ids):
            self.eos_ids = self.stop_ids
        self.prompt_length = prompt_length
        self.rows_per_table = rows_per_table
        rows = len(self.tables) * rows_per_table
        self._seen = [np.zeros(0, dtype=np.int64) for _ in range(rows)]  # each row's answer tokens so far
        self._positions = [t.starts for t in self.tables for _ in range(rows_per_table)]
        self._length = [0] * rows  # each row's answer so far, in bytes
        self._done = [False] * rows

    def _table(self, row: int) -> SpanTable:
        return self.tables[row // self.rows_per_table]

    def _reset(self, row: int) -> None:
        self._seen[row] = np.zeros(0, dtype=np.int64)
        self._positions[row] = self._table(row).starts
        self._length[row] = 0
        self._done[row] = False

    def _consume(self, row: int, token_id: int, first: bool) -> None:
        if self._done[row]:
            return
        if not first and token_id in self._stop_set:
            self._done[row] = True
        else:
            self._positions[row], length = self._table(row).step(self._positions[row], token_id)
            self._length[row] += length

    def _sync(self, generated: np.ndarray) -> None:
        for row, tokens in enumerate(generated):
            seen = self._seen[row]
            if len(seen) > len(tokens) or not np.array_equal(tokens[: len(seen)], seen):
                self._reset(row)
                seen = self._seen[row]
            for i in range(len(seen), len(tokens)):  # usually the one token of the last step
                self._consume(row, int(tokens[i]), first=i == 0)
            self._seen[row] = tokens.copy()

    def allowed(self, row: int) -> np.ndarray:
        """The token ids row `row` may write next (as of the last call), possibly with repeats."""
        if self._done[row]:
            return self.eos_ids
        table = self._table(row)
        if len(self._seen[row]) == 0:
            return table.first_tokens
        positions = self._positions[row]
        more = table.allowed(positions)
        # no stop in the middle of a character (or a word, or before a new word, as the table says), unless
        # nothing can continue the answer (or it left the passage)
        if len(more) and len(positions) and not table.stops_at(positions, self._length[row]):
            return more
        return np.concatenate([more, self.stop_ids])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        batch, length = input_ids.shape
        if batch != len(self._seen):
            raise ValueError(
                f"ExtractiveSpans was built for {len(self._seen)} rows "
                f"({len(self.tables)} passages x {self.rows_per_table}), got a batch of {batch}"
            )
        if self.prompt_length is None:
            self.prompt_length = length
        if length < self.prompt_length:
            raise ValueError(
                f"input of {length} tokens is shorter than the prompt length {self.prompt_length}"
            )
        self._sync(input_ids[:, self.prompt_length :].cpu().numpy())
        cols = [self.allowed(r) for r in range(batch)]
        rows = np.repeat(np.arange(batch), [len(c) for c in cols])
        cols = np.concatenate(cols)
        keep = cols < scores.shape[-1]  # a tokenizer may know ids the model's output layer does not
        r = torch.from_numpy(rows[keep]).to(scores.device)
        c = torch.from_numpy(cols[keep]).to(scores.device)
        out = torch.full_like(scores, -torch.inf)
        out[r, c] = scores[r, c]
        return out


def encode_with_passage(
    tokenizer, text: str, context: str, *, at: int | None, add_special_tokens: bool = False
) -> tuple[list[int], list[int]]:
    """(prompt ids, passage ids): `text` encoded once, and those of its tokens that lie inside the passage
    `context`, which starts at character `at` of `text` (`QAPrompt.render_located`), a token's leading
    whitespace not counted (after "Background: " the first word is the token " Denver"), so the passage is
    exactly what the model reads in the prompt. The caller says where the passage is: a search for `context`
    could find another copy of it (in the question, a k-shot demonstration, or inside a word: "art" in
    "<|im_start|>"). `add_special_tokens` as for the prompt itself (False for a chat template, which writes
    its own).

    `at` None (the prompt does not hold the passage as written), or a tokenizer that is not fast (no offsets):
    the passage is encoded on its own. tunelab's zero-shot prompts are not truncated; a caller that truncates
    a prompt should keep only the passage ids that survive.
    """
    if at is not None and text[at : at + len(context)] != context:
        raise ValueError(f"the passage is not at character {at} of the prompt")
    if at is None or not getattr(tokenizer, "is_fast", False):
        ids = tokenizer(text, add_special_tokens=add_special_tokens).input_ids
        return list(ids), list(tokenizer.encode(context, add_special_tokens=False))
    start, end = at, at + len(context)
    enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    passage = []
    for t, (a, b) in zip(enc.input_ids, enc.offset_mapping, strict=True):
        piece = text[a:b]
        lead = a + len(piece) - len(piece.lstrip())  # byte-level BPE: " Denver"'s offset includes its space
        if a < b <= end and (start <= a or start <= lead < b):
            passage.append(t)
    if not passage and context.strip():
        # an internal error: extractive decoding would have no first token and run unconstrained
        raise RuntimeError(
            f"no token of the prompt lies inside its passage (characters {start}-{end}, {context[:40]!r}): "
            "the prompt's tokens straddle the passage's edges"
        )
    return list(enc.input_ids), passage


def extractive_processor(
    tokenizer,
    passages: Sequence[Sequence[int]],
    *,
    prompt_length: int | None = None,
    stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
    extra_answers: Sequence[str] = (),
    eos_token_id: int | Sequence[int] | None = None,
    rows_per_passage: int = 1,
    whole_words: bool = False,
    avoid_words: Sequence[Collection[str]] | None = None,
) -> ExtractiveSpans:
    """An `ExtractiveSpans` for a batch: `passages[i]` the passage token ids of row i (from
    `encode_with_passage`), `prompt_length` the padded prompt width, `stop_strings` those given to `generate`.
    `extra_answers`: texts allowed as whole answers whatever the passage; for SQuAD v2.0 the no-answer word as
    the model would write it after the answer prefix ("unanswerable", "Unanswerable"). `eos_token_id` adds to
    the tokenizer's EOS (e.g. the model's `generation_config.eos_token_id`). `whole_words`, and
    `avoid_words[i]` for passage i: see `SpanTable`."""
    eos = (
        []
        if eos_token_id is None
        else [eos_token_id]
        if isinstance(eos_token_id, int)
        else list(eos_token_id)
    )
    if tokenizer.eos_token_id is not None:
        eos.append(tokenizer.eos_token_id)
    stops = np.union1d(stop_token_ids(tokenizer, stop_strings), np.array(eos, dtype=np.int64))
    avoid = avoid_words if avoid_words is not None else [()] * len(passages)
    if len(avoid) != len(passages):
        raise ValueError(f"{len(avoid)} sets of words to avoid for {len(passages)} passages")
    tables = [
        span_table(
            tokenizer,
            ids,
            extra_answers=extra_answers,
            stop_strings=stop_strings,
            whole_words=whole_words,
            avoid_words=words,
        )
        for ids, words in zip(passages, avoid, strict=True)
    ]
    return ExtractiveSpans(
        tables, stops, prompt_length=prompt_length, eos_ids=eos, rows_per_table=rows_per_passage
    )


__all__ = [
    "DEFAULT_STOP_STRINGS",
    "ExtractiveSpans",
    "SpanTable",
    "encode_with_passage",
    "extractive_processor",
    "span_table",
    "stop_token_ids",
    "token_bytes",
]
