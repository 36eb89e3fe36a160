"""Docstrings, numpydoc and Google style: a summary, and the text for each parameter and the return value."""

from __future__ import annotations

import inspect
import re
import textwrap

_UNDERLINE = re.compile(r"^\s*(-{3,}|={3,})\s*$")
_GOOGLE_HEADER = re.compile(
    r"^\s*(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters|Returns?|Yields?|Raises"
    r"|Examples?|Notes?|Attributes|See Also|References|Warnings?|Todo):\s*$", re.IGNORECASE)
_GOOGLE_PARAM = re.compile(r"^\*{0,2}(\w+)\s*(?:\(.*\))?\s*:\s*(.*)$")
_GOOGLE_RETURN_TYPE = re.compile(r"^[\w.]+(?:\[.*?\])?:\s+")
_PARAM_SECTIONS = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments",
                   "other parameters"}
_RETURN_SECTIONS = {"returns", "return", "yields", "yield"}


def parse_docstring(doc: str) -> tuple[dict[str, str], str]:
    """Per-parameter docs and the returns doc of a numpydoc or Google style docstring."""
    params: dict[str, str] = {}
    returns: list[str] = []
    for title, body, numpy in _sections(inspect.cleandoc(doc).splitlines()):
        items = _items(body)
        if title in _PARAM_SECTIONS:
            for head, desc in items:
                if numpy:
                    names, _, after = head.partition(":")
                    # "name : type" is followed by an indented description; the short "name : text" is not.
                    text = " ".join(desc) if desc else after.strip()
                    params.update((n.strip().lstrip("*"), text) for n in names.split(","))
                elif match := _GOOGLE_PARAM.match(head):
                    params[match[1]] = " ".join([match[2], *desc]).strip()
        elif title in _RETURN_SECTIONS:
            if numpy:  # "type" or "name : type", described by the indented lines below it
                returns += [" ".join(desc) if desc else head for head, desc in items]
            else:
                returns.append(_GOOGLE_RETURN_TYPE.sub("", " ".join(" ".join([h, *d]) for h, d in items), count=1))
    return params, "\n".join(returns)


def _sections(lines: list[str]):
    """(lowercase title, body lines, is numpydoc) of each section of a cleaned docstring."""

    def numpy_header(k: int) -> bool:
        return k + 1 < len(lines) and bool(lines[k].strip()) and bool(_UNDERLINE.match(lines[k + 1]))

    i = 0
    while i < len(lines):
        if numpy_header(i):
            end = i + 2
            while end < len(lines) and not numpy_header(end):
                end += 1
            yield lines[i].strip().lower(), lines[i + 2:end], True
        elif match := _GOOGLE_HEADER.match(lines[i]):
            indent, end = _indent(lines[i]), i + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
                end += 1
            yield match[1].lower(), lines[i + 1:end], False
        else:
            end = i + 1
        i = end


def _items(body: list[str]) -> list[tuple[str, list[str]]]:
    """A section body as (header line, [more-indented description lines]) pairs."""
    lines = [line for line in body if line.strip()]
    base = min(map(_indent, lines), default=0)
    items: list[tuple[str, list[str]]] = []
    for line in lines:
        if _indent(line) == base:
            items.append((line.strip(), []))
        elif items:
            items[-1][1].append(line.strip())
    return items


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def summary_of(doc: str) -> str:
    return " ".join(re.split(r"\n\s*\n", doc, maxsplit=1)[0].split())


def doc_sections(doc: str) -> list[dict]:
    """A docstring as ``[{"title", "kind", "text"}]``: the text before the first heading (title None),
    then each numpydoc or Google section. ``kind`` is "parameters" or "returns" for the sections that
    :func:`parse_docstring` reads (a UI shows those as tables), else None. Parsed here once, so that
    no client (the sidebar included) parses docstrings again."""
    lines = inspect.cleandoc(doc).splitlines()
    found = list(_sections_at(lines))
    out = [_section(None, lines[:found[0][0] if found else len(lines)])]
    for _, start, end, title in found:
        out.append(_section(title, lines[start:end]))
    return [section for section in out if section["title"] or section["text"]]


def _sections_at(lines: list[str]):
    """(heading line, first body line, end, title as written) of each section."""
    i = 0
    while i < len(lines):
        if i + 1 < len(lines) and lines[i].strip() and _UNDERLINE.match(lines[i + 1]):
            end = i + 2
            while end < len(lines) and not (end + 1 < len(lines) and lines[end].strip()
                                            and _UNDERLINE.match(lines[end + 1])) and not _GOOGLE_HEADER.match(lines[end]):
                end += 1
            yield i, i + 2, end, lines[i].strip()
        elif match := _GOOGLE_HEADER.match(lines[i]):
            indent, end = _indent(lines[i]), i + 1
            while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
                end += 1
            yield i, i + 1, end, match[1]
        else:
            end = i + 1
        i = end


def _section(title: str | None, body: list[str]) -> dict:
    kind = None
    if title is not None:
        key = title.lower()
        kind = "parameters" if key in _PARAM_SECTIONS else "returns" if key in _RETURN_SECTIONS else None
    return {"title": title, "kind": kind, "text": textwrap.dedent("\n".join(body)).strip("\n")}
