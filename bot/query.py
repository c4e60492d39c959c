"""The subscription query language: parse, validate, and print in normalized form.

    diffusion                     the word (simple inflections: model ~ models), title or abstract
    "large language model"        the phrase: consecutive words
    diffus*                       prefix (at least 3 letters)
    a b, a AND b                  both
    a OR b, a | b                 either
    -a, NOT a                     exclude
    ( ... )                       grouping
    title:x  abstract:x           field-scoped word, phrase or prefix
    author:"Yann LeCun"           author (accents and middle initials ignored)
    cat:cs.CL  org:x              arXiv category, Hugging Face organization
    upvotes>=20                   Hugging Face upvote threshold (also >, <=, <, =)
    source:huggingface (or hf)  source:arxiv   where the paper was listed (any registered source)
    like:2406.12345,2405.00001    papers like these examples (ids or arXiv/Hugging Face links; bare
                                  ids after a like: term join it); scored by bot/recommend.py, the
                                  rest of the query filters. Top level only, as is
    like:saved                    papers like the channel's saved ones, not like its "Not
                                  relevant" ones (with ids too: like:saved,2406.12345)
    score>=0.3                    a like: query's own threshold (else the top few a day)

No regular expressions: user patterns could backtrack catastrophically. A query is a
tree of tuples (cheap to keep a million of them in memory):

    ("word", field, stem, text)     field: "any" | "title" | "abstract"
    ("phrase", field, stems, text)
    ("prefix", field, prefix)
    ("author", name_tokens, text)
    ("cat", category)  ("org", tokens, text)  ("source", name)
    ("upvotes", op, number)
    ("like", ids)  ("score", ">=", number)     only as the root or its AND's children;
                                               ids may hold SAVED (first), for like:saved
    ("and", children)  ("or", children)  ("not", child)
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
import unicodedata
from typing import Any, Callable, NamedTuple

from . import sources
from .errors import QueryError
from .sources.ids import canonical_arxiv_id

MAX_QUERY_CHARS = 500
MAX_TERMS = 50
MIN_PREFIX = 3
FIELDS = ("title", "abstract", "author", "cat", "org", "source", "upvotes", "like", "score")
MAX_EXAMPLES = 20  # of a like: query
SAVED = "saved"  # like:saved: the channel's saved papers are examples (bot/like.py)
_SCORE = re.compile(r"^score>=(0(?:\.\d{1,3})?|1(?:\.0{1,3})?|\.\d{1,3})$", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")
# ASCII letters and digits stay, every other byte becomes a space (raw_words: the same words as _WORD).
_ASCII_WORD_BYTES = bytes(c if c < 128 and chr(c).isalnum() else 32 for c in range(256))
_UPVOTES = re.compile(r"^upvotes(>=|<=|>|<|=)(\d{1,9})$", re.IGNORECASE)
_OPS = {"and": "AND", "or": "OR", "not": "NOT"}
# What gives a term away as a regular expression (or a wildcard inside a word). Hyphens,
# dots between letters (cs.CL, 1.5B, e.g.), apostrophes, C++, A/B and a final ? are words.
_REGEX_IN_TERM = re.compile(
    r"""^/.+/$              # /pattern/
      | \\                 # \d \w \b \. ...
      | [.\])\]][*+?]         # .* .+ .? ]+ )*
      | [\[\]]               # [a-z] character classes
      | \{\d*,?\d*\}         # {2,} {1,3} quantifiers
      | ^\^ | \w\$$          # ^ and $ anchors
      | \w\?\w              # colou?r
      | ^[+?]$ | ^\?\w      # a quantifier left over after a group, (a|b)+; a flag group, (?i)
    """,
    re.VERBOSE,
)
# In a quoted phrase brackets and ? are text ("[CLS] token"); these still mean a pattern.
_REGEX_IN_PHRASE = re.compile(r"^/.+/$ | \\[a-zA-Z.] | [.\])\]][*+?]", re.VERBOSE)
_REGEX_SYNTAX = re.compile(r"\[[^\]]*\]|\\.|\{[^}]*\}")  # classes, escapes, quantifiers: not words


# ---- words -----------------------------------------------------------------------------

def fold(text: str) -> str:
    """Case-fold and strip accents: 'Émile' -> 'emile', 'ＧＰＴ' -> 'gpt'."""
    if text.isascii():  # most titles and abstracts: nothing to decompose
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKD", text).casefold())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def raw_words(text: str) -> list[str]:
    """Folded words; hyphens and punctuation separate words ('Diffusion-based' -> 2 words)."""
    if text.isascii():
        # The same words as the pattern's (`[^\W_]+` of ASCII text: runs of letters and
        # digits), in half its time: every other character made a space, then split.
        return text.lower().encode("ascii").translate(_ASCII_WORD_BYTES).decode("ascii").split()
    return _WORD.findall(fold(text))


@functools.lru_cache(maxsize=200_000)
def stem(word: str) -> str:
    """A deliberately light stemmer for plurals: models->model, queries->query, boxes->box."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 4 and word.endswith(("ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


class WordCache(dict):
    """A function's results by argument (a word, a name), in a plain dictionary: looked up
    from C by `map`, without lru_cache's bookkeeping; emptied when it reaches `size` entries."""

    def __init__(self, function: Callable[[str], Any], size: int):
        super().__init__()
        self.function, self.size = function, size

    def __missing__(self, key: str) -> Any:
        if len(self) >= self.size:
            self.clear()
        found = self[key] = self.function(key)
        return found


# `stem` of each word met (a paper has some 200): the matcher's views and preview's word index.
STEMS = WordCache(stem, 200_000)


def name_tokens(name: str) -> tuple[str, ...]:
    """Author name tokens without initials: 'Yann A. LeCun' -> ('yann', 'lecun')."""
    return tuple(t for t in raw_words(name) if len(t) > 1)


# ---- lexer -----------------------------------------------------------------------------

class Token(NamedTuple):  # a tuple: the bot parses every stored query when it starts
    kind: str  # "(" ")" "OR" "AND" "NOT" "TERM" "PHRASE"
    text: str
    column: int  # 1-based, for error messages
    field: str | None = None  # for TERM/PHRASE written as field:value


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "()":
            tokens.append(Token(c, c, i + 1))
            i += 1
        elif c == "|":
            tokens.append(Token("OR", c, i + 1))
            i += 1
        elif c == '"':
            end = text.find('"', i + 1)
            if end < 0:
                raise QueryError(f"unclosed quote at column {i + 1}")
            tokens.append(Token("PHRASE", text[i + 1:end], i + 1))
            i = end + 1
        elif c == "-" and i + 1 < n and not text[i + 1].isspace() and text[i + 1] not in ")|":
            tokens.append(Token("NOT", "-", i + 1))
            i += 1
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in '()|"':
                i += 1
            word = text[start:i]
            if word.endswith(":") and i < n and text[i] == '"':  # field:"a phrase"
                end = text.find('"', i + 1)
                if end < 0:
                    raise QueryError(f"unclosed quote at column {i + 1}")
                tokens.append(Token("PHRASE", text[i + 1:end], start + 1, field=word[:-1].lower()))
                i = end + 1
            elif word.upper() in ("AND", "OR", "NOT"):
                tokens.append(Token(word.upper(), word, start + 1))
            else:
                tokens.append(Token("TERM", word, start + 1))
    return tokens


# ---- parser ----------------------------------------------------------------------------

class _Parser:
    def __init__(self, tokens: list[Token]):
        self.tokens = tokens
        self.pos = 0
        self.terms = 0
        self.liking = False  # a like: term was read: bare arXiv ids after it are examples

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def parse(self) -> tuple:
        node = self.or_expr()
        extra = self.peek()
        if extra is not None:  # only a stray ")" can be left over
            raise QueryError(f"unexpected ) at column {extra.column} (no matching '(')")
        return node

    def or_expr(self) -> tuple:
        first = self.peek()
        if first is not None and first.kind == "OR":
            raise QueryError(f"OR needs a term on both sides (column {first.column})")
        children = [self.and_expr()]
        while (token := self.peek()) is not None and token.kind == "OR":
            self.take()
            after = self.peek()
            if after is None or after.kind in ("OR", ")", "AND"):
                raise QueryError(f"OR needs a term on both sides (column {token.column})")
            children.append(self.and_expr())
        return _combine("or", children)

    def and_expr(self) -> tuple:
        children = [self.unary()]
        while (token := self.peek()) is not None and token.kind not in ("OR", ")"):
            if token.kind == "AND":
                self.take()
                after = self.peek()
                if after is None or after.kind in ("OR", ")", "AND"):
                    raise QueryError(f"AND needs a term on both sides (column {token.column})")
            children.append(self.unary())
        return _combine("and", children)

    def unary(self) -> tuple:
        token = self.peek()
        if token is None:
            raise QueryError("the query ends too early")
        if token.kind == "NOT":
            self.take()
            after = self.peek()
            if after is None or after.kind in ("OR", ")", "AND"):
                raise QueryError(f"NOT needs a term after it (column {token.column})")
            return ("not", self.unary())
        if token.kind == "AND":
            raise QueryError(f"AND needs a term on both sides (column {token.column})")
        if token.kind == "(":
            self.take()
            if (inner := self.peek()) is not None and inner.kind == ")":
                raise QueryError(f"empty parentheses at column {token.column}")
            node = self.or_expr()
            close = self.peek()
            if close is None or close.kind != ")":
                raise QueryError(f"unclosed ( at column {token.column}")
            self.take()
            return node
        if token.kind == ")":
            raise QueryError(f"unexpected ) at column {token.column} (no matching '(')")
        self.take()
        self.terms += 1
        if self.terms > MAX_TERMS:
            raise QueryError(f"the query has more than {MAX_TERMS} terms")
        if self.liking and token.kind == "TERM" and (example := _bare_example(token.text)):
            return ("like", (example,))  # `like:2406.12345 2405.00001`: the second one is an example too
        node = _term(token)
        self.liking = self.liking or node[0] == "like"
        return node


def _combine(kind: str, children: list[tuple]) -> tuple:
    """Build an and/or node, flattening nested ones of the same kind, (a b) c == a b c, and
    dropping repeated children, a a == a."""
    flat: list[tuple] = []
    for child in children:
        for part in child[1] if child[0] == kind else (child,):
            if part not in flat:
                flat.append(part)
    return flat[0] if len(flat) == 1 else (kind, tuple(flat))


def _unknown_field(name: str, column: int) -> QueryError:
    close = difflib.get_close_matches(name, FIELDS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else f" (fields: {', '.join(FIELDS)})"
    return QueryError(f'unknown field "{name}"{hint} at column {column}')


def _refuse_regex(text: str, column: int, quoted: bool) -> None:
    """Queries are words, phrases and prefixes; a regular expression is refused, with what
    to write instead, rather than quietly turned into different words."""
    if not (_REGEX_IN_PHRASE if quoted else _REGEX_IN_TERM).search(text):
        return
    words = [w for w in raw_words(_REGEX_SYNTAX.sub(" ", text)) if len(w) > 1][:4]
    shown = text if len(text) <= 40 else text[:39] + "…"
    prefix = f"{words[0][:max(MIN_PREFIX, len(words[0]) - 3)]}*" if words and len(words[0]) >= MIN_PREFIX else "diffus*"
    if len(words) > 1:
        instead = f'words ({" ".join(words)}), a phrase ("{" ".join(words)}") or a prefix ({prefix})'
    elif words:
        instead = f"the word ({words[0]}) or a prefix ({prefix})"
    else:
        instead = f'words, a "quoted phrase" or a prefix such as {prefix}'
    raise QueryError(f'regular expressions are not supported ("{shown}" at column {column}): write {instead}')


def _text_node(field: str, text: str, column: int, quoted: bool) -> tuple:
    """A word, phrase or prefix in `field` ("any", "title" or "abstract")."""
    _refuse_regex(text, column, quoted)
    if not quoted and "*" in text:  # diff*sion or *sion would otherwise become other words
        stem_text = text.rstrip("*")
        words = raw_words(stem_text)
        if len(words) != 1 or "*" in stem_text:
            raise QueryError(f"a prefix is one word followed by * (column {column})")
        if len(words[0]) < MIN_PREFIX:
            raise QueryError(f"a prefix needs at least {MIN_PREFIX} letters before * (column {column})")
        return ("prefix", field, sys.intern(words[0]))
    words = raw_words(text)
    if not words:
        what = "an empty phrase" if quoted else f'"{text}" has no letters or digits'
        raise QueryError(f"{what} at column {column}")
    if len(words) == 1:
        return ("word", field, sys.intern(stem(words[0])), sys.intern(words[0]))
    # A quoted phrase, or a hyphenated compound such as text-to-image: consecutive words.
    return ("phrase", field, tuple(sys.intern(stem(w)) for w in words), " ".join(words))


def _term(token: Token) -> tuple:
    text, column = token.text, token.column
    field = token.field
    if token.kind == "TERM":
        upvotes = _UPVOTES.match(text)
        if upvotes:
            return ("upvotes", upvotes.group(1), int(upvotes.group(2)))
        if text.lower().startswith("upvotes"):
            raise QueryError(f"upvotes needs a comparison and a number, e.g. upvotes>=20 (column {column})")
        score = _SCORE.match(text)
        if score:
            return ("score", ">=", float(score.group(1)))
        if text.lower().startswith("score") and not text[5:6].isalnum():
            raise QueryError(f"score needs >= and a number from 0 to 1, e.g. score>=0.3 (column {column})")
        name, sep, value = text.partition(":")
        if sep and name and not name.isdigit():
            field, text = name.lower(), value
            if not text:
                raise QueryError(f"{field}: needs a value (column {column})")
    if field is None:
        return _text_node("any", text, column, token.kind == "PHRASE")
    if field not in FIELDS or field in ("upvotes", "score"):
        raise _unknown_field(field, column)
    if field == "like":
        return ("like", _examples(text, column))
    quoted = token.kind == "PHRASE"
    if field in ("title", "abstract"):
        return _text_node(field, text, column, quoted)
    if field == "author":
        tokens = name_tokens(text)
        if not tokens:
            raise QueryError(f"author: needs a name (column {column})")
        return ("author", tokens, " ".join(tokens))
    if field == "org":
        tokens = tuple(raw_words(text))
        if not tokens:
            raise QueryError(f"org: needs a name (column {column})")
        return ("org", tokens, " ".join(tokens))
    if field == "cat":
        value = fold(text).strip()
        if not re.match(r"^[a-z-]+(\.[a-z-]+)?$", value):
            raise QueryError(f'"{text}" is not an arXiv category like cs.CL (column {column})')
        return ("cat", sys.intern(value))
    found = sources.spec(text.lower())
    if found is None:
        names = " or ".join(s.name for s in sources.SOURCES)
        raise QueryError(f"source must be {names}, not \"{text}\" (column {column})")
    return ("source", found.name)


def _bare_example(text: str) -> str | None:
    """The arXiv id of a term that is an id or an arXiv/Hugging Face link, not field:value."""
    if ":" in text and not text.lower().startswith(("http://", "https://", "arxiv:")):
        return None
    return canonical_arxiv_id(text)


def _examples(text: str, column: int) -> tuple[str, ...]:
    found = []
    for part in text.split(","):
        if part.lower() == SAVED:
            found.append(SAVED)
            continue
        example = canonical_arxiv_id(part) if part else None
        if example is None:
            shown = part if len(part) <= 40 else part[:39] + "…"
            raise QueryError(f'like: takes arXiv ids or arXiv/Hugging Face links, not "{shown}" (column {column})')
        found.append(example)
    return tuple(found)


def _gather_like(node: tuple) -> tuple:
    """A query with like: terms keeps them, and score>=, at its top level, merged into one
    like term (SAVED first if given, then its examples in order, once each) first, then
    score>=, then the keywords."""
    children = node[1] if node[0] == "and" else (node,)
    if not _holds(node, ("like",)):
        if _holds(node, ("score",)):
            raise QueryError("score>= goes with like: (papers like examples), e.g. like:2406.12345 score>=0.3")
        return node
    examples: list[str] = []
    scores = []
    rest = []
    for child in children:
        if child[0] == "like":
            examples += [e for e in child[1] if e not in examples]
        elif child[0] == "score":
            scores.append(child)
        else:
            if _holds(child, ("like", "score")):
                raise QueryError("like: and score>= go at the top level of a query, "
                                 "not inside OR, NOT or parentheses")
            rest.append(child)
    if SAVED in examples:
        examples = [SAVED, *(e for e in examples if e != SAVED)]
    if len(examples) - (SAVED in examples) > MAX_EXAMPLES:
        raise QueryError(f"like: takes at most {MAX_EXAMPLES} examples, not {len(examples) - (SAVED in examples)}")
    if len(scores) > 1:
        raise QueryError("give score>= once")
    merged = [("like", tuple(examples)), *scores, *rest]
    return merged[0] if len(merged) == 1 else ("and", tuple(merged))


def _holds(node: tuple, kinds: tuple[str, ...]) -> bool:
    """Whether `node` is or holds a term of one of these kinds."""
    kind = node[0]
    if kind in kinds:
        return True
    if kind in ("and", "or"):
        return any(_holds(c, kinds) for c in node[1])
    return kind == "not" and _holds(node[1], kinds)


def includes_something(node: tuple) -> bool:
    """False for queries that can only exclude, such as `-video`: they match nearly everything."""
    kind = node[0]
    if kind == "not":
        return False
    if kind == "and":
        return any(includes_something(c) for c in node[1])
    if kind == "or":
        return all(includes_something(c) for c in node[1])
    return True


_PLAIN = re.compile(r"[a-z0-9]+(?: [a-z0-9]+)*")


def _plain_words(text: str) -> tuple | None:
    """The tree of the commonest stored form, lowercase words (`language agents`), built
    without the parser: the same tree it builds. None for anything else."""
    if not _PLAIN.fullmatch(text):
        return None
    words = text.split(" ")
    if len(words) > MAX_TERMS or any(w in ("and", "or", "not") or w.startswith("upvotes") for w in words):
        return None
    children = [("word", "any", sys.intern(stem(w)), sys.intern(w)) for w in words]
    return _combine("and", children)


def parse_query(text: str) -> tuple:
    """Parse a query into its tree; raises QueryError with a message that points at the problem."""
    text = text.strip()
    if not text:
        raise QueryError("the query is empty: give one or more words, e.g. `subscribe diffusion`")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; the limit is {MAX_QUERY_CHARS}")
    plain = _plain_words(text)
    if plain is not None:
        return plain
    node = _gather_like(_Parser(tokenize(text)).parse())
    if not includes_something(node):
        raise QueryError("a query must include something, not only exclude: "
                         "`-video` alone would match almost every paper")
    return node


# ---- printing --------------------------------------------------------------------------

def _quote(text: str) -> str:
    return f'"{text}"'


def render(node: tuple, parent: str = "") -> str:
    """The normalized form users are shown; parsing it gives back the same tree."""
    kind = node[0]
    if kind == "word":
        # A word that reads as an operator or a field keyword is quoted to stay a word.
        text = _quote(node[3]) if node[3].upper() in _OPS.values() or node[3].startswith("upvotes") else node[3]
        return text if node[1] == "any" else f"{node[1]}:{text}"
    if kind == "phrase":
        return _quote(node[3]) if node[1] == "any" else f"{node[1]}:{_quote(node[3])}"
    if kind == "prefix":
        return f"{node[2]}*" if node[1] == "any" else f"{node[1]}:{node[2]}*"
    if kind == "author":
        return f"author:{_quote(node[2])}"
    if kind == "org":
        return f"org:{_quote(node[2])}" if len(node[1]) > 1 else f"org:{node[2]}"
    if kind == "cat":
        return f"cat:{node[1]}"
    if kind == "source":
        return f"source:{node[1]}"
    if kind == "upvotes":
        return f"upvotes{node[1]}{node[2]}"
    if kind == "like":
        return "like:" + ",".join(node[1])
    if kind == "score":
        return f"score>={node[2]:g}"
    if kind == "not":
        inner = render(node[1], "not")
        return f"-{inner}"
    joiner = " " if kind == "and" else " OR "
    text = joiner.join(render(child, kind) for child in node[1])
    needs_parens = (kind == "or" and parent in ("and", "not")) or (kind == "and" and parent == "not")
    return f"({text})" if needs_parens else text


def normalize_query(text: str) -> str:
    """Parse and print back: the canonical text stored and shown for a subscription."""
    return render(parse_query(text))
