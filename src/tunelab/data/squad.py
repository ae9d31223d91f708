"""SQuAD-format reader (v1.1 / v2.0) for the official JSON schema, validated question by question.

Problems raise `DataError` with the question id as `record` where one is known, otherwise with the
location in the file (e.g. "data[3].paragraphs[2]") in the message.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.text import (
    find_surrogate,
    gc_paused,
    loads,
    may_hold_lone_surrogates,
    read_utf8,
    surrogate_problem,
)
from tunelab.errors import DataError


@dataclass(frozen=True)
class SquadExample:
    id: str
    title: str
    context: str
    question: str
    answers: list[dict]  # each {"text": str, "answer_start": int}; [] for unanswerable questions
    is_impossible: bool = False
    plausible_answers: list[dict] = field(default_factory=list)  # v2.0 only, for impossible questions


def read_squad(path, *, require_answers: bool = True) -> list[SquadExample]:
    """Read a SQuAD JSON file (v1.1 or v2.0); every answer span is checked against its context. Without
    `require_answers` (questions to predict), an answerable question may have no answers."""
    path = Path(path)
    with gc_paused():  # the parse and the records make no garbage cycles
        return _read(path, require_answers)


def _read(path: Path, require_answers: bool = True) -> list[SquadExample]:
    doc = _document(path, read_utf8(path))
    examples = []
    seen: dict[str, str] = {}  # question id -> where it was first seen
    for i, article in enumerate(doc["data"]):
        for ex, where in _article(path, article, f"data[{i}]", require_answers):
            if ex.id in seen:
                raise DataError(
                    path,
                    f"duplicate question id (first seen at {seen[ex.id]}, again at {where})",
                    record=ex.id,
                )
            seen[ex.id] = where
            examples.append(ex)
    if not examples:
        raise DataError(path, "no questions in the file")
    return examples


def read_squad_rows(where: str, rows: list[dict]) -> list[SquadExample]:
    """Questions from the rows of a dataset in the Hub's SQuAD layout (id, title, context, question,
    answers {text: [...], answer_start: [...]}; no answers: unanswerable), checked as a file's questions are;
    errors name `where` and the row."""
    examples, seen = [], {}
    for n, row in enumerate(rows, start=1):
        at = f"row {n}"
        context, answers = row.get("context"), row.get("answers")
        if not isinstance(context, str) or not context.strip():
            raise DataError(
                where, f"{at}: context is {'missing' if context is None else 'empty or not a string'}"
            )
        if not isinstance(answers, dict) or not all(
            isinstance(answers.get(k), list) for k in ("text", "answer_start")
        ):
            raise DataError(
                where, f"{at}: 'answers' must be {{text: [...], answer_start: [...]}}, got {answers!r}"
            )
        if len(answers["text"]) != len(answers["answer_start"]):
            raise DataError(where, f"{at}: answers.text and answers.answer_start differ in length")
        qa = {
            "id": row.get("id"),
            "question": row.get("question"),
            "answers": [
                {"text": t, "answer_start": s}
                for t, s in zip(answers["text"], answers["answer_start"], strict=True)
            ],
            "is_impossible": not answers["text"],
        }
        title = row.get("title") or ""
        ex = _question(Path(where), qa, at, title if isinstance(title, str) else str(title), context)
        if ex.id in seen:
            raise DataError(
                where, f"duplicate question id (first seen at {seen[ex.id]}, again at {at})", record=ex.id
            )
        seen[ex.id] = at
        examples.append(ex)
    if not examples:
        raise DataError(where, "no questions in the dataset split")
    return examples


def _document(path: Path, text: str) -> dict:
    """The parsed file: an object with a `data` list."""
    try:
        doc = loads(text)
    except json.JSONDecodeError as e:
        raise DataError(path, f"not valid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None
    except (ValueError, RecursionError) as e:  # e.g. an integer too long to convert, absurd nesting
        raise DataError(path, f"not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise DataError(path, f"top level must be a JSON object with a 'data' list, got {type(doc).__name__}")
    if not isinstance(doc.get("data"), list):
        what = "missing" if "data" not in doc else f"a {type(doc['data']).__name__}, not a list"
        raise DataError(path, f"top-level 'data' is {what} (is this a SQuAD file?)")
    found = find_surrogate(doc) if may_hold_lone_surrogates(text) else None
    if found:
        raise DataError(path, surrogate_problem(*found), record=_question_id(doc, found[0]))
    return doc


def _question_id(doc: dict, where: str) -> str | None:
    """The id of the question a JSON path (data[i].paragraphs[j].qas[k]...) lies in, when it has one."""
    import re

    m = re.match(r"data\[(\d+)\]\.paragraphs\[(\d+)\]\.qas\[(\d+)\]", where)
    try:
        qid = doc["data"][int(m[1])]["paragraphs"][int(m[2])]["qas"][int(m[3])]["id"] if m else None
    except (KeyError, IndexError, TypeError):
        return None
    return qid if isinstance(qid, str) and find_surrogate(qid) is None else None


def _article(path: Path, article, where: str, require_answers: bool = True):
    """(question, where in the file) of every question of an article."""
    if not isinstance(article, dict):
        raise DataError(path, f"{where}: expected an object, got {type(article).__name__}")
    title = article.get("title", "")
    if not isinstance(title, str):
        raise DataError(path, f"{where}: 'title' must be a string, got {type(title).__name__}")
    for j, paragraph in enumerate(_list(path, article, "paragraphs", where)):
        at = f"{where}.paragraphs[{j}]"
        if not isinstance(paragraph, dict):
            raise DataError(path, f"{at}: expected an object, got {type(paragraph).__name__}")
        context = paragraph.get("context")
        if not isinstance(context, str) or not context.strip():
            what = "missing" if context is None else "empty" if isinstance(context, str) else "not a string"
            raise DataError(path, f"{at}: context is {what}")
        for k, qa in enumerate(_list(path, paragraph, "qas", at)):
            yield _question(path, qa, f"{at}.qas[{k}]", title, context, require_answers), f"{at}.qas[{k}]"


def _list(path: Path, obj: dict, key: str, where: str) -> list:
    value = obj.get(key)
    if not isinstance(value, list):
        what = "missing" if value is None else f"a {type(value).__name__}, not a list"
        raise DataError(path, f"{where}: '{key}' is {what}")
    return value


def _question(
    path: Path, qa, where: str, title: str, context: str, require_answers: bool = True
) -> SquadExample:
    if not isinstance(qa, dict):
        raise DataError(path, f"{where}: expected an object, got {type(qa).__name__}")
    qid = qa.get("id")
    if not isinstance(qid, str) or not qid.strip():
        what = (
            "is missing"
            if qid is None
            else "is empty"
            if isinstance(qid, str)
            else f"must be a string, got {_show(qid)}"
        )
        raise DataError(path, f"{where}: question id {what}")
    question = qa.get("question")
    if not isinstance(question, str) or not question.strip():
        what = "missing" if question is None else "empty" if isinstance(question, str) else "not a string"
        raise DataError(path, f"question is {what} (at {where})", record=qid)
    impossible = qa.get("is_impossible", False)
    if not isinstance(impossible, bool):
        raise DataError(path, f"is_impossible must be true or false, got {_show(impossible)}", record=qid)
    answers = _answers(path, qa, "answers", qid, context)
    plausible = _answers(path, qa, "plausible_answers", qid, context)
    if impossible and answers:
        raise DataError(
            path, f"question is marked is_impossible but has {len(answers)} answer(s)", record=qid
        )
    if require_answers and not impossible and not answers:
        raise DataError(
            path, "answerable question (is_impossible false or absent) has no answers", record=qid
        )
    return SquadExample(qid, title, context, question, answers, impossible, plausible)


def _answers(path: Path, qa: dict, key: str, qid: str, context: str) -> list[dict]:
    value = qa.get(key, [])
    if not isinstance(value, list):
        raise DataError(path, f"'{key}' must be a list, got {type(value).__name__}", record=qid)
    answers = []
    for n, answer in enumerate(value):
        at = f"{key}[{n}]"
        if not isinstance(answer, dict):
            raise DataError(path, f"{at} must be an object, got {type(answer).__name__}", record=qid)
        text, start = answer.get("text"), answer.get("answer_start")
        if text is not None and not isinstance(text, str):
            raise DataError(path, f"{at}: answer text must be a string, got {_show(text)}", record=qid)
        if not text or not text.strip():
            raise DataError(path, f"{at}: answer text is missing or empty", record=qid)
        if isinstance(start, bool) or not isinstance(start, int):
            raise DataError(path, f"{at}: answer_start must be an integer, got {_show(start)}", record=qid)
        if start < 0:
            raise DataError(
                path,
                f"{at}: answer_start {start} is negative (it is the answer's character offset in the "
                "context, 0 or more)",
                record=qid,
            )
        if start >= len(context):
            raise DataError(
                path,
                f"{at}: answer_start {start} is past the end of the context ({len(context)} characters)",
                record=qid,
            )
        if context[start : start + len(text)] != text:
            raise DataError(path, f"{at}: {_misplaced(context, start, text)}", record=qid)
        answers.append({"text": text, "answer_start": start})
    return answers


def _codepoints(s: str, limit: int = 12) -> str:
    shown = " ".join(f"U+{ord(c):04X}" for c in s[:limit])
    return shown + (" ..." if len(s) > limit else "")


def _form(s: str) -> str:
    import unicodedata

    return "/".join(f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, s)) or "neither NFC nor NFD"


def _misplaced(context: str, start: int, text: str) -> str:
    """Why the context at answer_start is not the answer text; when the two differ only in Unicode
    normalization (NFC vs NFD: "é" as one code point or as "e" + a combining accent) they print alike, so
    say so and show the code points."""
    import unicodedata

    nfc = unicodedata.normalize("NFC", text)
    for end in range(start + 1, min(len(context), start + 2 * len(text) + 2) + 1):
        there = context[start:end]
        if unicodedata.normalize("NFC", there) == nfc:
            forms = [f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, text)] or [
                "neither NFC nor NFD"
            ]
            ctx_forms = [f for f in ("NFC", "NFD") if unicodedata.is_normalized(f, there)] or ["neither"]
            return (
                f"answer_start {start}: the answer text {text!r} and the context there {there!r} differ only "
                f"in Unicode normalization (answer {'/'.join(forms)}: {_codepoints(text)}; context "
                f"{'/'.join(ctx_forms)}: {_codepoints(there)}); normalize the file (e.g. to NFC) so that "
                "they match"
            )
    found = context[start : start + len(text)]
    return (
        f"answer_start {start} does not point at the answer text {text!r} (the context there reads {found!r})"
    )


def _show(value) -> str:
    """A JSON scalar as written in the file; a list or object by its type."""
    return (
        json.dumps(value)
        if value is None or isinstance(value, (bool, int, float, str))
        else type(value).__name__
    )


def summarize_squad(examples) -> dict:
    """Counts: articles (distinct titles), paragraphs (distinct contexts), questions, unanswerable.

    `version` is what the file's questions need: "2.0" when any is unanswerable, else "1.1".
    """
    unanswerable = sum(1 for ex in examples if ex.is_impossible)
    return {
        "articles": len({ex.title for ex in examples}),
        "paragraphs": len({ex.context for ex in examples}),
        "questions": len(examples),
        "unanswerable": unanswerable,
        "version": "2.0" if unanswerable else "1.1",
    }
