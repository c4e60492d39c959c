"""Exceptions of papers-bot.

    BotError
    ├── ConfigError        bad config file or value; names the key
    ├── SourceError        a source could not be fetched or parsed (expected, reported, retried)
    └── QueryError         a subscription query that cannot be used (shown to the user)

Expected failures that are not errors (a platform refusing a post, say) are values
(`PostResult(ok=False)`), not exceptions.
"""


class BotError(Exception):
    pass


class ConfigError(BotError):
    pass


class SourceError(BotError):
    def __init__(self, source: str, message: str, *, retryable: bool = True):
        super().__init__(f"{source}: {message}")
        self.source = source
        self.reason = message
        self.retryable = retryable


class QueryError(BotError):
    pass
