"""Prompt cleaning as open_clip's tokenizer does it before BPE (the tokenizer HPSv2 was trained with)."""

from __future__ import annotations

import html
import re

_WHITESPACE = re.compile(r"\s+")


def clean_prompt_hpsv2(text: str) -> str:
    """Clean ``text`` the way open_clip's ``SimpleTokenizer`` does before encoding it for HPSv2.

    ftfy repairs mojibake and straightens curly quotes; HTML entities are unescaped twice (prompts scraped from the
    web are often double-escaped, e.g. ``&amp;amp;``); runs of whitespace collapse to one space; the ends are
    stripped and the text is lower-cased.
    """
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = _WHITESPACE.sub(" ", text.strip()).strip()
    return text.lower()
