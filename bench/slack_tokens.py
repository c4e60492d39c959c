"""What Slack distribution adds to each post: finding the channel's workspace token.

    python -m bench.slack_tokens --workspaces 500 --posts 20000

With the app installed in --workspaces workspaces (tokens sealed with Fernet in a SQLite
store in a temporary folder, one channel each), times `Workspaces.client_for` as the
Slack adapter calls it before every post, digest and follow-up: the channel's team (from
memory after the first time), the installation read from the database (so an uninstall in
any process is seen at once), its tokens opened, the client picked. Prints p50, p95 and
max microseconds; the last line is one JSON object. Figures, not assertions:
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time

from cryptography.fernet import Fernet
from slack_sdk.oauth.installation_store import Installation

from bot.adapters.slack_oauth import Sealer, Workspaces
from bot.models import ChannelRef
from storage import Store


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.slack_tokens")
    parser.add_argument("--workspaces", type=int, default=500)
    parser.add_argument("--posts", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as folder:
        store = Store(f"{folder}/bot.db")
        workspaces = Workspaces(store, Sealer(Fernet.generate_key().decode()), "http://127.0.0.1:9/api/")
        for i in range(args.workspaces):
            workspaces.installed(Installation(team_id=f"T{i}", team_name=f"Lab {i}", bot_token=f"xoxb-{i}-{i:024d}",
                                              bot_id=f"B{i}", bot_user_id=f"U{i}", user_id="U1"))
            store.set_slack_channel_team(ChannelRef("slack", f"C{i}"), f"T{i}")
        times = []
        for _ in range(args.posts):
            channel = f"C{rng.randrange(args.workspaces)}"
            start = time.perf_counter()
            client, _team = workspaces.client_for(channel)
            times.append(time.perf_counter() - start)
            assert client is not None
        store.close()
    times.sort()
    figures = {"workspaces": args.workspaces, "posts": args.posts,
               "p50_us": round(statistics.median(times) * 1e6), "p95_us": round(times[int(len(times) * 0.95)] * 1e6),
               "max_us": round(times[-1] * 1e6)}
    print(f"{args.workspaces} workspaces: a post's token lookup takes {figures['p50_us']} us (p50), "
          f"{figures['p95_us']} us (p95), {figures['max_us']} us at most", file=sys.stderr)
    print(json.dumps(figures))
    return figures


if __name__ == "__main__":
    main()
