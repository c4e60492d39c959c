"""The full /papers command set beyond subscribe/unsubscribe/list/help (see test_handlers.py)."""

import asyncio
import json
from datetime import timedelta

import pytest

import handlers
from bot.lookup import PaperLookup
from bot.models import ChannelRef, Match
from bot.sources import ArxivSource, HuggingFaceSource, make_client
from fakes.http import Canned

from .fakes import due_now, fixture, paper

ML = ChannelRef("console", "ml")


@pytest.fixture
def ctx(store, make_config, clock):
    return handlers.Context(store, make_config(limits={"commands_per_minute": 1000}), clock)


def run(ctx, text, channel=ML, can_manage=True, user="u1"):
    return asyncio.run(handlers.handle(ctx, handlers.request_from_text(channel, user, text, can_manage)))


def stock(store, clock):
    """Synthetic stored history: listed over the last days."""
    papers = [
        paper("2411.00001", "Latent diffusion for video", "We denoise frames.", upvotes=40, listed_on=clock().date()),
        paper("2411.00002", "Diffusion policies for robots", "Robots learn.", upvotes=5,
              listed_on=clock().date() - timedelta(days=3)),
        paper("2411.00003", "Speculative decoding at scale", "Faster LLM inference with drafts.", upvotes=90,
              listed_on=clock().date() - timedelta(days=20)),
        paper("2411.00004", "Graph networks", "Message passing.", listed_on=clock().date()),
    ]
    for i, p in enumerate(papers):
        store.add_papers([p], clock() - timedelta(hours=len(papers) - i))
    store.add_papers([paper("2001.00005", "Old diffusion paper", is_update=True)], clock())
    return papers


# ---- subscribe estimate, preview, backfill -------------------------------------------------

def test_preview_estimates_from_stored_history_without_subscribing(ctx, clock):
    stock(ctx.store, clock)
    reply = run(ctx, "preview Diffusion")
    assert reply.ok
    assert reply.text.startswith("`diffusion`: in the last 30 days it would have matched 2 of 5 stored papers")
    assert "• Diffusion policies for robots (arXiv:2411.00002)" in reply.text
    assert "• Latent diffusion for video (arXiv:2411.00001)" in reply.text
    assert "Old diffusion" not in reply.text  # replacements are not news
    assert ctx.store.subscriptions(ML) == []


@pytest.mark.backends
def test_preview_with_nothing_stored_and_bad_queries(ctx):
    assert "`diffusion`: no papers were stored in the last 30 days" in run(ctx, "preview diffusion").text
    bad = run(ctx, 'preview "open')
    assert not bad.ok and "Cannot preview: unclosed quote at column 1." in bad.text
    assert "Usage: `/papers preview <query> [--min-score X]`" in bad.text


def test_typed_text_quoted_back_cannot_end_its_code_span(ctx):
    reply = run(ctx, "search `x` **y**")
    assert reply.text == "No stored paper matches `\u2019x\u2019 **y**`."
    assert run(ctx, "unsubscribe `1`").text.startswith("`\u20191\u2019` is not a subscription number.")


def test_a_long_title_in_an_estimate_is_cut_at_a_word_and_says_so(ctx, clock):
    title = "Diffusion " + " ".join(["transformers"] * 20)  # 250 characters
    ctx.store.add_papers([paper("2411.00001", title, listed_on=clock().date())], clock())
    (line,) = [x for x in run(ctx, "preview diffusion").text.splitlines() if x.startswith("• ")]
    assert line.endswith("transformers… (arXiv:2411.00001)") and len(line) < 170


def test_subscribe_reports_the_estimate(ctx, clock):
    stock(ctx.store, clock)
    reply = run(ctx, "subscribe diffusion")
    assert "Subscribed this channel to `diffusion` (#1)" in reply.text
    assert "would have matched 2 of 5 stored papers" in reply.text
    assert reply.queued == 0 and ctx.store.count_pending() == 0  # no history is posted


def test_backfill_queues_the_most_recent_matches_once(ctx, clock):
    stock(ctx.store, clock)
    reply = run(ctx, "subscribe diffusion --backfill 1")
    assert reply.queued == 1 and "Backfill: posting 1 recent match now." in reply.text
    (delivery,) = due_now(ctx.store, clock())
    assert delivery.paper_id == "2411.00002"  # the newest match
    again = run(ctx, "subscribe --backfill 5 diffusion")
    assert again.queued == 1 and "(1 already posted here)" in again.text
    assert ctx.store.count_pending(ML) == 2


@pytest.mark.parametrize("query", ["diffusion", "diffus*", "diffusion upvotes>=0", "diffusion -author:nobody",
                                   'author:"ada lovelace"', "author:lovelace -author:babbage", "cat:cs.cl"])
def test_preview_counts_every_match_and_shows_the_newest(ctx, clock, query):
    # Exact narrowings (the store counts) and inexact ones (the evaluator counts) agree.
    many = [paper(f"2411.{i:05d}", f"Diffusion study {i}", "Denoising.", upvotes=i, authors=("Ada B. Lovelace",),
                  categories=("cs.CL",)) for i in range(30)]
    many += [paper(f"2412.{i:05d}", f"Graph study {i}", "Message passing.", authors=("Lovelace Ada", "C. Babbage"))
             for i in range(12)]
    for i, p in enumerate(many):
        ctx.store.add_papers([p], clock() - timedelta(minutes=len(many) - i))
    reply = run(ctx, f"preview {query}")
    assert "would have matched 30 of 42 stored papers, for example:" in reply.text
    assert reply.text.count("• ") == 3 and "• Diffusion study 29 (arXiv:2411.00029)" in reply.text
    subscribed = run(ctx, f"subscribe {query} --backfill 20")
    assert subscribed.queued == 20 and "would have matched 30 of 42" in subscribed.text
    assert {d.paper_id for d in due_now(ctx.store, clock())} == {f"2411.{i:05d}" for i in range(10, 30)}


@pytest.mark.parametrize("text", ["subscribe diffusion --backfill", "subscribe diffusion --backfill 0",
                                  "subscribe diffusion --backfill 21", "subscribe diffusion --backfill lots"])
def test_backfill_needs_a_small_number(ctx, text):
    reply = run(ctx, text)
    assert not reply.ok and "--backfill needs a number from 1 to 20" in reply.text
    assert ctx.store.subscriptions(ML) == []


def test_unsubscribe_all_names_what_was_removed(ctx):
    assert run(ctx, "unsubscribe all").text == "This channel has no subscriptions to remove."
    run(ctx, "subscribe diffusion")
    run(ctx, "subscribe agents")
    run(ctx, "subscribe robots", channel=ChannelRef("console", "other"))
    reply = run(ctx, "unsubscribe ALL")
    assert reply.text == "Unsubscribed all 2: #1 `diffusion`, #2 `agents`."
    assert ctx.store.subscriptions(ML) == [] and len(ctx.store.subscriptions()) == 1


@pytest.mark.backends
def test_unsubscribing_settles_the_deliveries_only_it_matched(ctx, clock):
    # Queued and not sent yet: a paper the removed subscription alone matched is never posted
    # (nor counted in the next digest); one another subscription matched too goes out for that one.
    store = ctx.store
    store.add_papers([paper("2411.00001", "Diffusion"), paper("2411.00002", "Diffusion video"),
                      paper("2411.00003", "Video")], clock())
    run(ctx, "subscribe diffusion")
    run(ctx, "subscribe video")
    cv = ChannelRef("console", "cv")
    run(ctx, "subscribe diffusion", channel=cv)
    diffusion, video = (sub.id for sub in store.subscriptions(ML))
    (elsewhere,) = (sub.id for sub in store.subscriptions(cv))
    store.enqueue("2411.00001", [Match(diffusion, ML, "diffusion", ("diffusion in title",))], clock())
    store.enqueue("2411.00002", [Match(diffusion, ML, "diffusion", ("diffusion in title",)),
                                 Match(video, ML, "video", ("video in title",))], clock())
    store.enqueue("2411.00003", [Match(video, ML, "video", ("video in title",))], clock())
    store.enqueue("2411.00001", [Match(elsewhere, cv, "diffusion", ("diffusion in title",))], clock())

    assert run(ctx, f"unsubscribe {diffusion}").ok
    pending = {d.paper_id: d.matched for d in store.pending_for_channel(ML)}
    assert pending == {"2411.00002": (Match(video, ML, "video", ("video in title",)),),
                       "2411.00003": (Match(video, ML, "video", ("video in title",)),)}
    assert store.count_pending(cv) == 1  # another channel's subscription of the same query
    assert store.delivery_counts().unsubscribed == 1

    assert run(ctx, "unsubscribe all").ok
    assert store.count_pending(ML) == 0 and store.count_pending(cv) == 1
    assert store.delivery_counts().unsubscribed == 3


@pytest.mark.backends
def test_a_mute_keeps_what_it_mutes_from_going_out_from_the_queue_too(ctx, clock):
    # Muted from the first card of a burst: the queued papers with the term are not posted;
    # the others are, with the terms the new query matches; another subscription's, unchanged.
    store = ctx.store
    store.add_papers([paper("2411.00001", "Diffusion for video", "Frames."),
                      paper("2411.00002", "Diffusion policies", "Robots learn."),
                      paper("2411.00003", "Video diffusion models", "Video.")], clock())
    run(ctx, "subscribe diffusion")
    run(ctx, "subscribe robots")
    diffusion, robots = (sub.id for sub in store.subscriptions(ML))
    found = ("diffusion in title",)
    for paper_id in ("2411.00001", "2411.00002", "2411.00003"):
        also = [Match(robots, ML, "robots", ("robots in abstract",))] if paper_id == "2411.00002" else []
        store.enqueue(paper_id, [Match(diffusion, ML, "diffusion", found), *also], clock())

    assert run(ctx, f"mute {diffusion} video").text == f"#{diffusion} is now `diffusion -video`."
    pending = {d.paper_id: d.matched for d in store.pending_for_channel(ML)}
    assert pending == {"2411.00002": (Match(diffusion, ML, "diffusion -video", found),
                                      Match(robots, ML, "robots", ("robots in abstract",)))}
    assert store.delivery_counts().unsubscribed == 2


# ---- search, trending -------------------------------------------------------------------

@pytest.mark.backends
def test_search_ranks_stored_papers(ctx, clock):
    stock(ctx.store, clock)
    reply = run(ctx, "search diffusion robots")
    assert reply.ok and [c.paper_id for c in reply.cards] == ["2411.00002"]
    broad = run(ctx, "search diffusion")
    assert {c.paper_id for c in broad.cards} >= {"2411.00001", "2411.00002"}
    either = run(ctx, "search robots decoding")  # no paper has both: any word will do
    assert {c.paper_id for c in either.cards} == {"2411.00002", "2411.00003"}


@pytest.mark.backends
def test_search_leaves_out_words_and_reads_and_or_not_as_meant(ctx, clock):
    # `-video` and `NOT video` were looked for as "video"; `AND` was a word on SQLite, dropped
    # on PostgreSQL (a stop word): the same search found other papers on each.
    stock(ctx.store, clock)
    for text in ("search diffusion -video", "search diffusion NOT video", "search diffusion NOT videos"):
        assert {c.paper_id for c in run(ctx, text).cards} == {"2411.00002", "2001.00005"}, text  # not 2411.00001
    assert [c.paper_id for c in run(ctx, "search diffusion AND robots").cards] == ["2411.00002"]
    assert {c.paper_id for c in run(ctx, "search robots OR decoding").cards} == {"2411.00002", "2411.00003"}
    only_out = run(ctx, "search -diffusion")
    assert not only_out.ok and "not only words to leave out" in only_out.text
    assert "No stored paper matches" in run(ctx, "search video -video").text
    # A prefix: `diffus*` found nothing on SQLite (its stemmer made "diffus" "diffu").
    assert {c.paper_id for c in run(ctx, "search diffus*").cards} == {"2411.00001", "2411.00002", "2001.00005"}
    assert {c.paper_id for c in run(ctx, "search specul* decod*").cards} == {"2411.00003"}
    assert "No stored paper matches" in run(ctx, "search zzq*").text


@pytest.mark.backends
def test_search_treats_input_as_words_never_as_fts_syntax(ctx, clock):
    stock(ctx.store, clock)
    for text in ['search "unbalanced', "search NEAR(a b)", "search title:*", "search AND OR NOT"]:
        assert run(ctx, text).ok
    assert "No stored paper matches" in run(ctx, "search zzzqqq").text
    empty = run(ctx, "search ?!")
    assert not empty.ok and "Usage: `/papers search <words>`" in empty.text


@pytest.mark.backends
def test_trending_windows(ctx, clock):
    stock(ctx.store, clock)
    week = run(ctx, "trending")
    assert [c.paper_id for c in week.cards] == ["2411.00001", "2411.00002"]  # by upvotes, listed in 7 days
    assert [c.paper_id for c in run(ctx, "trending month").cards] == ["2411.00003", "2411.00001", "2411.00002"]
    assert [c.paper_id for c in run(ctx, "trending today").cards] == ["2411.00001"]
    bad = run(ctx, "trending year")
    assert not bad.ok and "use today, week or month" in bad.text


# ---- show ------------------------------------------------------------------------------

HF_PAPER = json.loads(fixture("hf_daily_papers_2026-03-06_item.json"))[0]["paper"]  # /api/papers/{id} is flat


async def show(store, config, clock, server, text):
    async with make_client(2.0) as client:
        lookup = PaperLookup([HuggingFaceSource(client, server.url),
                              ArxivSource(client, server.url, ("cs.LG",), api_url=f"{server.url}/api/query")])
        ctx = handlers.Context(store, config, clock, lookup=lookup)
        return await handlers.handle(ctx, handlers.request_from_text(ML, "u1", text))


@pytest.mark.backends
async def test_show_a_stored_paper_by_any_link_form(store, make_config, clock, server):
    stock(store, clock)
    for text in ("show 2411.00001", "show https://arxiv.org/abs/2411.00001v3", "show <https://arxiv.org/pdf/2411.00001>",
                 "show https://huggingface.co/papers/2411.00001", "show arxiv.org/pdf/2411.00001.pdf",
                 "show https://arxiv.org/pdf/2411.00001v2.pdf", "show https://export.arxiv.org/abs/2411.00001",
                 "show https://doi.org/10.48550/arXiv.2411.00001", "show https://arxiv.org/abs/2411.00001."):
        reply = await show(store, make_config(), clock, server, text)
        assert [c.paper_id for c in reply.cards] == ["2411.00001"], text
    assert server.requests == []


@pytest.mark.backends
async def test_show_fetches_from_hugging_face_and_stores_it(store, make_config, clock, server):
    server.route("/api/papers/2602.23229", Canned(body=json.dumps(HF_PAPER).encode()))
    reply = await show(store, make_config(), clock, server, "show 2602.23229")
    (card,) = reply.cards
    assert card.title == "Large Multimodal Models as General In-Context Classifiers" and card.upvotes == 10
    assert store.get_paper("2602.23229").github == "https://github.com/marco-garosi/CIRCLE"
    # Stored by a lookup, not listed: a later listing still delivers it to subscribers.
    assert store.add_papers([store.get_paper("2602.23229")], clock()) != []


@pytest.mark.backends
async def test_show_falls_back_to_the_arxiv_api(store, make_config, clock, server):
    server.route("/api/papers/1111.2011", Canned(status=404, body=b'{"error":"Not Found"}'))
    server.route("/api/query", Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml"),
                                      content_type="application/atom+xml"))
    reply = await show(store, make_config(), clock, server, "show arXiv:1111.2011v2")
    (card,) = reply.cards
    assert card.title == "Quantum Criticality for Extended Nodes on a Bethe Lattice in the Large Connectivity Limit"
    assert card.authors == "James M. Murray, Adrian Del Maestro, Zlatko Tesanovic"
    assert server.requests[-1][1] == "/api/query?id_list=1111.2011"


async def test_like_examples_unknown_here_are_looked_up_on_arxiv_in_one_request(store, make_config, clock, server):
    # One request for all (a like: query's or an import's examples), where one a paper waited
    # 3 s each at arXiv's pacer: 20 examples took a minute, holding the poller's arXiv turns.
    for paper_id in ("1111.2011", "1111.2012", "1111.2013"):
        server.route(f"/api/papers/{paper_id}", Canned(status=404, body=b'{"error":"Not Found"}'))
    server.route("/api/query", Canned(body=fixture("arxiv_api_id_list_1111.2011v2.xml"),
                                      content_type="application/atom+xml"))
    reply = await show(store, make_config(), clock, server, "preview like:1111.2011 1111.2012 1111.2013")
    assert not reply.ok and "the example 1111.2012 is unknown" in reply.text
    arxiv = [full for path, full, _ in server.requests if path == "/api/query"]
    assert arxiv == ["/api/query?id_list=1111.2011%2C1111.2012%2C1111.2013&max_results=3"]
    assert store.get_paper("1111.2011") is not None  # the one it knows, stored as a lookup stores it


async def test_show_never_shows_another_paper_than_the_one_asked_for(store, make_config, clock, server):
    # Hugging Face answering /api/papers/2411.55555 with another paper: that is not the paper
    # asked for (it was shown, stored and saved as if it were); the arXiv API is asked instead.
    server.route("/api/papers/2411.55555", Canned(body=json.dumps(HF_PAPER).encode()))  # 2602.23229
    server.route("/api/query", Canned(body=b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>x</title></feed>'))
    reply = await show(store, make_config(), clock, server, "show 2411.55555")
    assert not reply.ok and reply.cards == () and "knows a paper 2411.55555" in reply.text
    assert store.get_paper("2602.23229") is None
    assert server.paths()[-1] == "/api/query"


async def test_an_id_that_cannot_exist_is_explained_without_asking_the_sources(store, make_config, clock, server):
    # `2406.1234` (a digit short: ids have 5 digits after the dot since 2015) and a month 13
    # asked Hugging Face and then the arXiv API (3 seconds apart) for nothing.
    reply = await show(store, make_config(), clock, server, "show 2406.1234v99")
    assert not reply.ok and "since 2015 ids have 5 digits after the dot" in reply.text
    reply = await show(store, make_config(), clock, server, "save 2413.12345")
    assert not reply.ok and "2413 is no year and month" in reply.text
    reply = await show(store, make_config(), clock, server, "preview like:1412.69800")
    assert not reply.ok and "before 2015 ids have 4 digits" in reply.text
    assert server.requests == []


async def test_show_unknown_unreachable_and_bad_ids(store, make_config, clock, server):
    server.route("/api/papers/2411.99999", Canned(status=404, body=b"{}"))
    server.route("/api/query", Canned(body=b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>x</title></feed>'))
    unknown = await show(store, make_config(), clock, server, "show 2411.99999")
    assert not unknown.ok and "Neither Hugging Face nor arXiv knows a paper 2411.99999" in unknown.text
    server.route("/api/papers/2411.88888", Canned(status=500, body=b""))
    server.route("/api/query", Canned(status=503, body=b""))
    down = await show(store, make_config(), clock, server, "show 2411.88888")
    assert not down.ok and "Could not look up 2411.88888 right now" in down.text and "HTTP 503" in down.text
    bad = await show(store, make_config(), clock, server, "show banana")
    assert not bad.ok and "`banana` is not an arXiv id" in bad.text and "Usage: `/papers show" in bad.text


async def test_arxiv_api_error_feed_is_an_error(store, make_config, clock, server):
    # Synthetic, in the shape of arXiv's documented error response (HTTP 400 with one entry).
    error_feed = (b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><entry>'
                  b"<id>https://arxiv.org/api/errors#incorrect_id_format_for_1</id><title>Error</title>"
                  b"<summary>incorrect id format for 1</summary></entry></feed>")
    server.route("/api/papers/2411.77777", Canned(status=404, body=b"{}"))
    server.route("/api/query", Canned(body=error_feed))
    reply = await show(store, make_config(), clock, server, "show 2411.77777")
    assert not reply.ok and "Could not look up" in reply.text and "incorrect id format" in reply.text


# ---- digest, timezone, pause, resume, status -------------------------------------------------

def test_digest_settings(ctx, clock):
    reply = run(ctx, "digest daily 9:00")
    assert reply.text == ("This channel now gets a daily digest at 09:00 (UTC). "
                          "First one: Sat 2026-11-28 09:00 UTC.")
    assert run(ctx, "timezone Europe/Berlin").text == (
        "Time zone set to Europe/Berlin: this channel gets a daily digest at 09:00 (Europe/Berlin).")
    # Typed in another case, the name is taken as IANA spells it (it was refused, `utc` too).
    assert run(ctx, "timezone europe/berlin").text.startswith("Time zone set to Europe/Berlin:")
    assert ctx.store.channel_settings(ML).timezone == "Europe/Berlin"
    assert run(ctx, "timezone utc").text.startswith("Time zone set to UTC:")
    assert run(ctx, "timezone Europe/Berlin").ok
    weekly = run(ctx, "digest weekly Monday 18:30")
    assert "a weekly digest on Mon at 18:30 (Europe/Berlin)" in weekly.text
    assert "First one: Mon 2026-11-30 18:30 Europe/Berlin." in weekly.text
    assert run(ctx, "digest off").text == "Digests are off: this channel gets instant cards (time zone Europe/Berlin)."


@pytest.mark.parametrize(
    "text, message",
    [
        ("digest", "Say `off`, `daily HH:MM` or `weekly DAY HH:MM`."),
        ("digest daily", "Say `off`"),
        ("digest daily 25:00", "`25:00` is not a 24-hour time"),
        ("digest weekly someday 09:00", "`someday` is not a weekday"),
        ("timezone", "Which time zone? This channel uses UTC."),
        ("timezone Europe/Berln", "`Europe/Berln` is not a time zone. Did you mean Europe/Berlin"),
        ("timezone ../../etc/passwd", "is not a time zone"),
        # Names of the zoneinfo tree that mean another zone on another machine, or none: they
        # were accepted (`localtime` is the machine's own zone, /etc/localtime).
        ("timezone localtime", "`localtime` is not a time zone: what it means depends on the machine. Use a name"),
        ("timezone posixrules", "`posixrules` is not a time zone: what it means depends on the machine."),
        ("timezone Localtime", "`Localtime` is not a time zone: what it means depends on the machine."),
        ("timezone posix/Europe/Berlin", "is not a time zone: what it means depends on the machine. Did you mean "
                                         "Europe/Berlin"),
        ("timezone right/UTC", "`right/UTC` is not a time zone: what it means depends on the machine."),
        ("timezone Factory", "`Factory` is not a time zone. Use a name like Europe/Berlin"),
    ],
)
def test_channel_setting_errors(ctx, text, message):
    reply = run(ctx, text)
    assert not reply.ok and message in reply.text and "Usage: `/papers " in reply.text
    assert ctx.store.channel_settings(ML).timezone == "UTC"


def test_machine_dependent_zones_are_not_offered_while_typing(ctx):
    offered = [value for value, _ in handlers.complete(ctx, ML, "timezone", "zone", "")]
    offered += [value for typed in ("local", "posix", "right/", "fact")
                for value, _ in handlers.complete(ctx, ML, "timezone", "zone", typed)]
    assert offered and not {"localtime", "posixrules", "Factory"} & set(offered)
    assert not [z for z in offered if z.startswith(("posix/", "right/"))]


def test_pause_keeps_matches_and_resume_releases_them(ctx, clock):
    from bot.models import Match

    ctx.store.add_papers([paper("2411.00001")], clock())
    assert run(ctx, "pause").text.startswith("Paused.")
    assert run(ctx, "pause").text.startswith("This channel is already paused.")
    ctx.store.enqueue("2411.00001", [Match(1, ML, "x", ())], clock())
    assert due_now(ctx.store, clock()) == []  # kept, not sent
    reply = run(ctx, "resume")
    assert reply.text == "Resumed. 1 paper matched while paused will be posted now." and reply.queued == 1
    assert len(due_now(ctx.store, clock())) == 1
    assert run(ctx, "resume").text == "This channel is not paused."
    quiet = ChannelRef("console", "quiet")
    run(ctx, "pause", channel=quiet)
    assert run(ctx, "resume", channel=quiet).text == "Resumed. Nothing matched while paused."  # not "0 papers"


def test_changing_settings_needs_the_manage_right(ctx):
    for text in ("digest daily 09:00", "timezone Europe/Berlin", "pause", "resume", "unsubscribe all"):
        reply = run(ctx, text, can_manage=False)
        assert not reply.ok and "right to manage this channel" in reply.text
    for text in ("search x", "trending", "status", "preview x", "list", "help"):
        assert "right to manage" not in run(ctx, text, can_manage=False).text


def test_status_reports_sources_queue_and_channel(ctx, clock):
    ctx.store.record_source_success("huggingface", clock() - timedelta(minutes=10), 20)
    ctx.store.record_source_failure("arxiv", clock() - timedelta(minutes=2), "HTTP 503 from https://rss.arxiv.org")
    run(ctx, "subscribe diffusion")
    run(ctx, "digest daily 09:00")
    text = run(ctx, "status").text
    assert "• huggingface: last success 10m ago; next poll in 20m" in text
    assert ("• arxiv: last success never; failing (1 in a row): HTTP 503 from https://rss.arxiv.org; "
            "next poll in 58m") in text
    assert "Queue: 0 deliveries pending, 0 for this channel; last post here never." in text
    assert "This channel: 1 subscription, a daily digest at 09:00 (UTC)." in text
    assert "Next digest: Sat 2026-11-28 09:00 UTC." in text
    assert text.endswith("Follow-ups in card threads: on; weekly most-saved digest: off.")
    run(ctx, "followups off")
    run(ctx, "most-saved weekly fri 16:00")
    assert run(ctx, "status").text.endswith(
        "Follow-ups in card threads: off; weekly most-saved digest: every Fri at 16:00 (UTC).")


def test_per_user_rate_limit(store, make_config, clock):
    ctx = handlers.Context(store, make_config(limits={"commands_per_minute": 3}), clock)
    assert all(run(ctx, "help").ok for _ in range(3))
    refused = run(ctx, "help")
    assert not refused.ok and refused.text.startswith("You are sending commands too fast: the limit is 3 a minute.")
    assert "Try again in 60 seconds." in refused.text
    assert run(ctx, "help", user="someone-else").ok  # per user
    clock.advance(seconds=61)
    assert run(ctx, "help").ok


def test_mute_adds_an_exclusion_to_a_subscription(ctx):
    run(ctx, "subscribe diffusion OR flow")
    assert run(ctx, "mute 1 video").text == "#1 is now `(diffusion OR flow) -video`."
    assert run(ctx, "mute #1 cat:cs.RO").text == "#1 is now `(diffusion OR flow) -video -cat:cs.ro`."
    assert "already excludes that" in run(ctx, "mute 1 video").text
    run(ctx, "subscribe agents")
    run(ctx, "subscribe agents -robots")
    clash = run(ctx, "mute 2 robots")
    assert not clash.ok and "already has a subscription to `agents -robots`" in clash.text


@pytest.mark.parametrize(
    "text, message",
    [("mute", "Give a subscription number"), ("mute 1", "Give a subscription number"),
     ("mute 9 video", "no subscription #9"), ('mute 1 "open', "Cannot mute `\"open`: unclosed quote")],
)
def test_mute_errors(ctx, text, message):
    run(ctx, "subscribe diffusion")
    reply = run(ctx, text)
    assert not reply.ok and message in reply.text and "Usage: `/papers mute <id> <term>`" in reply.text


# ---- wording -------------------------------------------------------------------------------

def test_counts_agree_with_their_nouns(ctx, clock, make_config):
    from bot.text import plural

    assert [plural(n, "subscription") for n in (0, 1, 2, 1200)] == [
        "0 subscriptions", "1 subscription", "2 subscriptions", "1,200 subscriptions"]
    assert plural(1, "delivery", "deliveries") == "1 delivery" and plural(3, "delivery", "deliveries") == "3 deliveries"
    stock(ctx.store, clock)
    assert run(ctx, "search diffusion robots").text.startswith("The one stored paper that matches `diffusion robots`:")
    assert run(ctx, "search diffusion").text.startswith("Best 3 stored papers for")
    run(ctx, "subscribe diffusion")
    status = run(ctx, "status").text
    assert "This channel: 1 subscription," in status and "Queue: 0 deliveries pending" in status
    ctx.store.enqueue("2411.00004", [Match(1, ML, "graph", ())], clock())
    assert "Queue: 1 delivery pending" in run(ctx, "status").text
    backfill = run(ctx, "subscribe speculative --backfill 5").text
    assert "Backfill: posting 1 recent match now" in backfill
    capped = handlers.Context(ctx.store, make_config(limits={"max_subscriptions_per_channel": 1}), clock)
    capped.store.remove_all_subscriptions(ML)
    run(capped, "subscribe graph")
    assert "This channel already has 1 subscription, the limit." in run(capped, "subscribe networks").text
