"""Rebuild the synonym lexicon lorafit ships (src/lorafit/augment/wordnet/synonyms.tsv.gz).

    python scripts/build_wordnet_lexicon.py [WORDNET_DIR] [-o OUTPUT]

WORDNET_DIR is a WordNet 3.0 dict folder (Debian's ``wordnet-base`` in /usr/share/wordnet, or an
NLTK ``corpora/wordnet`` folder); without it, NLTK's data or Debian's copy is used. Each word form
gets exactly the synonyms ``SynonymFinder`` reads from that WordNet through NLTK. The file is
written atomically and is byte-identical for the same WordNet (gzip with mtime 0). Needed only to
change the shipped data: lorafit itself never reads WordNet unless augment.synonyms.wordnet_dir is set.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import sys
from pathlib import Path
from typing import Iterable, Iterator, Optional

from lorafit.io_utils import atomic_write_bytes
from lorafit.text import _LEXICON_HEADER, _WORD, LEXICON, SynonymFinder, WordNetError, _read_error, load_wordnet


def lexicon_entries(wordnet) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``(word, synonyms)`` for every lowercase word form of ``wordnet`` (an NLTK reader) that a
    text word can be (matches ``_WORD`` in full) and that has a synonym, sorted by word: exactly
    what :class:`SynonymFinder` returns for it. Only a lemma name of some synset can have one
    (a synonym needs a synset listing the word's exact form), so those are the only candidates."""
    finder = SynonymFinder(wordnet)
    try:
        forms = {lemma.name().lower() for synset in wordnet.all_synsets() for lemma in synset.lemmas()}
    except Exception as e:
        raise _read_error(getattr(wordnet, "root", "?"), e) from None
    for word in sorted(f for f in forms if _WORD.fullmatch(f)):
        found = finder(word)
        if found:
            yield word, found


def lexicon_bytes(entries: Iterable[tuple[str, tuple[str, ...]]], source: str = "WordNet 3.0") -> bytes:
    """The lexicon file's content: gzip (mtime 0, so the same entries give the same bytes) of a
    header line and one ``word<TAB>synonym<TAB>...`` line per entry."""
    lines = [f"{_LEXICON_HEADER} from {source}: word<TAB>synonyms (scripts/build_wordnet_lexicon.py)"]
    for word, found in entries:
        if not found or any("\t" in x or "\n" in x for x in (word, *found)):
            raise ValueError(f"cannot store lexicon entry {word!r}: {found!r}")
        lines.append("\t".join((word, *found)))
    return gzip.compress(("\n".join(lines) + "\n").encode("utf-8"), compresslevel=9, mtime=0)


def build(wordnet_dir: Optional[str], output: Path) -> int:
    """Write the lexicon of the WordNet in ``wordnet_dir`` (None: NLTK's or Debian's) to ``output``;
    returns the number of entries."""
    wn = load_wordnet(wordnet_dir)
    entries = list(lexicon_entries(wn))
    atomic_write_bytes(output, lexicon_bytes(entries, source=f"WordNet {wn.get_version() or '(unknown version)'}"))
    return len(entries)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("wordnet_dir", nargs="?", help="WordNet 3.0 dict folder (default: NLTK's data or /usr/share/wordnet)")
    ap.add_argument("-o", "--output", type=Path, default=LEXICON, help=f"output file (default: {LEXICON.name} in the package)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        n = build(args.wordnet_dir, args.output)
    except WordNetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.output}: {n} words, {args.output.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
