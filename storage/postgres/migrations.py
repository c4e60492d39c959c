"""PostgreSQL schema migrations: numbered steps (p001, p002, ...), each applied once, in order,
in one transaction with the record that it was applied.

p001 is the whole schema as SQLite's migrations m001..m022 left it, in PostgreSQL's types:
times are timestamptz (UTC), days are date, lists and "why matched" facts are jsonb, flags
are boolean. Full-text search is a tsvector column filled by a trigger, with a GIN index (SQLite: FTS5).
Sections are marked by area; a step may only be added at the end once a release has shipped.
"""

from __future__ import annotations

from bot.errors import StorageError

from .db import Database

# ---- p001: the schema of SQLite m001..m022 -------------------------------------------------------

P001_PAPERS = """
CREATE TABLE papers (
    id text PRIMARY KEY,                 -- version-less arXiv id, the cross-source key
    title text NOT NULL,
    summary text NOT NULL,
    authors jsonb NOT NULL,              -- array of names
    categories jsonb NOT NULL,           -- array of arXiv categories
    sources text NOT NULL,               -- comma-joined: where it was listed ("arxiv,huggingface")
    published timestamptz,
    listed_on date,                      -- the day of the first listing it was seen in
    upvotes integer,
    thumbnail text,
    github text,
    project_page text,
    ai_summary text,
    organization text,
    comments integer,
    version integer,
    is_update boolean NOT NULL DEFAULT false,   -- first seen as an arXiv replacement
    listed boolean NOT NULL DEFAULT true,       -- false: stored for a lookup only
    first_seen timestamptz NOT NULL,     -- when this bot stored it; subscriptions only get later papers
    updated_at timestamptz NOT NULL,
    fts tsvector NOT NULL DEFAULT '',    -- search: title (A), abstract (B), authors (C); papers_fts_row
    -- preview's exact word index (SQLite: paper_words), written with the row by add_papers
    -- (storage/postgres/papers.py, paper_words): the evaluator's tokens, each under a prefix
    -- naming its field, with positions for phrases
    words tsvector NOT NULL DEFAULT '',
    words_partial boolean NOT NULL DEFAULT false  -- past tsvector's limits: always a candidate
) WITH (fillfactor = 80);  -- room for a later listing's update on the row's page (HOT: no index touched)
CREATE INDEX papers_first_seen ON papers (first_seen);
CREATE INDEX papers_listed_first_seen ON papers (first_seen) WHERE listed;
CREATE INDEX papers_listed_on ON papers (listed_on);
CREATE INDEX papers_fts ON papers USING gin (fts);
CREATE INDEX papers_words ON papers USING gin (words);
CREATE INDEX papers_words_partial ON papers (first_seen) WHERE words_partial;

-- fts is made when the row is (SQLite: FTS5's triggers), and again only if its text is
-- written: a generated column is computed again by every UPDATE (upvotes, every poll).
CREATE FUNCTION papers_fts_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.fts := setweight(to_tsvector('english', NEW.title), 'A')
        || setweight(to_tsvector('english', NEW.summary), 'B')
        || setweight(to_tsvector('english', NEW.authors), 'C');  -- the names (jsonb strings)
    RETURN NEW;
END $$;
CREATE TRIGGER papers_fts_row BEFORE INSERT OR UPDATE OF title, summary, authors ON papers
    FOR EACH ROW EXECUTE FUNCTION papers_fts_row();

CREATE TABLE unmatched_papers (
    seq bigserial UNIQUE,                -- the order written down
    paper_id text PRIMARY KEY REFERENCES papers (id),
    since timestamptz NOT NULL,          -- only subscriptions created by then receive it
    source text,
    upto bigint
);
"""

P001_SUBSCRIPTIONS = """
CREATE TABLE subscriptions (
    id bigserial PRIMARY KEY,            -- never reused, so "unsubscribe 3" is unambiguous
    channel text NOT NULL,               -- ChannelRef.key
    query text NOT NULL,                 -- normalized query
    created_by text NOT NULL,
    created_at timestamptz NOT NULL,
    version bigint NOT NULL DEFAULT 0,
    delivered bigint NOT NULL DEFAULT 0,
    compiled bytea,
    UNIQUE (channel, query)
);
CREATE INDEX subscriptions_version ON subscriptions (version);
CREATE INDEX subscriptions_created_by ON subscriptions (created_by);

-- The change log's one row (storage/postgres/subscriptions.py): every subscription write takes
-- its row lock first, so versions and ids are handed out, and committed, in order.
CREATE TABLE subscription_version (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    version bigint NOT NULL,             -- the newest version handed out
    newest_id bigint NOT NULL            -- the highest subscription id handed out
);
INSERT INTO subscription_version (version, newest_id) VALUES (0, 0);

CREATE TABLE subscription_people (
    subscription_id bigint NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    user_id text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (subscription_id, user_id)
);
CREATE INDEX subscription_people_user ON subscription_people (user_id);
"""

P001_DELIVERIES = """
CREATE TABLE deliveries (                -- the outbox: one row per paper x channel
    id bigserial PRIMARY KEY,
    paper_id text NOT NULL REFERENCES papers (id),
    channel text NOT NULL,
    matched jsonb NOT NULL,              -- why it matched: subscriptions, queries, terms
    status text NOT NULL DEFAULT 'pending',  -- pending | sending | sent | failed | overflow
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    message_id text,
    error text,
    created_at timestamptz NOT NULL,
    sent_at timestamptz,
    claimed_at timestamptz,
    in_digest boolean NOT NULL DEFAULT false,
    card integer NOT NULL DEFAULT 0,
    strength integer,
    UNIQUE (paper_id, channel)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_channel ON deliveries (channel, status);
CREATE INDEX deliveries_channel_message ON deliveries (channel, message_id) WHERE message_id IS NOT NULL;

-- A subscription's sent count (SQLite: the trigger deliveries_sent_count of m020). Called only
-- for a delivery that becomes sent (WHEN), not for every claim and retry; an id that is not a
-- integer (never written by enqueue_many) is passed over rather than failing mark_sent. The
-- subscriptions are locked in id order first: two deliverers marking sent deliveries of the
-- same subscriptions at once then take turns instead of deadlocking.
CREATE FUNCTION deliveries_sent_count() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    IF jsonb_typeof(NEW.matched) = 'array' THEN
        ids := ARRAY(SELECT (m ->> 'id')::bigint FROM jsonb_array_elements(NEW.matched) m
                      WHERE jsonb_typeof(m -> 'id') = 'number' AND (m ->> 'id') ~ '^[0-9]{1,18}$');
        PERFORM 1 FROM subscriptions WHERE id = ANY (ids) ORDER BY id FOR UPDATE;
        UPDATE subscriptions SET delivered = delivered + 1 WHERE id = ANY (ids);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER deliveries_sent_count AFTER UPDATE OF status ON deliveries
    FOR EACH ROW WHEN (NEW.status = 'sent' AND OLD.status <> 'sent') EXECUTE FUNCTION deliveries_sent_count();

CREATE TABLE followups (
    id bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,  -- the card
    kind text NOT NULL,                  -- code | version | upvotes
    value integer NOT NULL DEFAULT 0,    -- the version, the threshold; 0 for code
    url text,
    status text NOT NULL DEFAULT 'pending',  -- pending | sending | sent | failed | skipped
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    claimed_at timestamptz,
    message_id text,
    error text,
    created_at timestamptz NOT NULL,
    sent_at timestamptz,
    UNIQUE (delivery_id, kind, value)
);
CREATE INDEX followups_due ON followups (status, next_attempt_at);
"""

P001_CHANNELS = """
CREATE TABLE channels (                  -- per-channel delivery settings
    channel text PRIMARY KEY,            -- ChannelRef.key
    mode text NOT NULL DEFAULT 'instant',    -- instant | daily | weekly
    digest_time text NOT NULL DEFAULT '09:00',
    digest_day text NOT NULL DEFAULT 'mon',
    timezone text NOT NULL DEFAULT 'UTC',
    paused boolean NOT NULL DEFAULT false,
    paused_reason text,
    last_digest_at timestamptz,
    updated_at timestamptz NOT NULL
);

CREATE TABLE channel_followups (
    channel text PRIMARY KEY,
    enabled boolean NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE most_saved_digests (
    channel text PRIMARY KEY,
    day text NOT NULL,                   -- mon ... sun, in the channel's time zone
    time text NOT NULL,                  -- HH:MM
    last_sent_at timestamptz,
    updated_at timestamptz NOT NULL
);

CREATE TABLE feedback (
    id bigserial PRIMARY KEY,
    user_id text NOT NULL,
    channel text NOT NULL,
    paper_id text NOT NULL REFERENCES papers (id),
    kind text NOT NULL,                  -- save | not_relevant
    created_at timestamptz NOT NULL,
    UNIQUE (user_id, channel, paper_id, kind)
);
CREATE INDEX feedback_channel ON feedback (channel, kind, created_at);
CREATE INDEX feedback_user ON feedback (user_id, kind, created_at);

CREATE TABLE command_log (
    "user" text NOT NULL,
    at double precision NOT NULL         -- Unix time, seconds
);
CREATE INDEX command_log_user_at ON command_log ("user", at);
CREATE INDEX command_log_at ON command_log (at);

CREATE TABLE source_state (
    source text PRIMARY KEY,
    last_attempt timestamptz,
    last_success timestamptz,
    last_error text,
    last_error_at timestamptz,
    consecutive_failures integer NOT NULL DEFAULT 0,
    last_count integer,
    etag text,
    last_modified text,
    next_poll timestamptz
);
"""

# ---- p002: Slack distribution (SQLite m023) ------------------------------------------------------

P002_SLACK_INSTALLATIONS = """
CREATE TABLE slack_installations (      -- one row per workspace that installed the app (OAuth)
    team_id text PRIMARY KEY,            -- T..., or E... for an org-wide install
    enterprise_id text NOT NULL DEFAULT '',
    team_name text NOT NULL DEFAULT '',
    app_id text NOT NULL DEFAULT '',
    bot_id text NOT NULL DEFAULT '',
    bot_user_id text NOT NULL DEFAULT '',
    bot_scopes text NOT NULL DEFAULT '',
    installer_user_id text NOT NULL DEFAULT '',
    is_enterprise_install boolean NOT NULL DEFAULT false,
    sealed bytea NOT NULL,               -- the tokens, encrypted (Fernet): never in clear
    installed_at timestamptz NOT NULL
);

CREATE TABLE slack_oauth_states (       -- the state of each install link, usable once
    state text PRIMARY KEY,
    expires_at timestamptz NOT NULL
);

CREATE TABLE slack_channel_teams (      -- the workspace of each Slack channel, learnt from its requests
    channel text PRIMARY KEY,            -- ChannelRef.key (slack:C...)
    team_id text NOT NULL
);
CREATE INDEX slack_channel_teams_team ON slack_channel_teams (team_id);
"""

# ---- p003: cooperating processes (SQLite m026) ---------------------------------------------------

P003_COOPERATING_PROCESSES = """
-- A row in 'sending' names its claimer (Store.sender_id): a live deliverer's sends are told from a
-- dead one's (its advisory lock is free). NULL: claimed before this step (the sender lease's holder settles it).
ALTER TABLE deliveries ADD COLUMN claimed_by text;
ALTER TABLE followups ADD COLUMN claimed_by text;
-- One deliverer at a time per channel, so the platforms' per-channel pace holds.
CREATE TABLE channel_leases (
    channel text PRIMARY KEY,            -- ChannelRef.key
    holder text NOT NULL,                -- the serving Store's sender_id
    until timestamptz NOT NULL           -- nobody else serves it before this
);
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("p001_schema", P001_PAPERS + P001_SUBSCRIPTIONS + P001_DELIVERIES + P001_CHANNELS),
    ("p002_slack_installations", P002_SLACK_INSTALLATIONS),
    ("p003_cooperating_processes", P003_COOPERATING_PROCESSES),
]

_LOCK = "papers-bot migrations"


def apply(db: Database) -> list[str]:
    """Apply the steps not applied yet; two processes starting at once apply them once."""
    done: list[str] = []
    with db.transaction():
        db.lock(_LOCK)
        db.execute("""CREATE TABLE IF NOT EXISTS papers_bot_migrations (
                          name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())""")
        applied = _applied(db)
        unknown = applied - {name for name, _ in MIGRATIONS}
        if unknown:
            names = ", ".join(sorted(unknown))
            raise StorageError(f"the database {db.where} was migrated by a newer papers-bot ({names}); "
                               "run that version, or restore a backup", db.where)
        for name, sql in MIGRATIONS:
            if name in applied:
                continue
            db.execute(sql)
            db.execute("INSERT INTO papers_bot_migrations (name) VALUES (%s)", [name])
            done.append(name)
    return done


def _applied(db: Database) -> set[str]:
    exists = db.scalar("SELECT to_regclass('papers_bot_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {row[0] for row in db.all("SELECT name FROM papers_bot_migrations")}
