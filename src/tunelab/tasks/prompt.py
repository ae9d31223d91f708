"""Zero-shot prompts, for both kinds of task: a template with {placeholders}, optionally wrapped as the user
turn of the model's chat template, and an answer prefix that starts the model's answer.

A prompt is given as a template name (the task's own templates), a mapping, or a YAML/JSON file holding one.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from tunelab.config_files import read_mapping
from tunelab.errors import ModelError, UsageError
from tunelab.options import did_you_mean

PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass
class ChatPrompt:
    """`text` with {placeholders}; `chat` makes it the user turn of the model's chat template (after `system`,
    if given); `answer_prefix` follows the turn (or the plain text) and starts the answer."""

    text: str
    chat: bool = False
    system: str | None = None
    answer_prefix: str = ""

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def check_keys(cls, spec: dict) -> None:
        unknown = sorted(str(k) for k in set(spec) - set(cls.keys()))
        if unknown:
            raise UsageError(
                f"prompt: unknown keys {unknown}{did_you_mean(unknown, cls.keys())} (known: "
                f"{', '.join(cls.keys())})"
            )
        if not isinstance(spec.get("text"), str):
            raise UsageError("prompt: `text` must be a string")
        for key in ("system", "answer_prefix"):
            if spec.get(key) is not None and not isinstance(spec[key], str):
                raise UsageError(f"prompt: `{key}` must be a string")
        if not isinstance(spec.get("chat", False), bool):
            raise UsageError("prompt: `chat` must be true or false")
        if spec.get("system") is not None and not spec.get("chat"):
            raise UsageError("prompt: `system` is the chat template's system turn: it needs `chat: true`")

    @property
    def add_special_tokens(self) -> bool:
        """Whether the tokenizer adds its special tokens (Llama's BOS) to the rendered prompt: not to a chat
        template's, which writes its own (as `apply_chat_template(tokenize=True)` does)."""
        return not self.chat

    def fill(self, values: dict[str, str]) -> str:
        """The text with its placeholders replaced in one pass: a replacement (a passage with braces) is never
        read again as a placeholder. Unknown placeholders stay as they are."""
        return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), self.text)

    def wrap(self, tokenizer, user: str, demos: Sequence[tuple[str, str]] = ()) -> str:
        """The model's input: the user text, in the chat template when `chat`, then the answer prefix.
        `demos` (k-shot): (user text, answer) pairs shown first, each answered after the answer prefix - as
        earlier user and assistant turns of the chat, or as paragraphs before a plain prompt."""
        if not self.chat:
            shown = "".join(f"{u}{self.answer_prefix}{a}\n\n" for u, a in demos)
            return shown + user + self.answer_prefix
        if tokenizer.chat_template is None:
            raise UsageError(
                "this prompt needs a chat template and the tokenizer has none: use a plain template "
                "(--prompt plain)"
            )
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for u, a in demos:
            messages += [
                {"role": "user", "content": u},
                {"role": "assistant", "content": self.answer_prefix + a},
            ]
        messages.append({"role": "user", "content": user})
        from jinja2 import TemplateError

        try:
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except TemplateError as exc:
            raise ModelError(
                f"{tokenizer.name_or_path}: its chat template (chat_template.jinja or tokenizer_config.json) "
                f"cannot be applied: {exc}; use a prompt without `chat: true`, or fix the template"
            ) from None
        return text + self.answer_prefix


def prompt_mapping(spec: str | dict | None, templates: dict[str, dict], default: str) -> dict[str, Any]:
    """The mapping a prompt spec stands for: a template name (None: `default`), a mapping, or a file."""
    if spec is None:
        spec = default
    if isinstance(spec, dict):
        return spec
    if spec in templates:
        return templates[spec]
    names = ", ".join(templates) or "none"
    return read_mapping(
        spec,
        "prompt file",
        "text, chat, ...",
        unreadable=f"not a template name ({names}) or a readable prompt file",
    )


def build_prompt(
    spec: str | dict | None, templates: dict[str, dict], default: str, make: Callable[[dict], Any]
):
    """`make(mapping)` of the mapping `spec` stands for (`prompt_mapping`); a prompt file's errors name the
    file."""
    mapping = prompt_mapping(spec, templates, default)
    try:
        return make(mapping)
    except UsageError as exc:
        if isinstance(spec, str) and spec not in templates:
            raise UsageError(f"{spec}: {exc}") from None
        raise
