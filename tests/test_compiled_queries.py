"""The compiled form of each subscription's query, kept in storage so that loading the index
reads it back instead of parsing: the engine built from it matches exactly as one built by
parsing afresh (and as the naive loop), stale or missing forms are parsed and stored again,
and migration m021 fills the column of an existing database."""

import marshal
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot import matching
from bot.errors import QueryError
from bot.matching import COMPILED_VERSION, IndexedMatcher, NaiveMatcher, compile_query, load_compiled
from bot.models import ChannelRef, Subscription
from bot.poller import Poller
from bot.query import parse_query
from storage import Store
from storage.migrations import m021_compiled_queries

from .test_matching import VOCAB, papers, query_texts, subscriptions_of

ML = ChannelRef("console", "ml")
CV = ChannelRef("slack", "C1")
T0 = datetime(2026, 11, 29, tzinfo=timezone.utc)


def stored(subs: list[Subscription]) -> list[Subscription]:
    """The same subscriptions as storage hands them to the engine: with their compiled form."""
    return [Subscription(s.id, s.channel, s.query, s.created_by, s.created_at, 0, compile_query(s.query))
            for s in subs]


def test_the_compiled_form_is_the_parsed_one_behind_a_version():
    for query in ["diffusion", "language agents", '"large language model" -video', "title:segm* cat:cs.CV",
                  '(author:"Yann LeCun" OR org:google) upvotes>=10', "source:huggingface"]:
        blob = compile_query(query)
        assert blob[:8] == COMPILED_VERSION
        assert load_compiled(blob) == matching._compile(parse_query(query))
        assert load_compiled(b"q0000000" + blob[8:]) is None  # another version: not used
        assert load_compiled(COMPILED_VERSION + b"\x00garbage") is None  # damaged: not used
    assert load_compiled(None) is None
    with pytest.raises(QueryError):
        compile_query("-video")


@settings(max_examples=300, deadline=None)
@given(st.lists(query_texts(), min_size=1, max_size=12), st.lists(papers(), min_size=1, max_size=4))
def test_an_engine_loaded_from_compiled_forms_matches_as_one_that_parses(texts, paper_list):
    subs = subscriptions_of(texts, (ML, CV))
    loaded, parsed, naive = IndexedMatcher(stored(subs)), IndexedMatcher(subs), NaiveMatcher(subs)
    assert loaded.take_recompiled() == {}  # every form was current: nothing parsed
    assert set(parsed.take_recompiled()) == {s.id for s in subs}
    for p in paper_list:
        assert loaded.match(p) == parsed.match(p) == naive.match(p)


# Keys the random queries' anchors are drawn from, given random counts: low ones, so that
# options often tie and the order they are met in decides.
_KEYS = sorted({*VOCAB, *(f"t:{w}" for w in VOCAB), *(f"{a} {b}" for a in VOCAB for b in VOCAB),
                *(f"p:{w[:3]}" for w in VOCAB), "a:lecun yann", "a:lecun", "a:borel", "c:cs.cv", "c:cs",
                "c:stat", "o:google", "s:huggingface", "s:arxiv"})


@settings(max_examples=400, deadline=None)
@given(query_texts(), st.dictionaries(st.sampled_from(_KEYS), st.integers(0, 3)))
def test_anchors_chosen_from_the_stored_options_are_the_ones_anchors_chooses(text, counts):
    try:
        node = parse_query(text)
    except QueryError:
        return

    def check(entry: matching._Entry, chosen: frozenset[str] | None) -> None:
        """The index keeps anchors' choice, but a prefix anchor names the whole prefix (of a
        prefix alone, or of an AND's prefix child with that anchor), and an AND whose one
        anchor leaves no second key goes under one of its prefixes, then that anchor."""
        if entry.keys is None:
            assert chosen is None
            return
        assert chosen is not None and len(set(entry.keys)) == len(entry.keys)  # a tuple of distinct keys
        prefixes = [c[2] for c in (node[1] if node[0] == "and" else [node]) if c[0] == "prefix"]
        if len(chosen) > 1 or node[0] not in ("and", "prefix"):
            assert frozenset(entry.keys) == chosen
            return
        (anchor,) = chosen
        if anchor.startswith("p:"):
            whole = [p for p in prefixes if "p:" + p[:6] == anchor]
            if whole:
                assert any(entry.keys == ("p:" + p,) for p in whole)
            else:  # an OR of prefixes gave it
                assert entry.keys == (anchor,)
        elif entry.keys != (anchor,):
            assert entry.second == (anchor,) and any(entry.keys == ("p:" + p,) for p in prefixes)

    check(matching._entry_from(text, load_compiled(compile_query(text)), counts), matching.anchors(node, counts))
    check(matching._entry_from(text, matching._compile(node), None), matching.anchors(node))


@pytest.mark.parametrize("workload", ["zipf", "real"])
def test_compiled_forms_give_the_same_matches_on_the_benchmark_workloads(workload):
    from bench.workloads import make_workload

    made = make_workload(workload, subscriptions=1500, papers=40, seed=3, history=200)
    subs = made.subscriptions()
    loaded = IndexedMatcher(stored(subs), papers=made.history)
    parsed = IndexedMatcher(subs, papers=made.history)
    matched = 0
    for p in made.papers:
        got = loaded.match(p)
        assert got == parsed.match(p), p.id
        matched += len(got)
    assert matched > 0


@pytest.mark.backends
def test_storage_keeps_the_compiled_form_of_new_and_changed_queries(store):
    first = store.add_subscription(ML, "diffusion", "u", T0).subscription
    second = store.add_subscription(ML, '"language model" -video', "u", T0).subscription
    changes = store.subscriptions_changed_since(0)
    forms = {s.id: load_compiled(s.compiled) for s in changes.subscriptions}
    assert forms == {first.id: load_compiled(compile_query("diffusion")),
                     second.id: load_compiled(compile_query('"language model" -video'))}
    store.change_subscription_query(ML, first.id, "video")
    after = store.subscriptions_changed_since(changes.version)
    assert [(s.id, load_compiled(s.compiled)) for s in after.subscriptions] == [
        (first.id, load_compiled(compile_query("video")))]
    # Kept again without a new version: nothing the engine has to pick up changed.
    store.save_compiled_queries({second.id: ('"language model" -video', b"other"), 9999: ("x", b"gone"),
                                 first.id: ("diffusion", b"the old query's")})  # changed since: not kept
    assert store.subscriptions_changed_since(after.version).subscriptions == []
    kept = {s.id: s.compiled for s in store.subscriptions_changed_since(0).subscriptions}
    assert kept[second.id] == b"other" and load_compiled(kept[first.id]) == load_compiled(compile_query("video"))
    assert store.get_subscription(second.id) == second  # the form is not part of the value


def test_stale_or_missing_forms_are_parsed_and_stored_again_by_the_poller(tmp_path, caplog):
    store = Store(tmp_path / "db.sqlite")
    ids = [store.add_subscription(ML, q, "u", T0).subscription.id for q in ("diffusion", "video", "robot arm")]
    ids.append(store.add_subscription(CV, "video", "u", T0).subscription.id)
    old_form = b"q0000000" + marshal.dumps(("word", "any", "nonsense", "nonsense"))  # an older version's
    store.db.execute("UPDATE subscriptions SET compiled = ? WHERE id = ?", [old_form, ids[0]])
    store.db.execute("UPDATE subscriptions SET compiled = NULL WHERE id IN (?, ?)", [ids[1], ids[3]])
    store.db.execute("INSERT INTO subscriptions (channel, query, created_by, created_at, version) "
                     "VALUES (?, '-video', 'u', ?, 100)", [CV.key, T0.isoformat()])  # stored by other rules
    store.db.conn.commit()
    poller = Poller(store)
    poller.sync_subscriptions()
    assert poller.matcher.ids() == set(ids)
    assert "cannot be parsed" in caplog.text
    rows = dict(store.db.execute("SELECT id, compiled FROM subscriptions").fetchall())
    # (Compared loaded: marshal's bytes for the same value vary with reference counts.)
    assert [load_compiled(rows[i]) for i in ids] == [
        load_compiled(compile_query(q)) for q in ("diffusion", "video", "robot arm", "video")]
    got = poller.matcher.match(paper_with("Diffusion of video"))
    assert [(m.subscription_id, m.terms) for m in got] == [
        (ids[0], ("diffusion in title",)), (ids[1], ("video in title",)), (ids[3], ("video in title",))]
    # Nothing stale is left: a second engine loads every form as stored, parsing none.
    again = IndexedMatcher(store.subscriptions_changed_since(0).subscriptions[:4])
    assert again.take_recompiled() == {}
    store.close()


def paper_with(title: str):
    from .fakes import paper

    return paper("2411.00001", title, "An abstract.")


def test_migration_m021_fills_the_compiled_forms_of_an_existing_database(tmp_path):
    path = tmp_path / "old.db"
    old = Store(path)
    # The database as the last version left it: no compiled column, subscriptions in it.
    old.db.execute("DELETE FROM _sqlite_migrations WHERE name = 'm021_compiled_queries'")
    old.db.execute("ALTER TABLE subscriptions DROP COLUMN compiled")
    for i, query in enumerate(["diffusion", "title:segm* cat:cs.cv", "-video"]):
        old.db.execute("INSERT INTO subscriptions (channel, query, created_by, created_at, version) "
                       "VALUES (?, ?, 'u', ?, ?)", [ML.key, query, T0.isoformat(), i + 1])
    old.db.conn.commit()
    old.close()
    store = Store(path)  # migrates
    rows = store.db.execute("SELECT query, compiled FROM subscriptions ORDER BY id").fetchall()
    assert [(query, load_compiled(blob)) for query, blob in rows] == [
        ("diffusion", load_compiled(compile_query("diffusion"))),
        ("title:segm* cat:cs.cv", load_compiled(compile_query("title:segm* cat:cs.cv"))),
        ("-video", None)]  # does not parse: left for the engine to log and skip
    assert rows[2][1] is None
    assert store.subscriptions_changed_since(0).version == 3  # versions untouched
    m021_compiled_queries(store.db)  # again: nothing changes
    assert store.db.execute("SELECT query, compiled FROM subscriptions ORDER BY id").fetchall() == rows
    store.close()


@pytest.mark.backends
def test_a_query_changed_while_the_poller_recompiles_keeps_the_new_query_s_form(store):
    # The poller reads a subscription with a stale form (an upgrade: every stored form is),
    # parses it and writes the fresh form back; a command that changes its query in between
    # must not have the old query's form written over the new one's: the next load would
    # match the old query under the new one's name.
    sub = store.add_subscription(ML, "diffusion", "u", T0).subscription
    store.save_compiled_queries({sub.id: ("diffusion", b"q0000000" + marshal.dumps(("stale",)))})
    poller = Poller(store)
    real_save = store.save_compiled_queries

    def changed_first(compiled):  # the command commits between the poller's read and its write
        store.change_subscription_query(ML, sub.id, "video")
        real_save(compiled)

    store.save_compiled_queries = changed_first  # type: ignore[method-assign]
    poller.sync_subscriptions()
    store.save_compiled_queries = real_save  # type: ignore[method-assign]
    (row,) = store.subscriptions_changed_since(0).subscriptions
    assert row.query == "video" and load_compiled(row.compiled) == load_compiled(compile_query("video"))
    restarted = IndexedMatcher([row])
    assert [m.subscription_id for m in restarted.match(paper_with("Video of robots"))] == [sub.id]
    assert restarted.match(paper_with("Diffusion of robots")) == []
