"""Preview's exact word index on PostgreSQL: `papers.words`, a tsvector with a GIN index.

The same words as SQLite's paper_words (storage/paper_words.py), as bot/matching.py's
PaperView sees them, each lexeme under a prefix naming its field, so that no stemmer or
parser of PostgreSQL's ever touches them (the vector is written as a tsvector literal):

- `t:` and `a:` the stems of the title's and abstract's folded words, with their positions
  (a phrase is `'t:large' <-> 't:language'`: adjacent in one field, as the evaluator wants);
- `tr:` and `ar:` their distinct folded words, unstemmed (a prefix is `'tr:mod':*`: the
  evaluator compares a prefix with the words, not their stems);
- `u:` the authors' keys (`lecun`, `lecun.yann`: see storage.paper_words.author_keys);
- `c:` the categories and their archives (`cs.cl`, `cs`);
- `o:` the organization's folded words, with positions (`org:"google deepmind"`, the
  evaluator's "name parts in order", is the phrase `'o:google' <-> 'o:deepmind'`).

Tokens are letters and digits (bot.query.raw_words), so no token holds the `:` that ends
a prefix. The vector is written with the row by add_papers (and again when a later listing
fills in the categories or changes the organization): there is no backlog to catch up on.

tsvector has limits (a lexeme under 2 KB, positions up to 16,383, 256 positions a lexeme):
a paper past them (no real title or abstract is) gets an empty vector and `words_partial`,
and is a candidate for every query, which is then not `exact`.

`narrowing(node)` turns a query tree into one SQL condition over papers that every paper
the query matches satisfies: word terms as tsquery, upvote and source terms as SQL, joined
by AND, OR and NOT as the query joins them. It is `exact` (the papers satisfying it are
exactly the matches) but for author names of three parts or more (the keys require each
part, not their order) and what has no words at all (`like:`, `score>=`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.query import STEMS, raw_words

from ..paper_words import author_keys, category_tokens

MAX_LEXEME_BYTES = 2000  # tsvector: 2,047
MAX_POSITION = 16383
MAX_POSITIONS = 256  # a lexeme's positions kept


def _quote(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def document(title: str, summary: str, authors: list[str] | tuple[str, ...],
             categories: list[str] | tuple[str, ...], organization: str | None) -> tuple[str, bool]:
    """A paper's words as a tsvector literal, and whether it is partial (then: '')."""
    title_words, abstract_words = raw_words(title), raw_words(summary)
    org_words = raw_words(organization or "")
    if max(len(title_words), len(abstract_words), len(org_words)) > MAX_POSITION:
        return "", True
    stems = STEMS.__getitem__  # bot.query.stem of each word, from a plain dict (as storage/paper_words.py)
    fields = (("t:", _positions(map(stems, title_words))), ("a:", _positions(map(stems, abstract_words))),
              ("o:", _positions(org_words)))
    plain = [("tr:", dict.fromkeys(title_words)), ("ar:", dict.fromkeys(abstract_words)),
             ("u:", author_keys(list(authors)).split()), ("c:", category_tokens(list(categories)).split())]
    tokens = [*org_words, *(w for _, words in plain for w in words)]  # every lexeme, less its prefix
    if any(len(p) > MAX_POSITIONS for _, found in fields for p in found.values()) or (
            max(map(len, tokens), default=0) * 4 + 3 > MAX_LEXEME_BYTES
            and any(len(w.encode()) + 3 > MAX_LEXEME_BYTES for w in tokens)):
        return "", True
    parts = [f"'{prefix}{word}':{','.join(map(str, at))}" for prefix, found in fields for word, at in found.items()]
    parts += [f"'{prefix}{word}'" for prefix, words in plain for word in words]
    text = " ".join(parts)
    # Tokens are letters and digits (keys add `.` and `-`): nothing to escape, as one look at
    # the whole text confirms (else each lexeme is quoted as the tsvector syntax wants).
    if "\\" in text or text.count("'") != 2 * len(parts):
        text = " ".join([*(f"{_quote(prefix + word)}:{','.join(map(str, at))}" for prefix, found in fields
                           for word, at in found.items()),
                         *(_quote(prefix + word) for prefix, words in plain for word in words)])
    return text, False


def _positions(words) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for position, word in enumerate(words, 1):
        at = found.get(word)
        if at is None:
            found[word] = [position]
        else:
            at.append(position)
    return found


@dataclass(frozen=True)
class _Part:
    """A query node as a condition: a tsquery over `words` (kind "tsq") or SQL over papers."""

    kind: str  # "tsq" | "sql"
    text: str
    params: tuple[object, ...] = ()
    exact: bool = True

    def sql(self) -> tuple[str, list[object]]:
        if self.kind == "tsq":
            return "words @@ %s::tsquery", [self.text]
        return self.text, list(self.params)


@dataclass
class Narrowing:
    """One SQL condition over papers that every paper a query matches satisfies."""

    where: str | None = None  # None: nothing narrows
    params: list[object] = field(default_factory=list)
    exact: bool = False
    words: bool = False  # the condition reads `words` (papers with partial words must be added)


_FIELDS = {"any": ("t:", "a:"), "title": ("t:",), "abstract": ("a:",)}
_RAW_FIELDS = {"any": ("tr:", "ar:"), "title": ("tr:",), "abstract": ("ar:",)}
_COMPARE = (">=", "<=", ">", "<", "=")


def _phrase(prefix: str, words: tuple[str, ...] | list[str]) -> str:
    return " <-> ".join(_quote(prefix + w) for w in words)


def _either(parts: list[str]) -> str:
    return "(" + " | ".join(f"({p})" for p in parts) + ")"


def _node(node: tuple) -> _Part | None:
    kind = node[0]
    if kind == "word":
        return _Part("tsq", _either([_quote(prefix + node[2]) for prefix in _FIELDS[node[1]]]))
    if kind == "phrase":
        return _Part("tsq", _either([_phrase(prefix, node[2]) for prefix in _FIELDS[node[1]]]))
    if kind == "prefix":
        return _Part("tsq", _either([_quote(prefix + node[2]) + ":*" for prefix in _RAW_FIELDS[node[1]]]))
    if kind == "author":
        *firsts, last = node[1]
        if len(firsts) <= 1:
            return _Part("tsq", _quote("u:" + (f"{last}.{firsts[0]}" if firsts else last)))
        keys = dict.fromkeys(f"u:{last}.{t}" for t in firsts)
        return _Part("tsq", "(" + " & ".join(map(_quote, keys)) + ")", exact=False)
    if kind == "cat":
        return _Part("tsq", _quote("c:" + node[1]))
    if kind == "org":
        return _Part("tsq", "(" + _phrase("o:", node[1]) + ")")
    if kind == "upvotes":
        if node[1] not in _COMPARE:
            return None
        return _Part("sql", f"(upvotes IS NOT NULL AND upvotes {node[1]} %s)", (node[2],))
    if kind == "source":  # a paper's source is the first of its sorted sources
        return _Part("sql", "(sources = %s OR left(sources, %s) = %s)", (node[1], len(node[1]) + 1, node[1] + ","))
    if kind == "not":
        inner = _node(node[1])
        if inner is None or not inner.exact:
            return None  # excluding more than the term would lose matches
        if inner.kind == "tsq":
            return _Part("tsq", f"!({inner.text})")
        return _Part("sql", f"NOT {inner.text}", inner.params)
    if kind == "or":
        branches = [_node(child) for child in node[1]]
        parts = [part for part in branches if part is not None]
        if len(parts) < len(branches):
            return None  # a branch that cannot narrow: neither can the OR
        return _join(" OR ", " | ", parts, all(p.exact for p in parts))
    if kind == "and":
        parts, exact = [], True
        for child in node[1]:
            part = _node(child)
            if part is None:
                exact = False  # left to the evaluator
                continue
            exact = exact and part.exact
            parts.append(part)
        if not parts:
            return None
        return _join(" AND ", " & ", parts, exact)
    return None  # like:, score>=: nothing of the paper's own to narrow on


def _join(sql_op: str, tsq_op: str, parts: list[_Part], exact: bool) -> _Part:
    words = [p for p in parts if p.kind == "tsq"]
    if len(words) == len(parts):
        return _Part("tsq", "(" + tsq_op.join(p.text for p in words) + ")", exact=exact)
    pieces: list[_Part] = []
    if words:  # one tsquery for all of them: one GIN lookup
        pieces.append(_Part("tsq", "(" + tsq_op.join(p.text for p in words) + ")"))
    pieces += [p for p in parts if p.kind == "sql"]
    texts, params = [], []
    for piece in pieces:
        text, more = piece.sql()
        texts.append(text)
        params += more
    return _Part("sql", "(" + sql_op.join(texts) + ")", tuple(params), exact)


def narrowing(node: tuple) -> Narrowing:
    """The condition for a query tree (see the module's docstring); always safe to apply."""
    part = _node(node)
    if part is None:
        return Narrowing()
    text, params = part.sql()
    return Narrowing(text, params, part.exact, words="words @@" in text)
