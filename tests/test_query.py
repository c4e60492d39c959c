"""The query language: every form of the table, every error message, normalized printing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import QueryError
from bot.query import normalize_query, parse_query, raw_words, render, stem


def test_words_fold_case_and_accents_and_split_compounds():
    assert raw_words("Diffusion-based LLM_agents, Émile (ＧＰＴ)") == \
        ["diffusion", "based", "llm", "agents", "emile", "gpt"]


@pytest.mark.parametrize(
    "word, stemmed",
    [("models", "model"), ("queries", "query"), ("boxes", "box"), ("patches", "patch"), ("model", "model"),
     ("loss", "loss"), ("corpus", "corpus"), ("analysis", "analysis"), ("gas", "gas"), ("transformers", "transformer")],
)
def test_light_stemming_of_plurals(word, stemmed):
    assert stem(word) == stemmed


@pytest.mark.parametrize(
    "query, tree",
    [
        ("diffusion", ("word", "any", "diffusion", "diffusion")),
        ("Models", ("word", "any", "model", "models")),
        ('"large language model"', ("phrase", "any", ("large", "language", "model"), "large language model")),
        ("text-to-image", ("phrase", "any", ("text", "to", "image"), "text to image")),
        ("diffus*", ("prefix", "any", "diffus")),
        ("a1 b2", ("and", (("word", "any", "a1", "a1"), ("word", "any", "b2", "b2")))),
        ("a1 AND b2", ("and", (("word", "any", "a1", "a1"), ("word", "any", "b2", "b2")))),
        ("a1 OR b2", ("or", (("word", "any", "a1", "a1"), ("word", "any", "b2", "b2")))),
        ("a1 | b2", ("or", (("word", "any", "a1", "a1"), ("word", "any", "b2", "b2")))),
        ("a1 -b2", ("and", (("word", "any", "a1", "a1"), ("not", ("word", "any", "b2", "b2"))))),
        ("a1 NOT b2", ("and", (("word", "any", "a1", "a1"), ("not", ("word", "any", "b2", "b2"))))),
        ("(a1 | b2) c3", ("and", (("or", (("word", "any", "a1", "a1"), ("word", "any", "b2", "b2"))),
                                  ("word", "any", "c3", "c3")))),
        ("title:x1", ("word", "title", "x1", "x1")),
        ('abstract:"world model"', ("phrase", "abstract", ("world", "model"), "world model")),
        ("title:robot*", ("prefix", "title", "robot")),
        ('author:"Yann A. LeCun"', ("author", ("yann", "lecun"), "yann lecun")),
        ("author:Müller", ("author", ("muller",), "muller")),
        ("cat:cs.CL", ("cat", "cs.cl")),
        ("org:google", ("org", ("google",), "google")),
        ("upvotes>=20", ("upvotes", ">=", 20)),
        ("upvotes<5", ("upvotes", "<", 5)),
        ("source:huggingface", ("source", "huggingface")),
        ("source:hf", ("source", "huggingface")),  # the older spelling, in subscriptions made before
        ("SOURCE:arXiv", ("source", "arxiv")),
    ],
)
def test_every_form_of_the_language(query, tree):
    assert parse_query(query) == tree


def test_or_binds_looser_than_and():
    assert render(parse_query("a1 b2 OR c3")) == "a1 b2 OR c3"
    assert parse_query("a1 b2 OR c3")[0] == "or"


@pytest.mark.parametrize(
    "query, normalized",
    [
        ("Diffusion", "diffusion"),
        ("  Large   LANGUAGE  models ", "large language models"),
        ("a AND b", "a b"),
        ("a | b", "a OR b"),
        ("NOT video diffusion", "-video diffusion"),
        ("(a OR b) c", "(a OR b) c"),
        ("-(a OR b) c", "-(a OR b) c"),
        ("TITLE:Diffusion", "title:diffusion"),
        ('author:"yann   lecun"', 'author:"yann lecun"'),
        ("Upvotes>=020", "upvotes>=20"),
        ('"Large Language Model"', '"large language model"'),
    ],
)
def test_queries_are_echoed_in_normalized_form(query, normalized):
    assert normalize_query(query) == normalized


@pytest.mark.parametrize(
    "query, message",
    [
        ('diffusion "large language', "unclosed quote at column 11"),
        ('author:"Yann', "unclosed quote at column 8"),
        ("OR diffusion", "OR needs a term on both sides (column 1)"),
        ("diffusion OR", "OR needs a term on both sides (column 11)"),
        ("a OR OR b", "OR needs a term on both sides (column 3)"),
        ("(a OR) b", "OR needs a term on both sides (column 4)"),
        ("a AND", "AND needs a term on both sides (column 3)"),
        ("AND a", "AND needs a term on both sides (column 1)"),
        ("a NOT", "NOT needs a term after it (column 3)"),
        ("titel:diffusion", 'unknown field "titel" (did you mean title?) at column 1'),
        ("authr:x", 'unknown field "authr" (did you mean author?)'),
        ("zzz:x", 'unknown field "zzz" (fields: title, abstract'),
        ("(a b", "unclosed ( at column 1"),
        ("a b)", "unexpected ) at column 4"),
        ("a () b", "empty parentheses at column 3"),
        ("di*", "a prefix needs at least 3 letters before *"),
        ("a*b*", "a prefix is one word followed by *"),
        ("upvotes>=lots", "upvotes needs a comparison and a number"),
        ("source:reddit", 'source must be huggingface or arxiv, not "reddit"'),
        ("cat:!!", "is not an arXiv category"),
        ("title:", "title: needs a value"),
        ('""', "an empty phrase"),
        ("&&", '"&&" has no letters or digits'),
        ("-video", "a query must include something, not only exclude"),
        ("NOT a NOT b", "a query must include something"),
        ("-a OR b", "a query must include something"),
        ("", "the query is empty"),
        ("x" * 501, "the limit is 500"),
        (" ".join(f"w{i}" for i in range(51)), "more than 50 terms"),
    ],
)
def test_every_error_message(query, message):
    with pytest.raises(QueryError) as err:
        parse_query(query)
    assert message in str(err.value)


_atoms = st.sampled_from(
    ["diffusion", "Models", '"large language model"', "robot*", "title:agents", 'author:"Yann LeCun"',
     "cat:cs.CL", "org:google", "upvotes>=10", "source:hf", "text-to-image", "abstract:vision"]
)


@st.composite
def queries(draw, depth=3):
    if depth == 0 or draw(st.booleans()):
        atom = draw(_atoms)
        return f"-{atom}" if draw(st.integers(0, 4)) == 0 else atom
    parts = draw(st.lists(queries(depth=depth - 1), min_size=1, max_size=3))
    joiner = draw(st.sampled_from([" ", " AND ", " OR ", " | "]))
    text = joiner.join(parts)
    return f"({text})" if draw(st.booleans()) else text


@settings(max_examples=300, deadline=None)
@given(queries())
def test_normalized_form_parses_back_to_the_same_tree(text):
    try:
        tree = parse_query(text)
    except QueryError:
        return  # e.g. a random query that only excludes
    assert parse_query(render(tree)) == tree


@settings(max_examples=1000, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=80)
       | st.text(alphabet='ab"()|-*: ORANDNOT title:author:upvotes>=1', max_size=60))
def test_parser_never_raises_anything_but_its_own_error(text):
    try:
        tree = parse_query(text)
    except QueryError as exc:
        assert str(exc)
    else:
        assert parse_query(render(tree)) == tree


@pytest.mark.parametrize(
    "query, message",
    [
        ("/diffusion.*model/", 'regular expressions are not supported ("/diffusion.*model/" at column 1): '
                               'write words (diffusion model), a phrase ("diffusion model") or a prefix (diffus*)'),
        ("[a-z]+ing", 'regular expressions are not supported ("[a-z]+ing" at column 1): write the word (ing)'),
        ("robots diffusion.*model", 'not supported ("diffusion.*model" at column 8)'),
        (r"\d+ parameters", r'not supported ("\d+" at column 1): write words, a "quoted phrase" or a prefix'),
        ("^diffusion", 'not supported ("^diffusion" at column 1): write the word (diffusion) or a prefix (diffus*)'),
        ("model$", 'not supported ("model$" at column 1)'),
        ("colou?r", "regular expressions are not supported"),
        ("a{2,}", "regular expressions are not supported"),
        ("x{3}", "regular expressions are not supported"),
        ("(foo|bar)+", 'not supported ("+" at column 10)'),
        ("(?i)diffusion", "regular expressions are not supported"),
        ('"diffusion.*model"', "regular expressions are not supported"),
        ("title:/agent.*/", "regular expressions are not supported"),
        ("diff*sion", "a prefix is one word followed by *"),
        ("*diffusion", "a prefix is one word followed by *"),
    ],
)
def test_regular_expressions_are_refused_with_what_to_write_instead(query, message):
    with pytest.raises(QueryError) as err:
        parse_query(query)
    assert message in str(err.value)


@pytest.mark.parametrize(
    "query, normalized",
    [
        ("text-to-image", '"text to image"'),
        ("cat:cs.CL", "cat:cs.cl"),
        ("3d", "3d"),
        ("upvotes>=5", "upvotes>=5"),
        ("don't", '"don t"'),
        ("LeCun's", '"lecun s"'),
        ("C++", "c"),
        ("GPT-4o", '"gpt 4o"'),
        ("1.5B", '"1 5b"'),
        ("Llama-3.1", '"llama 3 1"'),
        ("e.g.", '"e g"'),
        ("A/B", '"a b"'),
        ("what?", "what"),
        ('"[CLS] token"', '"cls token"'),
        ("diffus*", "diffus*"),
        ("title:robot*", "title:robot*"),
    ],
)
def test_what_only_looks_like_regex_syntax_still_works(query, normalized):
    assert normalize_query(query) == normalized


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["diffusion", "models", "and", "or", "not", "upvotes5", "upvotes", "3d", "a",
                                 "queries", "boxes", "model", "x1"]), min_size=1, max_size=6))
def test_lowercase_words_take_a_shortcut_to_the_same_tree(words):
    from bot.query import _Parser, _plain_words, includes_something, tokenize

    text = " ".join(words)
    try:
        node = _Parser(tokenize(text)).parse()
        expected = node if includes_something(node) else None
    except QueryError:
        expected = None
    shortcut = _plain_words(text)
    if shortcut is not None:
        assert shortcut == expected
    if expected is None:
        with pytest.raises(QueryError):
            parse_query(text)
    else:
        assert parse_query(text) == expected
    if not any(w in ("and", "or", "not") or w.startswith("upvotes") for w in words):
        assert shortcut is not None  # the shortcut is taken where it can be


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(alphabet=st.characters(max_codepoint=127), max_size=200), st.text(max_size=200)))
def test_raw_words_of_ascii_text_are_the_patterns_words(text):
    # raw_words reads ASCII text with bytes.translate (twice as fast): the same words as the
    # pattern's, which it still uses on any other text. The matcher's PaperView and preview's
    # word index split papers with it: the words the query language splits.
    from bot.query import _WORD, fold

    assert raw_words(text) == _WORD.findall(fold(text))
    assert raw_words(text + "é") == _WORD.findall(fold(text + "é"))
