"""Synonym replacement in a text (WordNet synonyms, read offline): a leaf utility that the
augment stage (synonym copies) and the train stage (the consistency loss's noised copies) both use.

By default the synonyms come from a lexicon shipped with lorafit
(``lorafit/augment/wordnet/synonyms.tsv.gz``, about 1 MB): for each lowercase word form of WordNet 3.0,
the synonyms :class:`SynonymFinder` finds for it, derived once from Princeton's WordNet 3.0 (license in
``lorafit/augment/wordnet/LICENSE``). Nothing needs installing and NLTK is not imported on that path.
Rebuild it with ``python scripts/build_wordnet_lexicon.py [WORDNET_DICT_DIR]`` (e.g. Debian's
``wordnet-base`` in ``/usr/share/wordnet``, or NLTK's ``corpora/wordnet``); the output is
byte-identical for the same WordNet.

``SynonymConfig.wordnet_dir`` instead reads a full WordNet 3.0 dict folder with NLTK's reader, with the
same rules. Debian ships the database files but not the ``lexnames`` table NLTK's reader needs, so
for such a folder lorafit builds one in its cache (``~/.cache/lorafit/nltk_data``) with a copy of the
files (about 28 MB, once: NLTK refuses symbolic and hard links that lead out of its data folders)
and a generated ``lexnames`` file, and registers it on ``nltk.data.path``.

Each augmented copy replaces about ``fraction`` of a text's content words with a WordNet synonym.
Only synsets that list the word's exact form as a lemma are used, so inflected words ("shares",
"stocks") are left alone rather than replaced by a base form that breaks the grammar.
"""

from __future__ import annotations

import gzip
import logging
import os
import random
import re
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Callable, Optional

from lorafit.io_utils import atomic_path

log = logging.getLogger(__name__)

DEBIAN_WORDNET = Path("/usr/share/wordnet")
# the shipped lexicon: a header line, then one "word<TAB>synonym<TAB>synonym..." line per word form
LEXICON = Path(__file__).resolve().parent / "augment" / "wordnet" / "synonyms.tsv.gz"
_LEXICON_HEADER = "# lorafit synonyms"
_DB_FILES = ("data.adj", "data.adv", "data.noun", "data.verb", "index.adj", "index.adv", "index.noun",
             "index.verb", "adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev")

# WordNet 3.0's lexicographer files: number, name, syntactic category (1 noun, 2 verb, 3 adj, 4 adv).
# Debian does not ship this table (``lexnames``); it is fixed by the WordNet 3.0 database format.
LEXNAMES = [
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1), ("noun.animal", 1),
    ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1), ("noun.cognition", 1),
    ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1), ("noun.food", 1), ("noun.group", 1),
    ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1), ("noun.person", 1), ("noun.phenomenon", 1),
    ("noun.plant", 1), ("noun.possession", 1), ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1),
    ("noun.shape", 1), ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2),
    ("verb.change", 2), ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2),
    ("verb.consumption", 2), ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2), ("verb.weather", 2),
    ("adj.ppl", 3),
]

STOPWORDS = frozenset("""
a about above after again against all also am an and any are aren as at be because been before being below
between both but by can could did didn do does doesn doing don down during each either else even ever few for
from further had hadn has hasn have haven having he her here hers herself him himself his how however i if in
into is isn it its itself just least less let like ll many may me might more most much must mustn my myself
neither no nor not now of off often on once one only or other others our ours ourselves out over own per quite
rather re said same say says shall shan she should shouldn since so some such than that the their theirs them
themselves then there these they this those though through thus to too under until up upon us very via was
wasn we were weren what when where whether which while who whom whose why will with within without won would
wouldn yet you your yours yourself yourselves
""".split())

# Words of letters only (an internal apostrophe or hyphen is allowed); \b keeps "3D" or "mp3" whole.
_WORD = re.compile(r"\b[A-Za-z]+(?:['-][A-Za-z]+)*\b")
MIN_WORD_LENGTH = 3


from lorafit.errors import WordNetError  # noqa: E402,F401  (re-exported; the CLI prints it as one line)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lorafit"


def _debian_folder(source: Path, cache_dir: Optional[Path] = None) -> Path:
    """A folder NLTK's reader accepts: copies of ``source``'s database files plus ``lexnames``.

    Built once, atomically, in ``<cache>/nltk_data/corpora/wordnet``.
    """
    folder = (cache_dir or _cache_dir()) / "nltk_data" / "corpora" / "wordnet"
    wanted = [f for f in _DB_FILES if (source / f).is_file()]
    if (folder / "lexnames").is_file() and all((folder / f).is_file() for f in wanted):
        return folder
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        for name in wanted:
            shutil.copyfile(source / name, tmp / name)
        lines = [f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES)]
        (tmp / "lexnames").write_text("".join(lines), encoding="utf-8")
    log.info("built an NLTK WordNet folder for %s in %s", source, folder)
    return folder


def find_wordnet(wordnet_dir: Optional[str] = None, cache_dir: Optional[Path] = None):
    """Return the root (folder path or NLTK path pointer) of a WordNet 3.0 database.

    Order: ``wordnet_dir``; NLTK's data (``corpora/wordnet``); Debian's ``/usr/share/wordnet``.
    A folder without ``lexnames`` (Debian's layout) is wrapped by :func:`_debian_folder`.
    """
    if wordnet_dir:
        p = Path(os.path.expanduser(wordnet_dir))
        if not (p / "data.noun").is_file():
            raise WordNetError(
                f"augment.synonyms.wordnet_dir '{p}' has no WordNet database (expected {p}/data.noun). "
                "Point it at a WordNet 3.0 dict folder, or leave it null to use the lexicon shipped with lorafit."
            )
        return p if (p / "lexnames").is_file() else _debian_folder(p, cache_dir)
    import nltk

    try:
        return nltk.data.find("corpora/wordnet")
    except LookupError:
        pass
    if (DEBIAN_WORDNET / "data.noun").is_file():
        return _debian_folder(DEBIAN_WORDNET, cache_dir)
    raise WordNetError(
        "WordNet is not installed. Install it with `apt-get install wordnet-base` (Debian/Ubuntu) or "
        "`python -m nltk.downloader wordnet`, or set augment.synonyms.wordnet_dir to a WordNet 3.0 folder."
    )


def _reader_class():
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class EnglishWordNetReader(WordNetCorpusReader):
        # The version map only serves the multilingual (OMW) functions, which are not used here;
        # building it needs index.sense, which Debian does not ship.
        def map_wn(self, version="wordnet"):
            return None

    return EnglishWordNetReader


@lru_cache(maxsize=4)
def load_wordnet(wordnet_dir: Optional[str] = None):
    """An NLTK ``WordNetCorpusReader`` over the first WordNet found (see :func:`find_wordnet`)."""
    import nltk

    root = find_wordnet(wordnet_dir)
    if isinstance(root, Path):
        # NLTK reads only below its registered data folders
        nltk.data.path.append(str(root.parent.parent.parent if root.parent.name == "corpora" and
                                  root.parent.parent.name == "nltk_data" else root))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "multilingual functions are not available": expected
            return _reader_class()(str(root) if isinstance(root, Path) else root, None)
    except Exception as e:  # OSError, ValueError, NLTK's own WordNetError (a bad index line), ...
        raise _read_error(root, e) from None


def _read_error(root, e: Exception) -> WordNetError:
    return WordNetError(f"could not read WordNet from '{root}': {type(e).__name__}: {e}. Reinstall it "
                        "(`apt-get install --reinstall wordnet-base` or `python -m nltk.downloader wordnet`).")


class SynonymFinder:
    """Synonyms of a word's exact form, read from an NLTK WordNet reader and cached per word.

    These are the rules the shipped lexicon is built with (``scripts/build_wordnet_lexicon.py``)."""

    def __init__(self, wordnet):
        self.wn = wordnet
        self._cache: dict[str, tuple[str, ...]] = {}

    def __call__(self, word: str) -> tuple[str, ...]:
        w = word.lower()
        if w not in self._cache:
            found = set()
            try:
                synsets = self.wn.synsets(w)
                names_per_synset = [[l.name() for l in synset.lemmas()] for synset in synsets]
            except Exception as e:  # a damaged data file: bad offsets give None synsets, bad lines ValueError
                raise _read_error(getattr(self.wn, "root", "?"), e) from None
            for names in names_per_synset:
                if not any(n.lower() == w for n in names):
                    continue  # reached through morphology only: "shares" -> share.n.01
                for n in names:
                    s = n.replace("_", " ")
                    if s.lower() != w:
                        found.add(s)
            self._cache[w] = tuple(sorted(found))
        return self._cache[w]


@lru_cache(maxsize=2)
def load_lexicon(path: Optional[str] = None) -> dict[str, tuple[str, ...]]:
    """The synonym table in a lexicon file (default: the one shipped with lorafit), read once."""
    path = Path(path) if path else LEXICON
    fix = ("Reinstall lorafit, or rebuild it with `python scripts/build_wordnet_lexicon.py`, or set "
           "augment.synonyms.wordnet_dir to a WordNet 3.0 folder.")
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="\n") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        raise WordNetError(f"the synonym lexicon '{path}' is missing. {fix}") from None
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as e:  # BadGzipFile, truncated, zlib.error
        raise WordNetError(f"the synonym lexicon '{path}' is corrupt ({type(e).__name__}: {e}). {fix}") from None
    if not lines[0].startswith(_LEXICON_HEADER) or lines[-1] != "":
        raise WordNetError(f"the synonym lexicon '{path}' is corrupt (not a lorafit lexicon or cut short). {fix}")
    table = {}
    for i, line in enumerate(lines[1:-1], start=2):
        word, *found = line.split("\t")
        if not word or not found or not all(found):
            raise WordNetError(f"the synonym lexicon '{path}' is corrupt (line {i}: {line[:60]!r}). {fix}")
        table[word] = tuple(found)
    return table


def synonym_finder(wordnet_dir: Optional[str] = None) -> Callable[[str], tuple[str, ...]]:
    """``word -> synonyms``: from the full WordNet in ``wordnet_dir`` (NLTK's reader) if given,
    else from the shipped lexicon (same synonyms, no NLTK)."""
    if wordnet_dir:
        return SynonymFinder(load_wordnet(wordnet_dir))
    table = load_lexicon()
    return lambda word: table.get(word.lower(), ())


def is_content_word(word: str) -> bool:
    """Long enough, not a stopword, not an all-caps acronym, no apostrophe ("Iran's")."""
    return (len(word) >= MIN_WORD_LENGTH and word.lower() not in STOPWORDS and "'" not in word
            and not (word.isupper() and len(word) > 1))


def _starts_sentence(text: str, pos: int) -> bool:
    before = text[:pos].rstrip(" \t\"'(")
    return not before or before[-1] in ".!?:"


def _replaceable(text: str, m: re.Match) -> bool:
    """A content word that is not a name: a capitalised word inside a sentence ("Wall Street",
    "Carlyle") is left alone, since its WordNet synonyms would change the entity."""
    word = m.group()
    return is_content_word(word) and (word[0].islower() or _starts_sentence(text, m.start()))


def replace_synonyms(text: str, fraction: float, rng: random.Random,
                     synonyms: Callable[[str], tuple[str, ...]]) -> str:
    """Replace ``max(1, round(fraction * n))`` of the ``n`` content words that have a synonym."""
    words = [m for m in _WORD.finditer(text) if _replaceable(text, m)]
    n_content = len(words)
    candidates = [m for m in words if synonyms(m.group())]
    if not candidates:
        return text
    n = min(len(candidates), max(1, round(fraction * n_content)))
    chosen = sorted(rng.sample(range(len(candidates)), n))
    out, last = [], 0
    for i in chosen:
        m = candidates[i]
        new = rng.choice(synonyms(m.group()))
        if m.group()[0].isupper():
            new = new[0].upper() + new[1:]
        out.append(text[last:m.start()])
        out.append(new)
        last = m.end()
    out.append(text[last:])
    return "".join(out)
