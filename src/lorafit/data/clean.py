"""Text cleaning, as the report did it, identical at training and prediction time.

AG News carries HTML entities, entities whose ``&`` was lost in scraping (``#39;``, ``quot;``,
``#36;``), escaped markup (``&lt;b&gt;``), backslash line breaks and runs of whitespace. The
cleaner repairs these until nothing changes, so it is idempotent: ``clean(clean(x)) == clean(x)``.
"""

from __future__ import annotations

import html
import re
from typing import Iterable, Optional

# entities that lost their '&' in the scrape: '#39;' -> "'", 'quot;' -> '"', ...
# the scrape turned "Iran&#39;s" into "Iran #39;s": the space before an apostrophe is an artefact
_BROKEN_APOSTROPHE = re.compile(r" #39;(?=[A-Za-z])")
_BROKEN_NUMERIC = re.compile(r"(?<!&)#(\d{1,7});")
_BROKEN_NAMED = re.compile(r"(?<![&A-Za-z])(quot|amp|lt|gt|apos|nbsp);")
_NAMED = {"quot": '"', "amp": "&", "lt": "<", "gt": ">", "apos": "'", "nbsp": " "}
# a markup tag: '<', optional '/', a letter, up to 200 more characters, '>' (no brackets inside).
# Written without two adjacent '\s*' (as in r"\s*/?\s*"), which backtrack quadratically on a long
# run of spaces that is not a tag.
_TAG_BODY = re.compile(r"\s*(?:/\s*)?[A-Za-z][^<>]{0,200}")
_BRACKET_PIECES = re.compile(r"[<>]|[^<>]+")
_BACKSLASH_BREAK = re.compile(r"\\+")  # AG News marks line breaks with a backslash: "dwindling\\band"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"\s+")


def _numeric(m: re.Match) -> str:
    n = int(m.group(1))
    if n < 32 or n > 0x10FFFF or 0xD800 <= n <= 0xDFFF:
        return " "
    return chr(n)


def _strip_tags(text: str) -> str:
    """Replace every markup tag by a space, including tags that only appear once an inner tag is
    removed (``<<b>b>`` -> ``< b>`` -> `` ``), in one linear pass.

    Equivalent to applying ``<\\s*/?\\s*[A-Za-z][^<>]{0,200}>`` -> ``' '`` until nothing changes
    (a tag contains no bracket, so removals never overlap and the order does not matter), but a
    regex substitution per nesting level is quadratic: 16 000 nested tags took a minute.
    """
    if "<" not in text or ">" not in text:
        return text
    pieces: list[str] = []
    brackets: list[int] = []  # indices in ``pieces`` of the '<' and '>' kept so far
    for m in _BRACKET_PIECES.finditer(text):
        piece = m.group()
        if piece == ">" and brackets and pieces[brackets[-1]] == "<":
            start = brackets[-1]
            if _TAG_BODY.fullmatch("".join(pieces[start + 1:])):
                del pieces[start:]
                brackets.pop()
                pieces.append(" ")
                continue
        if piece in "<>":
            brackets.append(len(pieces))
        pieces.append(piece)
    return "".join(pieces)


def _clean_once(text: str) -> str:
    text = html.unescape(text)
    text = _BROKEN_APOSTROPHE.sub("'", text)
    text = _BROKEN_NUMERIC.sub(_numeric, text)
    text = _BROKEN_NAMED.sub(lambda m: _NAMED[m.group(1)], text)
    text = _strip_tags(text)
    text = _BACKSLASH_BREAK.sub(" ", text)
    text = _CONTROL.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def clean_text(text: str, truncate_words: Optional[int] = None) -> str:
    """Return ``text`` with entities repaired, markup and line-break escapes removed and
    whitespace collapsed; optionally cut to its first ``truncate_words`` words."""
    if not isinstance(text, str):
        raise TypeError(f"clean_text expects a string, got {type(text).__name__}")
    # Each pass that changes something makes the text shorter, so this terminates.
    prev = None
    for _ in range(len(text) + 2):
        if text == prev:
            break
        prev, text = text, _clean_once(text)
    if truncate_words is not None:
        words = text.split(" ")
        if len(words) > truncate_words:
            text = " ".join(words[:truncate_words])
    return text


def clean_texts(texts: Iterable[str], truncate_words: Optional[int] = None) -> list[str]:
    return [clean_text(t, truncate_words) for t in texts]


def word_count(text: str) -> int:
    return len(text.split())


# No token of the tokenizers in use covers more than a few dozen characters of cleaned text (WordPiece
# marks a word over 100 characters as one unknown token; byte-level BPE merges are shorter), so the
# first ``max_length`` tokens of a text lie within its first ``CHARS_PER_TOKEN * max_length`` characters.
CHARS_PER_TOKEN = 64


def clip_text(text: str, max_length: int) -> str:
    """``text`` cut to ``CHARS_PER_TOKEN * max_length`` characters: generously more than
    ``max_length`` tokens can use, so tokenizing costs what a normal row costs (a 50 MB line is
    not tokenized whole only to be truncated) and the tokens kept are unchanged."""
    limit = CHARS_PER_TOKEN * max_length
    return text if len(text) <= limit else text[:limit]
