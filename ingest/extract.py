"""Text from uploaded files: .txt and .md as UTF-8, .html without markup, .pdf through pypdf."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import PurePath
from typing import ClassVar

from pypdf import PdfReader
from pypdf.errors import PyPdfError

SUPPORTED_SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf")


class UnsupportedFileType(ValueError):
    """HTTP 415."""


class UnreadableFile(ValueError):
    """HTTP 422: the file is of a supported type but its text cannot be read."""


class _HtmlText(HTMLParser):
    _SKIPPED: ClassVar = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCKS: ClassVar = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skipping = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIPPED and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self._skipping:
            self.parts.append(data)


def extract_text(filename: str, data: bytes) -> tuple[str, str]:
    """(text, title suggested by the file itself or its name)."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFileType(
            f"'{filename}' is not a supported file type: upload one of {', '.join(SUPPORTED_SUFFIXES)}"
        )
    title = PurePath(filename).stem
    if suffix == ".pdf":
        return _pdf_text(data), title
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableFile(f"'{filename}' is not UTF-8 text: {error}") from error
    if suffix in (".html", ".htm"):
        parser = _HtmlText()
        parser.feed(text)
        parser.close()
        lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
        return "\n".join(line for line in lines if line), parser.title.strip() or title
    return text, title


def _pdf_text(data: bytes) -> str:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableFile("the PDF is encrypted: upload a decrypted copy")
        return "\n".join(page.extract_text() or "" for page in reader.pages)
    except (PyPdfError, ValueError, KeyError, TypeError) as error:
        if isinstance(error, UnreadableFile):
            raise
        raise UnreadableFile(f"the PDF could not be read: {error}") from error
