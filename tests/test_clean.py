"""clean_text: AG News' broken and escaped entities, markup, line breaks, whitespace, truncation."""

from __future__ import annotations

import pytest

from lorafit.data.clean import clean_text, clean_texts, word_count

# (raw, cleaned): the artefacts the report's cleaning removes, most taken from real AG News rows
PAIRS = [
    # '#39;' is "&#39;" (apostrophe) that lost its '&'; the scrape also put a space before it
    ("Iran #39;s nuclear programme", "Iran's nuclear programme"),
    ("VHS Format Dies Quiet Death We #39;re saying goodbye", "VHS Format Dies Quiet Death We're saying goodbye"),
    ("It#39;s over", "It's over"),
    ("the proper &#39;fix&#39;", "the proper 'fix'"),
    # 'quot;' is "&quot;" without its '&'
    ("Tahsin Hassan said:  quot;It is painful", 'Tahsin Hassan said: "It is painful'),
    ("quot;Magic can happen.quot; Sirius", '"Magic can happen." Sirius'),
    ("a &quot;real&quot; entity", 'a "real" entity'),
    # '#36;' is "&#36;" (dollar sign)
    ("Northwest Pilots OK  #36;265 Mln Concession", "Northwest Pilots OK $265 Mln Concession"),
    ("each pledged #36;600,000", "each pledged $600,000"),
    # escaped markup: unescaped, then the tags removed
    ("&lt;b&gt;x&lt;/b&gt;", "x"),
    ("as Venezuelans vote &lt;b&gt;...&lt;/b&gt; Allies of President", "as Venezuelans vote ... Allies of President"),
    ("a Google future &lt;strong&gt;Letter&lt;/strong&gt; Can", "a Google future Letter Can"),
    # doubly escaped markup is repaired too (the cleaner iterates to a fixed point)
    ("&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt; text", "bold text"),
    # &amp;
    ("AT&amp;T and Procter &amp; Gamble", "AT&T and Procter & Gamble"),
    # a '<' or '>' that is not a tag survives
    ("x &lt; 3 and y &gt; 2", "x < 3 and y > 2"),
    # backslash line breaks, single and doubled
    ("dwindling\\band", "dwindling band"),
    ("Conformance \\\\The other day", "Conformance The other day"),
    ("end.\\\\\\start", "end. start"),
    # raw markup tags
    ("<b>Bold</b> move", "Bold move"),
    ('see <a href="http://example.com/x">the story</a> here', "see the story here"),
    ("line<br/>break", "line break"),
    # whitespace: runs, tabs, newlines, leading/trailing, zero-width
    ("  many   spaces\there\n\nand\r\nthere  ", "many spaces here and there"),
    ("zero\u200bwidth", "zero width"),
    ("already clean text", "already clean text"),
]


@pytest.mark.parametrize("raw,expected", PAIRS)
def test_clean_text_pairs(raw, expected):
    assert clean_text(raw) == expected


@pytest.mark.parametrize("raw,expected", PAIRS)
def test_clean_text_is_idempotent(raw, expected):
    once = clean_text(raw)
    assert clean_text(once) == once
    assert clean_text(clean_text(once)) == once


def test_clean_text_combined_artefacts():
    raw = "Oil Hits  #36;50 &lt;b&gt;...&lt;/b&gt; Iran #39;s  quot;oil weapon\\worries  traders"
    assert clean_text(raw) == "Oil Hits $50 ... Iran's \"oil weapon worries traders"


def test_clean_text_leaves_words_that_end_in_quot_alone():
    # only a 'quot;' that is not glued to a preceding letter is a broken entity
    assert clean_text("aliquot; a unit") == "aliquot; a unit"


@pytest.mark.parametrize(
    "raw,n,expected",
    [
        ("one two three four five", 3, "one two three"),
        ("one two three", 3, "one two three"),
        ("one two", 5, "one two"),
        ("  one   two \\ three  four ", 2, "one two"),  # truncation counts words after cleaning
        ("Iran #39;s oil &lt;b&gt;minister&lt;/b&gt; said today", 3, "Iran's oil minister"),
    ],
)
def test_truncate_words(raw, n, expected):
    out = clean_text(raw, truncate_words=n)
    assert out == expected
    assert word_count(out) == min(n, word_count(clean_text(raw)))
    assert clean_text(out, truncate_words=n) == out  # idempotent with truncation too


def test_clean_texts_maps_in_order():
    raws = [p[0] for p in PAIRS]
    assert clean_texts(raws) == [p[1] for p in PAIRS]
    assert clean_texts(["a b c", "d e f"], truncate_words=1) == ["a", "d"]


def test_clean_text_rejects_non_strings():
    with pytest.raises(TypeError, match="string"):
        clean_text(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        clean_text(3)  # type: ignore[arg-type]


def test_clean_text_of_markup_only_is_empty():
    assert clean_text("<b></b>  \\ ") == ""
    assert clean_text("") == ""
