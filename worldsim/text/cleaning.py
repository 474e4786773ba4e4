"""Prompt cleaning as Wan2.1 does it before tokenising: repair mojibake (ftfy), unescape HTML entities (twice, for
doubly escaped text), collapse runs of whitespace and trim."""

from __future__ import annotations

import html
import re

_WHITESPACE = re.compile(r"\s+")


def clean_prompt(text: str) -> str:
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _WHITESPACE.sub(" ", text).strip()
