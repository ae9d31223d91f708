"""The report as a list of blocks (headings, paragraphs, tables, images, lists), rendered to Markdown and to a
self-contained HTML page (images embedded as base64), so that both say the same thing.

Rendered by hand rather than with a template engine or a Markdown library: the block types are five, both
outputs come from the same blocks, and no dependency is needed to escape data text for each."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class H:
    level: int
    text: str


@dataclass
class P:
    text: str
    cls: str = ""  # "note" renders as a side note in HTML


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str = ""  # one of l/r per column; default: first left, others right
    caption: str = ""


@dataclass
class Img:
    path: Path  # the PNG file
    rel: str  # path relative to the run folder (Markdown link)
    alt: str


@dataclass
class UL:
    items: list[str]


_MD_ALWAYS = re.compile(r"([\\`*|])")
_MD_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")  # intraword _ never emphasises
_MD_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # only < that could open an HTML tag


def md_escape(text: str, block: bool = False) -> str:
    """Text as Markdown shows it literally: no emphasis, links, tags or table cells out of data text."""
    text = _MD_ALWAYS.sub(r"\\\1", str(text)).replace("\r", " ").replace("\n", " ")
    text = _MD_UNDERSCORE.sub(r"\\_", text)
    text = _MD_TAG.sub("&lt;", text).replace("](", "]\\(")
    if block and text.startswith(("#", ">", "-", "+", "=")):  # would start a heading, quote or list
        text = "\\" + text
    return text


def render_md(title: str, blocks: list) -> str:
    out = [f"# {md_escape(title)}", ""]
    for b in blocks:
        if isinstance(b, H):
            out += ["#" * b.level + " " + md_escape(b.text), ""]
        elif isinstance(b, P):
            out += [("> " if b.cls == "note" else "") + md_escape(b.text, block=True), ""]
        elif isinstance(b, UL):
            out += [f"- {md_escape(i)}" for i in b.items] + [""]
        elif isinstance(b, Table):
            align = b.align or ("l" + "r" * (len(b.headers) - 1))
            out.append("| " + " | ".join(md_escape(h) for h in b.headers) + " |")
            out.append("|" + "|".join(" ---: " if a == "r" else " --- " for a in align) + "|")
            for row in b.rows:
                out.append("| " + " | ".join(md_escape(c) for c in row) + " |")
            if b.caption:
                out += ["", "*" + md_escape(b.caption) + "*"]
            out.append("")
        elif isinstance(b, Img):
            out += [f"![{md_escape(b.alt)}]({b.rel})", ""]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1060px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; padding-bottom: .15em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #c8c8c8; padding: 4px 9px; vertical-align: top; }
th { background: #eee; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; font-size: 13px; color: #555; text-align: left; padding-top: 4px; }
img { max-width: 100%; border: 1px solid #ddd; margin: .4em .4em .4em 0; }
p.note { background: #f6f3e8; border-left: 4px solid #c9a400; padding: .4em .8em; }
"""


def render_html(title: str, blocks: list) -> str:
    e = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(title)}</h1>",
    ]
    for b in blocks:
        if isinstance(b, H):
            out.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, P):
            cls = f' class="{b.cls}"' if b.cls else ""
            out.append(f"<p{cls}>{e(b.text)}</p>")
        elif isinstance(b, UL):
            out.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            align = b.align or ("l" + "r" * (len(b.headers) - 1))
            cls = [' class="r"' if a == "r" else "" for a in align]
            rows = [
                "<tr>" + "".join(f"<th{c}>{e(h)}</th>" for c, h in zip(cls, b.headers, strict=True)) + "</tr>"
            ]
            for row in b.rows:
                rows.append(
                    "<tr>"
                    + "".join(f"<td{c}>{e(str(v))}</td>" for c, v in zip(cls, row, strict=True))
                    + "</tr>"
                )
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            out.append(f"<table>{cap}" + "".join(rows) + "</table>")
        elif isinstance(b, Img):
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            out.append(f'<img src="data:image/png;base64,{data}" alt="{e(b.alt, quote=True)}">')
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


class Builder:
    def __init__(self, run: Path):
        self.run = run
        self.fig_dir = run / "figures"
        self.blocks: list = []
        self.analysis: list[str] = []  # bullet sentences of the analysis section
        self.summary_rows: list[list[str]] = []

    def add(self, *blocks) -> None:
        self.blocks.extend(blocks)

    def img(self, path: Path | None, alt: str) -> None:
        if path is not None and Path(path).is_file():
            self.add(Img(Path(path), os.path.relpath(path, self.run), alt))

    def fig(self, name: str) -> Path:
        self.fig_dir.mkdir(parents=True, exist_ok=True)
        return self.fig_dir / name
