"""Schema, changed only through migrations (applied at start-up, each in a transaction)."""

from __future__ import annotations

import json
import re

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("papers-bot")


@migrations()
def m001_initial(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE papers (
            id TEXT PRIMARY KEY,          -- version-less arXiv id, the cross-source key
            title TEXT NOT NULL,
            summary TEXT NOT NULL,
            authors TEXT NOT NULL,        -- JSON array of names
            categories TEXT NOT NULL,     -- JSON array of arXiv categories
            sources TEXT NOT NULL,        -- comma-joined: where it was listed ("arxiv,hf")
            published TEXT,
            listed_on TEXT,               -- date of the first listing it was seen in
            upvotes INTEGER,
            thumbnail TEXT,
            github TEXT,
            project_page TEXT,
            ai_summary TEXT,
            is_update INTEGER NOT NULL DEFAULT 0,  -- first seen as an arXiv replacement
            first_seen TEXT NOT NULL,     -- when this bot stored it; subscriptions only get later papers
            updated_at TEXT NOT NULL
        );
        CREATE INDEX papers_first_seen ON papers(first_seen);

        CREATE TABLE subscriptions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,   -- never reused, so "unsubscribe 3" is unambiguous
            channel TEXT NOT NULL,                  -- ChannelRef.key
            query TEXT NOT NULL,                    -- normalized query
            created_by TEXT NOT NULL,
            created_at TEXT NOT NULL,
            UNIQUE (channel, query)
        );

        CREATE TABLE deliveries (                   -- the outbox: one row per paper x channel
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            paper_id TEXT NOT NULL REFERENCES papers(id),
            channel TEXT NOT NULL,
            reason TEXT NOT NULL,                   -- why it matched, shown on the card
            status TEXT NOT NULL DEFAULT 'pending', -- pending | sending | sent | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            message_id TEXT,                        -- platform message id once sent
            error TEXT,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            UNIQUE (paper_id, channel)
        );
        CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);

        CREATE TABLE delivery_matches (             -- which subscriptions a delivery answers
            delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
            subscription_id INTEGER NOT NULL,
            PRIMARY KEY (delivery_id, subscription_id)
        );
        CREATE INDEX delivery_matches_sub ON delivery_matches(subscription_id);

        CREATE TABLE source_state (
            source TEXT PRIMARY KEY,
            last_attempt TEXT,
            last_success TEXT,
            last_error TEXT,
            last_error_at TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            last_count INTEGER
        );
        """
    )
    # Full-text search over stored papers, kept in step by triggers.
    db.table("papers").enable_fts(["title", "summary", "authors"], create_triggers=True, tokenize="porter")


@migrations()
def m002_paper_organization(db: Database) -> None:
    # The Hugging Face organization a paper is listed under, for org: queries.
    db.execute("ALTER TABLE papers ADD COLUMN organization TEXT")


@migrations()
def m003_channels_and_lookups(db: Database) -> None:
    db.executescript(
        """
        CREATE TABLE channels (                      -- per-channel delivery settings
            channel TEXT PRIMARY KEY,                -- ChannelRef.key
            mode TEXT NOT NULL DEFAULT 'instant',    -- instant | daily | weekly
            digest_time TEXT NOT NULL DEFAULT '09:00',
            digest_day TEXT NOT NULL DEFAULT 'mon',
            timezone TEXT NOT NULL DEFAULT 'UTC',
            paused INTEGER NOT NULL DEFAULT 0,
            last_digest_at TEXT,
            updated_at TEXT NOT NULL
        );
        -- 1 once a source listing included the paper; 0 for papers stored by a lookup
        -- (/papers show), so that a later listing still delivers them to subscribers.
        ALTER TABLE papers ADD COLUMN listed INTEGER NOT NULL DEFAULT 1;
        CREATE INDEX papers_listed_on ON papers(listed_on);
        CREATE INDEX deliveries_channel ON deliveries(channel, status);
        """
    )


@migrations()
def m004_channel_paused_reason(db: Database) -> None:
    # Why the bot paused a channel itself (the platform said it is gone); NULL for /papers pause.
    db.execute("ALTER TABLE channels ADD COLUMN paused_reason TEXT")


@migrations()
def m005_subscription_versions(db: Database) -> None:
    # Grows with every insert or query change, so the matching engine can pick up exactly
    # the subscriptions that changed since it last looked.
    db.executescript(
        """
        ALTER TABLE subscriptions ADD COLUMN version INTEGER NOT NULL DEFAULT 0;
        UPDATE subscriptions SET version = id;
        CREATE INDEX subscriptions_version ON subscriptions(version);
        """
    )


@migrations()
def m006_source_validators(db: Database) -> None:
    # Conditional requests: the validators of the last full response, sent back next time.
    db.executescript(
        """
        ALTER TABLE source_state ADD COLUMN etag TEXT;
        ALTER TABLE source_state ADD COLUMN last_modified TEXT;
        """
    )


@migrations()
def m007_delivery_claimed_at(db: Database) -> None:
    # When a send began: after a crash, where to look for a message that may have gone out.
    db.execute("ALTER TABLE deliveries ADD COLUMN claimed_at TEXT")


@migrations()
def m008_delivery_in_digest(db: Database) -> None:
    # 1: this delivery is part of a burst's overflow and goes out in one digest message.
    db.execute("ALTER TABLE deliveries ADD COLUMN in_digest INTEGER NOT NULL DEFAULT 0")


@migrations()
def m009_command_log(db: Database) -> None:
    # When each user ran a command, for the per-user rate limit: shared by every process
    # (`run` and each `papers-bot command`), pruned to the last minute as it goes.
    db.executescript(
        """
        CREATE TABLE command_log (
            user TEXT NOT NULL,          -- the user id of the command request
            at REAL NOT NULL             -- Unix time, seconds
        );
        CREATE INDEX command_log_user_at ON command_log(user, at);
        CREATE INDEX command_log_at ON command_log(at);
        """
    )


@migrations()
def m010_source_next_poll(db: Database) -> None:
    # When `run` will poll the source next: the interval after a success, the (sooner)
    # backoff retry after a failure. `status` shows it.
    db.execute("ALTER TABLE source_state ADD COLUMN next_poll TEXT")


@migrations()
def m011_one_name_for_hugging_face(db: Database) -> None:
    # A source has one name everywhere: papers listed by Hugging Face said "hf" while its
    # source_state row, config section and metrics label said "huggingface".
    db.execute(
        """UPDATE papers SET sources = trim(replace(',' || sources || ',', ',hf,', ',huggingface,'), ',')
           WHERE ',' || sources || ',' LIKE '%,hf,%'"""
    )


@migrations()
def m012_delivery_matched_facts(db: Database) -> None:
    # Why a delivery matched, kept as facts (JSON: [{"id": subscription id, "query": ...,
    # "terms": [...]}]) instead of the card's text; bot/cards.py words it. The text written
    # before ("#1 `diffusion`: diffusion in title; #2 `video`") is read back into facts.
    if "matched" in db["deliveries"].columns_dict:
        return  # a development build recorded this step under another name
    db.conn.create_function("papers_bot_matched_from_text", 1, _matched_from_text, deterministic=True)
    db.execute("ALTER TABLE deliveries RENAME COLUMN reason TO matched")
    db.execute("UPDATE deliveries SET matched = papers_bot_matched_from_text(matched)")


_OLD_REASON = re.compile(r"#(\d+) `(.*?)`(?:: (.*?))?(?=; #\d+ `|\Z)", re.DOTALL)


def _matched_from_text(text: str | None) -> str:
    """The facts in a reason text as storage/deliveries.py wrote it up to m012 (cut at 500 characters)."""
    return json.dumps([
        {"id": int(found.group(1)), "query": found.group(2),
         "terms": found.group(3).split(", ") if found.group(3) else []}
        for found in _OLD_REASON.finditer(text or "")
    ])


@migrations()
def m013_subscriptions_say_huggingface(db: Database) -> None:
    # Subscriptions keep their query normalized, and since m011 `source:hf` normalizes to
    # `source:huggingface`: a query stored before would no longer equal its own normal form,
    # so subscribing to it again would add a second subscription. (Phrases hold no colons, so
    # `source:hf` in a stored query is always the field.) A channel that already has the
    # renamed query keeps both rows as they are (OR IGNORE).
    rows = db.execute("SELECT id, query FROM subscriptions WHERE query LIKE '%source:hf%'").fetchall()
    for sub_id, query in rows:
        renamed = _SOURCE_HF.sub("source:huggingface", query)
        if renamed != query:
            db.execute("""UPDATE OR IGNORE subscriptions SET query = ?,
                          version = (SELECT coalesce(max(version), 0) + 1 FROM subscriptions) WHERE id = ?""",
                       [renamed, sub_id])


# A delivery's `matched` facts as JSON for json_each, or an empty array if they are not JSON.
MATCHED_OR_EMPTY = "CASE WHEN json_valid({row}.matched) THEN {row}.matched ELSE '[]' END"

_SOURCE_HF = re.compile(r"(?<![\w:])source:hf(?![\w:*])")


@migrations()
def m014_unmatched_papers(db: Database) -> None:
    # A poll stores, matches and queues in short transactions (batches), so that the bot's
    # other writes are never kept waiting long: a paper stored but not yet matched is
    # written down here in the transaction that stores it, and taken off in the one that
    # queues its deliveries. A poll interrupted in between (a crash, a kill, a full disk)
    # leaves its rows here, and the next poll matches them first. IF NOT EXISTS: development
    # builds recorded this step as m013_unmatched_papers.
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS unmatched_papers (
            paper_id TEXT PRIMARY KEY REFERENCES papers(id),
            since TEXT NOT NULL  -- only subscriptions created by then receive it
        );
        """
    )


@migrations()
def m015_paper_words(db: Database) -> None:
    # The exact word index that narrows preview (storage/paper_words.py). It starts empty;
    # the first preview indexes what is stored, a batch a transaction, off the event loop.
    # And the listed papers of a window, counted from an index alone.
    # (Its first layout, written out: m022 replaced it.)
    for statement in (  # IF NOT EXISTS: development builds recorded this step under another name
        """CREATE VIRTUAL TABLE IF NOT EXISTS paper_words USING fts5(
               title, abstract, authors, cats, content='', columnsize=0, tokenize="ascii tokenchars '.-'")""",
        "CREATE TABLE IF NOT EXISTS paper_words_state (indexed INTEGER NOT NULL)",
        "INSERT INTO paper_words_state (indexed) SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM paper_words_state)",
    ):
        db.execute(statement)
    db.execute("CREATE INDEX IF NOT EXISTS papers_listed_first_seen ON papers(first_seen) WHERE listed = 1")


@migrations()
def m016_unmatched_paper_source(db: Database) -> None:
    # The source whose listing brought a paper to be matched: a paper already stored from
    # another source matches `source:` as that listing showed it, as before the batches.
    if "source" not in db["unmatched_papers"].columns_dict:
        db.execute("ALTER TABLE unmatched_papers ADD COLUMN source TEXT")


@migrations()
def m017_ranked_bursts_and_comments(db: Database) -> None:
    # deliveries.card: 1 once a burst plan made the row a card. Bursts rank their rows (best
    # first, storage/deliveries.py RANKING), so a burst's cards are no longer the rows before its
    # digest's first id: what was decided is written down. A burst under way in an upgraded
    # database keeps its cards: the outstanding rows before its digest's first row.
    # deliveries.strength: how strongly the channel's queries matched (deliveries.match_strength),
    # written with the row; NULL (rows queued before) is worked out of `matched` when ranking.
    # papers.comments: Hugging Face's comment count (numComments), shown on cards.
    if "card" not in db["deliveries"].columns_dict:
        db.execute("ALTER TABLE deliveries ADD COLUMN card INTEGER NOT NULL DEFAULT 0")
        # Only channels with a digest outstanding, each first row found once (not a subquery a row).
        db.execute(
            """UPDATE deliveries SET card = 1 WHERE id IN (
                 SELECT d.id FROM (SELECT channel, min(id) AS first FROM deliveries
                                    WHERE in_digest = 1 AND status IN ('pending', 'sending') GROUP BY channel) b
                   JOIN deliveries d ON d.channel = b.channel
                  WHERE d.status IN ('pending', 'sending') AND d.in_digest = 0 AND d.id < b.first)"""
        )
    if "strength" not in db["deliveries"].columns_dict:
        db.execute("ALTER TABLE deliveries ADD COLUMN strength INTEGER")
    if "comments" not in db["papers"].columns_dict:
        db.execute("ALTER TABLE papers ADD COLUMN comments INTEGER")


@migrations()
def m018_people_and_feedback(db: Database) -> None:
    # People who subscribed with --me (their cards mention them); Save / Not relevant presses
    # (who, which channel, which paper, which kind, when: the recommendations' training data);
    # the channels that get a weekly "most saved" digest. IF NOT EXISTS throughout: idempotent.
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS subscription_people (
            subscription_id INTEGER NOT NULL REFERENCES subscriptions(id) ON DELETE CASCADE,
            user_id TEXT NOT NULL,               -- the platform's user id
            created_at TEXT NOT NULL,
            PRIMARY KEY (subscription_id, user_id)
        );
        CREATE INDEX IF NOT EXISTS subscription_people_user ON subscription_people(user_id);
        CREATE INDEX IF NOT EXISTS subscriptions_created_by ON subscriptions(created_by);  -- list --me
        CREATE TABLE IF NOT EXISTS feedback (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            channel TEXT NOT NULL,               -- ChannelRef.key where the card was
            paper_id TEXT NOT NULL REFERENCES papers(id),
            kind TEXT NOT NULL,                  -- save | not_relevant
            created_at TEXT NOT NULL,
            UNIQUE (user_id, channel, paper_id, kind)
        );
        CREATE INDEX IF NOT EXISTS feedback_channel ON feedback(channel, kind, created_at);
        CREATE INDEX IF NOT EXISTS feedback_user ON feedback(user_id, kind, created_at);
        CREATE TABLE IF NOT EXISTS most_saved_digests (
            channel TEXT PRIMARY KEY,            -- ChannelRef.key
            day TEXT NOT NULL,                   -- mon ... sun, in the channel's time zone
            time TEXT NOT NULL,                  -- HH:MM
            last_sent_at TEXT,                   -- the slot last posted (or when it was turned on)
            updated_at TEXT NOT NULL
        );
        """
    )


@migrations()
def m019_followups(db: Database) -> None:
    # Follow-ups in the thread: a posted paper's news (code released, a new arXiv version,
    # 50/100/200 upvotes crossed) owed as one reply in its card's thread. `papers.version`:
    # the highest arXiv version listed (NULL: no source said). `followups`: their outbox,
    # written in the transaction that stores the listing, one row per event and card
    # (UNIQUE: once); statuses as the deliveries' (pending -> sending -> sent | failed),
    # and 'skipped' (superseded by a higher threshold, or the channel turned them off).
    # `channel_followups`: a channel's switch; no row is on. Each step checks first, so
    # that the migration is safe to run on a database a development build already changed.
    if "version" not in db["papers"].columns_dict:
        db.execute("ALTER TABLE papers ADD COLUMN version INTEGER")
    db.executescript(
        """
        CREATE TABLE IF NOT EXISTS followups (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            delivery_id INTEGER NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,  -- the card
            kind TEXT NOT NULL,                     -- code | version | upvotes
            value INTEGER NOT NULL DEFAULT 0,       -- the version, the threshold; 0 for code
            url TEXT,                               -- the code's address
            status TEXT NOT NULL DEFAULT 'pending', -- pending | sending | sent | failed | skipped
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT NOT NULL,
            claimed_at TEXT,
            message_id TEXT,                        -- the reply's id once sent
            error TEXT,
            created_at TEXT NOT NULL,
            sent_at TEXT,
            UNIQUE (delivery_id, kind, value)
        );
        CREATE INDEX IF NOT EXISTS followups_due ON followups(status, next_attempt_at);
        -- Whether a card's message showed its paper alone (a digest's id is on several rows).
        CREATE INDEX IF NOT EXISTS deliveries_channel_message ON deliveries(channel, message_id);
        CREATE TABLE IF NOT EXISTS channel_followups (
            channel TEXT PRIMARY KEY,               -- ChannelRef.key
            enabled INTEGER NOT NULL,
            updated_at TEXT NOT NULL
        );
        """
    )


@migrations()
def m020_poll_write_path(db: Database) -> None:
    # The newest subscription id when a poll stored a paper for the first time: the
    # subscriptions up to it receive the paper (UnmatchedPaper.upto). NULL: those created
    # by `since`, as before.
    if "upto" not in db["unmatched_papers"].columns_dict:
        db.execute("ALTER TABLE unmatched_papers ADD COLUMN upto INTEGER")
    # Which subscriptions a delivery answers is in its `matched` facts (their ids): the
    # delivery_matches table, a row and two index entries a subscription a delivery, was most
    # of a poll's writes after the outbox's index by channel (docs/benchmarks.md, "The write
    # path"). A subscription's count of sent deliveries, which read it, is now a column kept
    # by a trigger when a delivery is sent.
    if "delivered" not in db["subscriptions"].columns_dict:
        db.execute("ALTER TABLE subscriptions ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0")
        if db["delivery_matches"].exists():
            db.execute("""UPDATE subscriptions SET delivered = (
                            SELECT count(*) FROM delivery_matches m JOIN deliveries d ON d.id = m.delivery_id
                             WHERE m.subscription_id = subscriptions.id AND d.status = 'sent')""")
    db.execute(f"""CREATE TRIGGER IF NOT EXISTS deliveries_sent_count AFTER UPDATE OF status ON deliveries
                   WHEN NEW.status = 'sent' AND OLD.status <> 'sent'
                   BEGIN
                     UPDATE subscriptions SET delivered = delivered + 1
                      WHERE id IN (SELECT json_extract(value, '$.id')
                                     FROM json_each({MATCHED_OR_EMPTY.format(row="NEW")}));
                   END""")
    db.execute("DROP TABLE IF EXISTS delivery_matches")  # its index goes with it
    # m019's index of the messages by channel: every new delivery entered it (a random page of
    # it a delivery, in the poll's writes) with a NULL message_id no query looks for. Partial,
    # a delivery enters it when it is sent; the follow-ups' `o.message_id = d.message_id` still
    # uses it (a comparison implies IS NOT NULL).
    partial = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'deliveries_channel_message'"
                         ).fetchone()
    if partial is None or "WHERE" not in partial[0]:
        db.execute("DROP INDEX IF EXISTS deliveries_channel_message")
        db.execute("""CREATE INDEX deliveries_channel_message ON deliveries(channel, message_id)
                       WHERE message_id IS NOT NULL""")
    # The highest subscription version ever given (storage/subscriptions.py): removing the
    # newest subscription no longer hands its version to the next one.
    db.execute("CREATE TABLE IF NOT EXISTS subscription_version (version INTEGER NOT NULL)")
    # Started past every version and id seen so far (a removed newest one's included, if its
    # id was the highest: versions began as ids, m005).
    db.execute("""INSERT INTO subscription_version (version)
                  SELECT max(coalesce((SELECT max(version) FROM subscriptions), 0),
                             coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'subscriptions'), 0))
                   WHERE NOT EXISTS (SELECT 1 FROM subscription_version)""")


@migrations()
def m021_compiled_queries(db: Database) -> None:
    # Each subscription's query in the matching engine's compiled form (bot.matching.
    # compile_query: its parsed tree and required keys, marshalled, behind a version), so
    # that loading the index reads them back instead of parsing every stored query. Filled
    # here for the subscriptions already stored; one that does not parse stays NULL (the
    # engine logs and skips it, as before). A form of another version is parsed afresh at
    # load and stored again (Poller.sync_subscriptions).
    from bot.errors import QueryError
    from bot.matching import compile_query

    if "compiled" not in db["subscriptions"].columns_dict:
        db.execute("ALTER TABLE subscriptions ADD COLUMN compiled BLOB")
    forms: dict[str, bytes | None] = {}
    updates = []
    for sub_id, query in db.execute("SELECT id, query FROM subscriptions WHERE compiled IS NULL").fetchall():
        if query not in forms:
            try:
                forms[query] = compile_query(query)
            except QueryError:
                forms[query] = None
        if forms[query] is not None:
            updates.append((forms[query], sub_id))
    db.conn.executemany("UPDATE subscriptions SET compiled = ? WHERE id = ?", updates)


@migrations()
def m022_paper_words_exact(db: Database) -> None:
    # Preview's word index, second layout (storage/paper_words.py): the unstemmed words too
    # (prefixes), and authors as the matcher's keys (last name, last name with each other
    # part), so that prefixes and author names are decided by the index. Every stored
    # paper is to be indexed again: the rows stored so far are the backlog, which the bot
    # indexes in the background, newest first (readers read what is not indexed unnarrowed).
    # Idempotent: a table already in this layout is kept.
    from .paper_words import COLUMNS, SCHEMA

    have = [row[1] for row in db.execute("PRAGMA table_info(paper_words)").fetchall()]
    if have != list(COLUMNS):
        db.execute("DROP TABLE IF EXISTS paper_words")
        db.execute("DROP TABLE IF EXISTS paper_words_state")
        for statement in SCHEMA:
            db.execute(statement)
        db.execute("UPDATE paper_words_state SET indexed = (SELECT coalesce(max(rowid), 0) FROM papers),"
                   " backlog = (SELECT coalesce(max(rowid), 0) FROM papers)")
    # The listed papers of each day (of first_seen), kept by triggers whatever writes papers:
    # preview's "of N stored papers" adds up days instead of counting a million index entries.
    for statement in (  # one statement a call: executescript would commit the migration's transaction
        """CREATE TABLE IF NOT EXISTS papers_listed_days (
               day TEXT PRIMARY KEY,        -- substr(first_seen, 1, 10)
               listed INTEGER NOT NULL
           ) WITHOUT ROWID""",
        """CREATE TRIGGER IF NOT EXISTS papers_listed_days_insert AFTER INSERT ON papers WHEN NEW.listed = 1
           BEGIN
               INSERT INTO papers_listed_days (day, listed) VALUES (substr(NEW.first_seen, 1, 10), 1)
                   ON CONFLICT (day) DO UPDATE SET listed = listed + 1;
           END""",
        """CREATE TRIGGER IF NOT EXISTS papers_listed_days_update AFTER UPDATE OF listed, first_seen ON papers
           BEGIN
               UPDATE papers_listed_days SET listed = listed - 1
                WHERE OLD.listed = 1 AND day = substr(OLD.first_seen, 1, 10);
               INSERT INTO papers_listed_days (day, listed)
                   SELECT substr(NEW.first_seen, 1, 10), 1 WHERE NEW.listed = 1
                   ON CONFLICT (day) DO UPDATE SET listed = listed + 1;
           END""",
        """CREATE TRIGGER IF NOT EXISTS papers_listed_days_delete AFTER DELETE ON papers WHEN OLD.listed = 1
           BEGIN
               UPDATE papers_listed_days SET listed = listed - 1 WHERE day = substr(OLD.first_seen, 1, 10);
           END""",
    ):
        db.execute(statement)
    # What preview reads of the papers it may show, narrow: one row per listed paper that is
    # not a replacement (rowid as in papers), with the columns its conditions read. Kept by
    # triggers. Counting a few thousand matches looks them up here, not among the wide rows
    # of papers (abstracts: ~25 us a row at a million papers against ~3 here).
    for statement in (
        """CREATE TABLE IF NOT EXISTS paper_window (
               rowid INTEGER PRIMARY KEY,   -- papers.rowid
               id TEXT NOT NULL,
               first_seen TEXT NOT NULL,
               upvotes INTEGER,
               sources TEXT NOT NULL,
               organization TEXT
           )""",
        "CREATE INDEX IF NOT EXISTS paper_window_first_seen ON paper_window(first_seen)",
        """CREATE TRIGGER IF NOT EXISTS paper_window_insert AFTER INSERT ON papers
             WHEN NEW.listed = 1 AND NEW.is_update = 0
           BEGIN
               INSERT OR REPLACE INTO paper_window (rowid, id, first_seen, upvotes, sources, organization)
                   VALUES (NEW.rowid, NEW.id, NEW.first_seen, NEW.upvotes, NEW.sources, NEW.organization);
           END""",
        """CREATE TRIGGER IF NOT EXISTS paper_window_update
             AFTER UPDATE OF id, listed, is_update, first_seen, upvotes, sources, organization ON papers
           BEGIN
               DELETE FROM paper_window WHERE rowid = OLD.rowid;
               INSERT OR REPLACE INTO paper_window (rowid, id, first_seen, upvotes, sources, organization)
                   SELECT NEW.rowid, NEW.id, NEW.first_seen, NEW.upvotes, NEW.sources, NEW.organization
                    WHERE NEW.listed = 1 AND NEW.is_update = 0;
           END""",
        """CREATE TRIGGER IF NOT EXISTS paper_window_delete AFTER DELETE ON papers
           BEGIN
               DELETE FROM paper_window WHERE rowid = OLD.rowid;
           END""",
    ):
        db.execute(statement)
    db.execute("DELETE FROM paper_window")
    db.execute("""INSERT INTO paper_window (rowid, id, first_seen, upvotes, sources, organization)
                  SELECT rowid, id, first_seen, upvotes, sources, organization FROM papers
                   WHERE listed = 1 AND is_update = 0""")
    db.execute("DELETE FROM papers_listed_days")
    db.execute("""INSERT INTO papers_listed_days (day, listed)
                  SELECT substr(first_seen, 1, 10), count(*) FROM papers WHERE listed = 1 GROUP BY 1""")


@migrations()
def m023_slack_installations(db: Database) -> None:
    # Slack distribution (the OAuth install flow): one row per workspace that installed the
    # app, its tokens sealed (Fernet, key from the environment) before they get here; the
    # OAuth `state` values handed out by /slack/install, each usable once before it expires;
    # and which workspace each Slack channel belongs to (learnt from the commands, events and
    # buttons that come from it), so that a post uses that workspace's token.
    for statement in (
        """CREATE TABLE IF NOT EXISTS slack_installations (
               team_id TEXT PRIMARY KEY,          -- T..., or E... for an org-wide install
               enterprise_id TEXT NOT NULL DEFAULT '',
               team_name TEXT NOT NULL DEFAULT '',
               app_id TEXT NOT NULL DEFAULT '',
               bot_id TEXT NOT NULL DEFAULT '',
               bot_user_id TEXT NOT NULL DEFAULT '',
               bot_scopes TEXT NOT NULL DEFAULT '',
               installer_user_id TEXT NOT NULL DEFAULT '',
               is_enterprise_install INTEGER NOT NULL DEFAULT 0,
               sealed BLOB NOT NULL,              -- the tokens, encrypted: never in clear
               installed_at TEXT NOT NULL
           )""",
        """CREATE TABLE IF NOT EXISTS slack_oauth_states (
               state TEXT PRIMARY KEY,
               expires_at TEXT NOT NULL
           )""",
        """CREATE TABLE IF NOT EXISTS slack_channel_teams (
               channel TEXT PRIMARY KEY,          -- ChannelRef.key (slack:C...)
               team_id TEXT NOT NULL
           )""",
        "CREATE INDEX IF NOT EXISTS slack_channel_teams_team ON slack_channel_teams(team_id)",
    ):
        db.execute(statement)


@migrations()
def m025_outbox_index(db: Database) -> None:
    # One index for the outbox's outstanding rows, by status, then channel, then when due,
    # in place of `deliveries_due (status, next_attempt_at)` and `deliveries_channel (channel,
    # status)`. Every query of the outbox names the status (storage/deliveries.py), so:
    # - due_channels reads the pending rows' index entries in channel order (channel,
    #   next_attempt_at and the id are all in the entry: no row is read, no sort);
    # - a burst's statements read the channel's own entries of a status, side by side, and
    #   the 2,000 rows a big burst settles as overflow move between two runs of neighbouring
    #   entries (pending -> overflow of that channel), not to and from pages spread over
    #   every due row of every channel (deliveries_due);
    # - a new delivery enters one index where it entered two (a random page of the pending
    #   entries by channel, as deliveries_channel's was; deliveries_due's was appended).
    # docs/benchmarks.md, "Bursts and due channels off the loop".
    db.execute("DROP INDEX IF EXISTS deliveries_due")
    db.execute("DROP INDEX IF EXISTS deliveries_channel")
    db.execute("CREATE INDEX IF NOT EXISTS deliveries_outbox ON deliveries(status, channel, next_attempt_at)")


@migrations()
def m026_cooperating_processes(db: Database) -> None:
    # Several processes deliver (`papers-bot run --role deliverer`): a row in 'sending' names
    # its claimer (Store.sender_id), so a live deliverer's sends are told from a dead one's;
    # NULL: claimed before this migration (settled by the sender lease's holder, as before).
    db.execute("ALTER TABLE deliveries ADD COLUMN claimed_by TEXT")
    db.execute("ALTER TABLE followups ADD COLUMN claimed_by TEXT")
    # One deliverer at a time per channel (so the platforms' per-channel pace holds): who
    # serves it and until when (UTC ISO-8601 to the microsecond, sortable as text).
    db.execute("""CREATE TABLE channel_leases (
                      channel TEXT PRIMARY KEY,   -- ChannelRef.key
                      holder TEXT NOT NULL,       -- the serving Store's sender_id
                      until TEXT NOT NULL         -- nobody else serves it before this
                  )""")


@migrations()
def m028_papers_fts_on_text_updates(db: Database) -> None:
    # The full-text index behind `search` (papers_fts: title, summary, authors) was re-made at
    # every UPDATE of a paper (sqlite-utils' trigger: AFTER UPDATE, any column): each listing
    # that refreshed a stored paper's upvotes, sources or links tokenized its abstract twice
    # (the 'delete' needs the old text) and wrote an FTS5 segment of its own. A later listing
    # never changes these three columns (add_papers); the index follows them when they change.
    db.execute("DROP TRIGGER IF EXISTS papers_au")
    db.execute("""CREATE TRIGGER papers_au AFTER UPDATE OF title, summary, authors ON papers
                  BEGIN
                      INSERT INTO papers_fts (papers_fts, rowid, title, summary, authors)
                          VALUES ('delete', old.rowid, old.title, old.summary, old.authors);
                      INSERT INTO papers_fts (rowid, title, summary, authors)
                          VALUES (new.rowid, new.title, new.summary, new.authors);
                  END""")


@migrations()
def m029_subscription_version_on_delete(db: Database) -> None:
    # Removing a subscription gives a new version too (it gave none: adding and changing one
    # did, storage/subscriptions.py), whatever removes it (a command, another process, a
    # cascade). So a version, while it is the newest, says that no subscription was added,
    # changed or removed since: the poller's writer inserts the deliveries its worker made
    # at that version as they are (storage/deliveries.py `queue_matched`), and its engine
    # drops a removed subscription at its next sync, not at the next change.
    db.execute("""CREATE TRIGGER IF NOT EXISTS subscriptions_deleted_version AFTER DELETE ON subscriptions
                  BEGIN
                      UPDATE subscription_version
                         SET version = max(version, (SELECT coalesce(max(version), 0) FROM subscriptions)) + 1;
                  END""")
