"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class HtouchError(Exception):
    """A problem with the user's input or data: a missing path, a bad name, a corrupt store."""


class DatasetError(HtouchError):
    """A dataset or episode is missing, malformed or unreadable."""


class WriterError(HtouchError):
    """The episode writer failed (disk full, closed writer, ...); data flushed so far stays on disk."""
