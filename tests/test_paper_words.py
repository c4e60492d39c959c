"""preview's word index (storage/paper_words.py): a pre-filter only, so what preview finds
through it must equal the evaluator run over every stored paper of the window."""

import asyncio
import random
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from bot.errors import QueryError
from bot.matching import PaperView, evaluate
from bot.query import parse_query, raw_words, render
from storage import Store, paper_words

from .fakes import paper

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
SINCE = NOW - timedelta(days=30)

# Words whose plurals, stems and foldings are easy to get wrong, and some plain ones.
WORDS = ["bus", "buses", "query", "queries", "box", "boxes", "match", "matches", "analysis", "analyses",
         "model", "models", "diffusion", "Diffusion-based", "class", "classes", "status", "lens", "lenses",
         "series", "study", "studies", "data", "robot", "robots", "Émile", "naïve", "ﬁne-tuning", "ＧＰＴ",
         "GPT-4", "language", "large", "video", "world", "agent", "agents", "policy", "policies", "x", "3D",
         "learn", "learning", "learned", "denoise", "denoising", "graph", "graphs", "c++", "A/B", "e.g."]
NAMES = ["Yann LeCun", "Yann A. LeCun", "Wei Wang", "Wang Wei", "Émile Zola", "Li Na", "Ada Lovelace",
         "Ada King Lovelace", "Wang Wei Wang", "Lovelace Ada", "J. R. R. Tolkien", "Ｌｉ Ｎａ"]
CATEGORIES = ["cs.CL", "cs.LG", "cs.RO", "stat.ML", "hep-th", "math.OC", "eess.IV"]
TERMS = ["bus", "buses", "query", "queries", "box", "match", "analysis", "analyses", "model", "diffusion",
         '"diffusion based"', "diffusion-based", "class", "status", "lens", "series", "study", "studies",
         "emile", "naive", "fine", "gpt", "gpt-4", '"large language model"', '"world model"', "robot*", "mod*",
         "stud*", "que*", "bus*", "analy*", "lens*", "denois*", "polic*", "agents", "3d", "x", "title:model",
         "abstract:robots", 'title:"world model"', "title:diff*", "author:LeCun", 'author:"Yann LeCun"',
         'author:"Wei Wang"', "author:Zola", "cat:cs", "cat:cs.CL", "cat:hep-th", "cat:stat", "upvotes>=50",
         "upvotes<10", "upvotes=7", "source:arxiv", "source:huggingface", "org:google", 'org:"meta ai"', "org:meta",
         # prefixes over unstemmed words; author keys; organizations decided in SQL
         "queries*", "query*", "analyse*", "boxe*", "emil*", "naï*", "ｇｐｔ*", "abstract:que*", "title:stud*",
         'author:"Ada Lovelace"', 'author:"Ada King Lovelace"', 'author:"King Lovelace"', 'author:"Wang Wang"',
         'author:"Wei Wang Wang"', "author:Wang", "author:Wei", "author:Tolkien", 'author:"emile zola"',
         "author:li", 'org:"google deepmind"', "org:deepmind", "org:goog", "org:méta", "-org:google",
         "-author:lecun", "-upvotes>=50", "-source:arxiv", "-stud*"]


def random_paper(rng: random.Random, i: int) -> tuple:
    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    made = paper(
        f"2411.{i:05d}", text(rng.randint(2, 8)).capitalize(), text(rng.randint(5, 30)) + ".",
        authors=tuple(rng.sample(NAMES, rng.randint(0, 3))),
        categories=tuple(rng.sample(CATEGORIES, rng.randint(0, 2))),
        upvotes=rng.choice([None, 0, 7, 9, 10, 49, 50, 200]),
        organization=rng.choice([None, "Google", "Meta AI", "Google DeepMind", "ＧＯＯＧＬＥ", "Méta AI", "Googleplex",
                                 "AI at Meta"]),
        source=rng.choice(["arxiv", "huggingface"]),
        is_update=rng.random() < 0.1,
    )
    first_seen = NOW - timedelta(days=rng.choice([1, 5, 29, 31, 60]), minutes=i)
    return made, first_seen, rng.random() < 0.9


def random_query(rng: random.Random, depth: int = 0) -> str:
    shape = rng.random()
    if depth > 2 or shape < 0.35:
        return rng.choice(TERMS)
    if shape < 0.7:
        return " ".join(random_query(rng, depth + 1) for _ in range(rng.randint(2, 3)))
    if shape < 0.85:
        return "(" + " OR ".join(random_query(rng, depth + 1) for _ in range(rng.randint(2, 3))) + ")"
    return f"{random_query(rng, depth + 1)} -{random_query(rng, depth + 1)}"


def stocked(store, count: int = 400, seed: int = 3) -> Store:
    rng = random.Random(seed)
    made_all = []
    for i in range(count):
        made, first_seen, listed = random_paper(rng, i)
        store.add_papers([made], first_seen, listed=listed)
        made_all.append(made)
    # A later listing enriches some (upvotes, organization, another source) and lists some
    # a lookup had stored: what preview reads of them must follow.
    for made in rng.sample(made_all, count // 5):
        again = replace(made, upvotes=rng.choice([3, 50, 120]), source="huggingface",
                        organization=rng.choice([None, "Google", "Meta AI"]))
        store.add_papers([again], NOW - timedelta(days=rng.choice([2, 40])))
    assert _window_follows_papers(store)
    return store


def _window_follows_papers(store: Store) -> bool:
    if not isinstance(store, Store):
        return True  # SQLite's paper_window: PostgreSQL reads papers itself
    columns = "rowid, id, first_seen, upvotes, sources, organization"
    return store.db.execute(f"SELECT {columns} FROM paper_window ORDER BY rowid").fetchall() == store.db.execute(
        f"SELECT {columns} FROM papers WHERE listed = 1 AND is_update = 0 ORDER BY rowid").fetchall()


def brute_force(store: Store, node: tuple, views: list[PaperView] | None = None) -> list[str]:
    """The evaluator over every listed paper of the window, newest first (`views`: those
    papers, read and tokenized once by the caller)."""
    if views is None:
        views = [PaperView(p) for p in store.papers_listed_since(SINCE, 10**9) if not p.is_update]
    return [v.paper.id for v in views if evaluate(node, v) is not None]


def through_index(store: Store, node: tuple) -> tuple[list[str], int]:
    candidates = store.preview_candidates(render(node), SINCE)
    return [p.id for p in candidates.papers if evaluate(node, PaperView(p)) is not None], len(candidates.papers)


@pytest.mark.backends
def test_preview_through_the_index_equals_the_evaluator_over_everything(store):
    stocked(store)
    rng = random.Random(7)
    views = [PaperView(p) for p in store.papers_listed_since(SINCE, 10**9) if not p.is_update]
    window = len(views)
    checked = narrowed = matched = exact = 0
    queries = [*TERMS, *(random_query(rng) for _ in range(600))]
    for text in queries:
        try:
            node = parse_query(text)
        except QueryError:
            continue
        found, candidates = through_index(store, node)
        expected = brute_force(store, node, views)
        assert found == expected, text
        newest = store.preview_candidates(render(node), SINCE, limit=3)
        if newest.exact:  # the store decided alone: it must agree with the evaluator
            assert (newest.count, [p.id for p in newest.papers]) == (len(expected), expected[:3]), text
            exact += 1
        checked += 1
        narrowed += candidates < window
        matched += bool(found)
    store.close()
    assert checked > 500 and matched > 200 and checked * 0.5 < exact < checked
    assert narrowed > checked * 0.6  # the index does narrow, for most queries


@pytest.mark.backends
def test_the_index_is_exact_for_words_phrases_prefixes_categories_authors_and_organizations(store):
    stocked(store)
    for text in ["buses", "queries", '"large language model"', "cat:cs", "cat:hep-th", "naive -fine",
                 "(model OR video) -title:robots", "fine gpt", "model upvotes>=50 source:huggingface",
                 "robot*", "queries*", "title:stud* -bus*", "author:LeCun", 'author:"Yann LeCun"',
                 "model -author:zola", "org:google diffusion", 'org:"meta ai"', "model -org:google",
                 "(author:wang OR author:zola) -que*", "upvotes>=50 -source:arxiv"]:
        node = parse_query(text)
        candidates = store.preview_candidates(render(node), SINCE)
        assert candidates.exact, text
        assert [p.id for p in candidates.papers] == brute_force(store, node), text  # nothing else read
    # The keys of a longer name require each part, not their order: left to the evaluator.
    assert not store.preview_candidates('author:"Ada King Lovelace"', SINCE, limit=3).exact
    for text in ["upvotes>=50 -video", "(org:google OR model)"]:
        # SQLite's FTS5 applies a NOT only beside a word it requires, and an OR only within
        # FTS5; PostgreSQL's narrowing is one SQL condition, and decides these too.
        newest = store.preview_candidates(text, SINCE, limit=3)
        assert newest.exact is not isinstance(store, Store), text
        if newest.exact:
            expected = brute_force(store, parse_query(text))
            assert (newest.count, [p.id for p in newest.papers]) == (len(expected), expected[:3]), text
    store.close()


def test_author_keys_decide_names_of_one_or_two_parts():
    assert paper_words.author_keys(["Yann A. LeCun", "Wang Wei Wang", "X. Y."]) == \
        "lecun lecun.yann wang wang.wang wang.wei"
    for tokens, exact in [(("lecun",), True), (("yann", "lecun"), True), (("wang", "wei", "wang"), False)]:
        expr = paper_words._fts(("author", tokens, " ".join(tokens)))
        assert expr is not None and expr.exact is exact


def test_org_terms_are_decided_by_name_parts_in_order():
    assert paper_words.org_matches("Google DeepMind", "google deepmind") == 1
    assert paper_words.org_matches("ＧＯＯＧＬＥ", "google") == 1  # folded as the evaluator folds
    assert paper_words.org_matches("Googleplex", "google") == 0  # a part, not a substring
    assert paper_words.org_matches("DeepMind Google", "google deepmind") == 0
    assert paper_words.org_matches(None, "google") == 0


@pytest.mark.backends
def test_stored_counts_the_whole_window_without_a_cap(store):
    stocked(store, count=200)
    listed = store.papers_listed_since(SINCE, 10**9)
    assert store.preview_candidates("model", SINCE).stored == len(listed) > 20
    store.close()


def test_papers_not_indexed_yet_are_still_found(tmp_path, monkeypatch):
    store = stocked(Store(tmp_path / "bot.db"), count=100)
    store.index_paper_words()
    late = paper("2411.99999", "A late buses paper", "Nothing else.")
    store.add_papers([late], NOW)
    monkeypatch.setattr(paper_words, "index_new", lambda db, **kw: 0)  # as when the lock was busy
    found = store.preview_candidates("bus", SINCE).papers
    assert found[0].id == "2411.99999"
    monkeypatch.undo()
    assert store.index_paper_words() == 1
    assert store.preview_candidates("bus", SINCE).papers[0].id == "2411.99999"
    store.close()


@pytest.mark.backends
def test_preview_reads_from_a_worker_thread_with_its_own_connection(store):
    stocked(store, count=100)
    node = parse_query("diffusion -video")

    async def off_loop() -> list[str]:
        candidates = await asyncio.to_thread(store.preview_candidates, render(node), SINCE)
        return [p.id for p in candidates.papers if evaluate(node, PaperView(p)) is not None]

    assert store.reads_off_loop()
    assert asyncio.run(off_loop()) == brute_force(store, node)
    found = asyncio.run(asyncio.to_thread(store.search_papers, ["diffusion"], 3))
    assert found and all("diffusion" in raw_words(p.title + " " + p.summary) for p in found)
    store.close()


def test_an_in_memory_store_reads_on_its_own_thread():
    store = Store(":memory:")
    store.add_papers([paper("2411.00001", "World models", "Robots.")], NOW)
    assert not store.reads_off_loop()
    assert [p.id for p in store.preview_candidates("world", SINCE).papers] == ["2411.00001"]
    store.close()


@pytest.mark.backends
@pytest.mark.parametrize("text", ["upvotes>=50", "source:huggingface", "org:google"])
def test_queries_without_words_scan_the_window(store, text):
    stocked(store, count=150)
    node = parse_query(text)
    if isinstance(store, Store):
        assert paper_words.narrowing(node).match is None
    assert through_index(store, node)[0] == brute_force(store, node)
    store.close()


@pytest.mark.backends
def test_stored_follows_papers_listed_later_and_counts_part_of_the_first_day(store):
    day = NOW.replace(hour=0, minute=0)
    store.add_papers([paper("2411.00001", "A", "x.")], day + timedelta(hours=1))
    store.add_papers([paper("2411.00002", "B", "x.")], day + timedelta(hours=5))
    store.add_papers([paper("2411.00003", "C", "x.")], day - timedelta(days=1))
    store.add_papers([paper("2411.00004", "D", "x.")], day - timedelta(days=3), listed=False)  # a lookup
    since = day + timedelta(hours=3)
    assert store.preview_candidates("x", since).stored == 1
    assert store.preview_candidates("x", day - timedelta(days=2)).stored == 3
    store.add_papers([paper("2411.00004", "D", "x.")], day + timedelta(hours=4))  # listed now
    assert store.preview_candidates("x", since).stored == 2
    assert store.preview_candidates("x", day - timedelta(days=5)).stored == 4
    assert _window_follows_papers(store)
    if not isinstance(store, Store):
        return  # the rest: SQLite's per-day counts
    days = dict(store.db.execute("SELECT day, listed FROM papers_listed_days").fetchall())
    assert sum(days.values()) == store.db.execute("SELECT count(*) FROM papers WHERE listed = 1").fetchone()[0]
    store.close()


def _upgraded(tmp_path, count: int = 300) -> Store:
    """A store filled under m015's index (every paper indexed there), then upgraded to m022."""
    from sqlite_utils import Database

    from storage.migrations import migrations

    path = tmp_path / "old.db"
    old = Database(path)
    migrations.apply(old, stop_before="m022_paper_words_exact")
    old.close()
    rng = random.Random(3)
    rows = [random_paper(rng, i) for i in range(count)]
    with pytest.MonkeyPatch.context() as patch:  # the old schema, as an old bot would have filled it
        patch.setattr("storage.migrations.migrations.pending", lambda db: False)
        store = Store(path)
        for made, first_seen, listed in rows:
            store.add_papers([made], first_seen, listed=listed)
        store.db.execute("UPDATE paper_words_state SET indexed = (SELECT max(rowid) FROM papers)")
        store.db.conn.commit()
        store.close()
    return Store(path)  # migrates


def test_an_upgrade_leaves_every_stored_paper_to_the_backlog_and_counts_the_days(tmp_path):
    store = _upgraded(tmp_path)
    total = store.count_papers()
    indexed, backlog = store.db.execute("SELECT indexed, backlog FROM paper_words_state").fetchone()
    assert indexed == backlog == total
    assert not store.db.execute("SELECT rowid FROM paper_words WHERE paper_words MATCH 'model' LIMIT 1").fetchall()
    listed = store.db.execute("SELECT count(*) FROM papers WHERE listed = 1").fetchone()[0]
    assert store.db.execute("SELECT sum(listed) FROM papers_listed_days").fetchone()[0] == listed
    assert store.preview_candidates("model", SINCE).stored == len(store.papers_listed_since(SINCE, 10**9))
    assert _window_follows_papers(store)
    store.close()
    again = Store(tmp_path / "old.db")  # m022 is idempotent: run again, it keeps the index and the counts
    from storage.migrations import m022_paper_words_exact

    again.index_paper_words(backlog=True)
    m022_paper_words_exact(again.db)
    assert again.db.execute("SELECT indexed, backlog FROM paper_words_state").fetchone() == (total, 0)
    assert again.db.execute("SELECT sum(listed) FROM papers_listed_days").fetchone()[0] == listed
    again.close()


def test_preview_is_right_while_the_backlog_is_indexed_and_does_not_index_it_itself(tmp_path):
    store = _upgraded(tmp_path)
    rng = random.Random(11)
    queries = [parse_query(t) for t in ["model", "robot*", 'author:"Yann LeCun"', "org:google diffusion", "cat:cs"]]
    queries += [node for node in (_parsed(random_query(rng)) for _ in range(40)) if node is not None]

    def check() -> None:
        for node in queries:
            found, _ = through_index(store, node)
            assert found == brute_force(store, node), render(node)

    check()  # nothing indexed: every paper of the window read unnarrowed
    assert store.db.execute("SELECT backlog FROM paper_words_state").fetchone()[0] == store.count_papers()
    assert not store.preview_candidates("model", SINCE, limit=3).exact
    # Half way (newest first): the window's newest papers are narrowed, the rest read as they are.
    done = store.index_paper_words(backlog=True, stop=_after(2))  # asked by the new rows' catch-up, then one batch
    backlog = store.db.execute("SELECT backlog FROM paper_words_state").fetchone()[0]
    assert done == paper_words.CATCH_UP_BATCH and backlog == store.count_papers() - done
    check()
    assert store.index_paper_words(backlog=True) == store.count_papers() - done
    assert store.db.execute("SELECT backlog FROM paper_words_state").fetchone()[0] == 0
    check()
    assert store.preview_candidates("model", SINCE, limit=3).exact
    store.close()


def _parsed(text: str) -> tuple | None:
    try:
        return parse_query(text)
    except QueryError:
        return None


def _after(asks: int):
    """A `stop` that says go on the first `asks` times it is asked, then stop."""
    asked = iter(range(asks + 1))
    return lambda: next(asked, asks) >= asks


async def test_the_bot_indexes_the_backlog_in_the_background_and_preview_answers_meanwhile(tmp_path):
    import io

    import handlers
    from bot.app import App
    from bot.config import Secrets, parse_config
    from bot.models import ChannelRef

    _upgraded(tmp_path).close()
    config = parse_config({"storage": {"path": str(tmp_path / "old.db")},
                           "sources": {"huggingface": {"enabled": False}, "arxiv": {"enabled": False}}}, Secrets({}))
    app = App(config, stdout=io.StringIO(), clock=lambda: NOW)
    store = app.store
    node = parse_query("model -robot*")
    expected = len(brute_force(store, node))  # type: ignore[arg-type]  # the App's Store

    def backlog() -> int:
        return store.db.execute("SELECT backlog FROM paper_words_state").fetchone()[0]  # type: ignore[attr-defined]

    def preview() -> str:
        return f"preview {render(node)}"

    before = backlog()
    reply = await app.handle_command(handlers.request_from_text(ChannelRef("console", "c"), "u", preview()))
    assert f"matched {expected:,} of" in reply.text and backlog() == before > 0  # right, and no indexing
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(stop, tick=0.01))
    deadline = asyncio.get_running_loop().time() + 30
    while backlog():
        assert asyncio.get_running_loop().time() < deadline, "the backlog was not indexed"
        await asyncio.sleep(0.01)
    reply = await app.handle_command(handlers.request_from_text(ChannelRef("console", "c"), "u", preview()))
    assert f"matched {expected:,} of" in reply.text
    stop.set()
    await asyncio.wait_for(running, 5)
    await app.aclose()


def test_a_reader_off_the_stores_thread_never_creates_a_deleted_database(tmp_path):
    from bot.errors import StorageError

    store = stocked(Store(tmp_path / "bot.db"), count=10)
    path = tmp_path / "bot.db"
    path.unlink()
    for read in (lambda: store.due_channels(NOW), lambda: store.preview_candidates("model", SINCE)):
        with pytest.raises(StorageError):
            asyncio.run(asyncio.to_thread(read))
        assert not path.exists()  # left missing, for Store.check_file to say so
    store.close()
