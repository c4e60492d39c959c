"""Wording shared by replies, cards and the command line."""

from __future__ import annotations


def plural(count: int, noun: str, plural_form: str | None = None) -> str:
    """The count and the noun, agreeing: "1 subscription", "2 subscriptions", "1,200 papers".

    `plural_form` for nouns that do not just take an s ("1 query", "2 queries").
    """
    return f"{count:,} {noun if count == 1 else plural_form or noun + 's'}"
