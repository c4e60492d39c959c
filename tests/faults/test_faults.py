"""The fault-injection suite at a small size: kill -9 mid-delivery, rate limits, an outage."""

import json

from bench.faults import main


def test_nothing_lost_nothing_duplicated_across_kills(capsys):
    # 35 papers a round: 10 cards, a digest of 20, and 5 past both, settled as overflow.
    figures = main(["--rounds", "2", "--papers", "35", "--seed", "7", "--timeout", "180"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
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
