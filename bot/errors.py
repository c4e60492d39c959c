"""Exceptions of papers-bot.

    BotError
    ├── ConfigError        bad config file or value; names the key
    ├── SourceError        a source could not be fetched or parsed (expected, reported, retried)
    ├── QueryError         a subscription query that cannot be used (shown to the user)
    ├── ImportFileError    a problem in an import file (`papers-bot import`); names the entry,
    │                      and nothing of the file was imported
    └── StorageError       the database file cannot be used: corrupt, read-only, deleted or
        │                  replaced while running (names the file and what to do; the CLI
        │                  prints it as one line and exits non-zero)
        └── StorageBusy    another process held the database past the busy timeout; nothing
                           of the transaction was written, trying again later works

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


class ImportFileError(BotError):
    """A problem in an import file, naming the entry."""


class StorageError(BotError):
    """The database cannot be used; the message names the file and what to do."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class StorageBusy(StorageError):
    """The database stayed locked by another process for longer than the busy timeout."""
