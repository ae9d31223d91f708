"""SQuAD as a zero-shot task: prompt templates for generative answering, and the clean-up of generated
answers.

A template's `text` holds {context} and {question} (and may hold {title}); `chat` wraps it as the user turn of
the model's chat template, `answer_prefix` starts the answer for the model (an answer prefix ending in a quote
makes the closing quote end the answer). For SQuAD v2 a sentence asking the model to say "unanswerable" goes
where the template has {unanswerable} (in a plain template followed by a blank line, as plain prompts put each
part in its own paragraph), or in front of the text when it has none; for v1, {unanswerable} is removed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.config_files import read_mapping
from tunelab.errors import UsageError

NO_ANSWER_WORD = "unanswerable"
V2_NOTE = f'If the passage does not answer the question, answer "{NO_ANSWER_WORD}".'

TEMPLATES = {
    "plain": {  # lm-evaluation-harness's squadv2 prompt
        "text": "Title: {title}\n\nBackground: {context}\n\nQuestion: {question}\n\n{unanswerable}Answer:",
        "chat": False,
    },
    "chat": {  # the default (see tunelab/recipes/squad.py)
        "text": "{context}\n\nAnswer the question with a short span copied exactly from the passage above. "
        "{unanswerable}\n\nQuestion: {question}",
        "chat": True,
        "answer_prefix": 'The answer is "',  # the model then writes a span and closes the quote
    },
}
DEFAULT_TEMPLATE = "chat"


@dataclass
class QAPrompt:
    text: str
    chat: bool = False
    system: str | None = None
    answer_prefix: str = ""

    @classmethod
    def from_config(cls, spec: str | dict) -> QAPrompt:
        if isinstance(spec, str):
            if spec not in TEMPLATES:
                raise UsageError(f"unknown SQuAD prompt template {spec!r}: expected {', '.join(TEMPLATES)} "
                                 "or a YAML file")
            spec = TEMPLATES[spec]
        unknown = set(spec) - {"text", "chat", "system", "answer_prefix"}
        if unknown:
            raise UsageError(f"prompt: unknown keys {sorted(unknown)} "
                             "(known: text, chat, system, answer_prefix)")
        text = spec.get("text")
        if not isinstance(text, str) or "{context}" not in text or "{question}" not in text:
            raise UsageError("prompt: `text` must contain {context} and {question}")
        return cls(text, bool(spec.get("chat", False)), spec.get("system"), spec.get("answer_prefix") or "")

    def stop_strings(self) -> list[str]:
        """Where an answer ends: the line, and the closing quote when the answer prefix opens one."""
        return ["\n", '"'] if self.answer_prefix.endswith('"') else ["\n"]

    def render(self, tokenizer, ex, version_2: bool = False) -> str:
        note = V2_NOTE if version_2 else ""
        text = self.text
        if version_2 and "{unanswerable}" not in text:
            text = note + "\n\n" + text
        # plain replace, not str.format: passages contain braces
        user = (text.replace("{unanswerable}", note + "\n\n" if note and not self.chat else note)
                .replace("{title}", ex.title.replace("_", " "))
                .replace("{context}", ex.context)
                .replace("{question}", ex.question.strip()))
        if not self.chat:
            return user + self.answer_prefix
        if tokenizer.chat_template is None:
            raise UsageError("this prompt needs a chat template and the tokenizer has none: "
                             "use --prompt plain")
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}
        ]
        chat = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return chat + self.answer_prefix


def load_prompt(spec: str | None) -> QAPrompt:
    """A template name (chat, plain), a YAML/JSON file defining one, or None for the default."""
    if spec is None or spec in TEMPLATES:
        return QAPrompt.from_config(spec or DEFAULT_TEMPLATE)
    loaded = read_mapping(spec, "prompt file", "text, chat, system, answer_prefix",
                          unreadable=f"not a template name ({', '.join(TEMPLATES)}) or a readable prompt file")
    return QAPrompt.from_config(loaded)


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


def says_unanswerable(answer: str) -> bool:
    return answer.lower().startswith(NO_ANSWER_WORD)
