"""The fault-injection suite at a small size: kill -9 mid-delivery, rate limits, an outage;
one `run` on SQLite, and a poller and three deliverers on PostgreSQL.

The runs (conftest.py: their arguments) start when the tests are collected and go on beside
the rest of the suite; these tests run last and check their figures."""


def test_nothing_lost_nothing_duplicated_across_kills(fault_runs):
    figures = fault_runs.figures("sqlite")
    assert figures["kills"] == 2 and figures["outages"] == 1
    assert figures["expected"] == 2 * 35 * 4
    assert figures["lost"] == 0, figures["problems"]
    # Past the cards and the digest: settled, each one counted in the digest it went with.
    assert figures["overflowed"] > 0 and figures["overflow_unannounced"] == 0
    assert figures["delivered"] + figures["overflowed"] == figures["expected"]
    assert figures["duplicated"] == 0 and figures["unexpected"] == 0
    assert figures["integrity"] == "ok" and figures["problems"] == []
    # Follow-ups (code, 100 upvotes) in the cards' threads: each exactly once across the kills.
    assert figures["followups"] > 0 and figures["followups_open"] == 0 and figures["followups_lost"] == 0
    assert figures["followups_duplicated"] == 0 and figures["followups_unexpected"] == 0
    assert figures["rate_limited_429s"] > 0  # the fakes' limits were hit and honoured
    # subscribe, unsubscribe and mute processes ran alongside the bot and its kills
    assert figures["commands"] == 12 and figures["commands_failed"] == 0, figures["problems"]
    assert figures["subscriptions_lost"] == 0, figures["problems"]


def test_cooperating_processes_on_postgresql_killed_at_random(fault_runs):
    figures = fault_runs.figures("postgresql")
    assert figures["storage"] == "postgresql" and (figures["pollers"], figures["deliverers"]) == (1, 3)
    assert figures["kills_by_role"]["poller"] >= 1 and figures["kills_by_role"]["deliverer"] >= 1
    assert sum(figures["kills_by_role"].values()) == figures["kills"] == figures["restarts"]
    assert figures["poller_elections"] == 1 + figures["kills_by_role"]["poller"]  # the restarted one took over
    assert figures["expected"] == 2 * 6 * 4 and figures["outages"] == 1
    assert figures["lost"] == 0 and figures["duplicated"] == 0 and figures["unexpected"] == 0, figures["problems"]
    assert figures["delivered"] + figures["overflowed"] == figures["expected"]
    assert figures["left_sending"] == 0 and figures["problems"] == []
    assert figures["followups"] > 0 and figures["followups_open"] == 0 and figures["followups_lost"] == 0
    assert figures["followups_duplicated"] == 0 and figures["followups_unexpected"] == 0
    assert figures["rate_limited_429s"] > 0
    assert figures["commands"] == 12 and figures["commands_failed"] == 0 and figures["subscriptions_lost"] == 0
