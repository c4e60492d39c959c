"""Fakes for every outside service (HF and arXiv over HTTP, Slack Web API and Socket Mode,
Discord REST and gateway, a slow client), bound to 127.0.0.1 only.

Tests and benchmarks both use them; they are not part of the installed bot.
"""
