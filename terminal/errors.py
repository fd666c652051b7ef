"""The single error root of :mod:`terminal`, with one subclass per cause.

Declines are *not* errors: a declined card is a normal outcome carried by
:class:`terminal.policy.Decision`. Errors here mean the terminal itself could
not do its job (journal unusable, profile wrong, reader gone, server refused).
"""

from __future__ import annotations


class TerminalError(Exception):
    """Root of every error raised by the terminal package."""


class ProfileError(TerminalError):
    """The terminal profile (TOML) is missing a value the daemon needs or has a wrong one."""


class JournalError(TerminalError):
    """The journal store cannot be opened or written (disk full, wrong schema, locked)."""


class JournalVerifyError(JournalError):
    """An offline journal check failed: broken chain, bad signature, sequence gap.

    :ivar seq: the terminal sequence number of the first failing entry, or None
        when the failure concerns the file as a whole.
    """

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message if seq is None else f"entry seq {seq}: {message}")
        self.seq = seq


class JournalDamaged(JournalError):
    """SQLite reports the journal file itself damaged (``PRAGMA integrity_check`` / ``quick_check``).

    A damaged index can hide a card's earlier entries from the look-ups the
    counter relies on (open writes, replay check, exposure), so a counter
    refuses to serve taps on such a file and an audit refuses to call it OK.

    :ivar problems: what SQLite reported, one line each (at most 10).
    :ivar index_only: True when every problem concerns an index (``REINDEX`` repairs it).
    """

    def __init__(self, message: str, problems: tuple[str, ...] = (), index_only: bool = False) -> None:
        super().__init__(message)
        self.problems = problems
        self.index_only = index_only


class TapRetry(TerminalError):
    """The tap could not be completed for a transient reason; the clerk asks to tap again.

    Raised for "reader gone", "card taken away before anything was written" and
    deadline overruns. Nothing was charged; any write in flight is journalled
    as UNCERTAIN and recovered on the next presentation.
    """


class SyncError(TerminalError):
    """An upload or trust-bundle download failed; the sync loop retries with backoff."""


class SyncRejected(SyncError):
    """The server refused a request for a reason retrying will not fix (4xx other than 409/429)."""


class BundleError(TerminalError):
    """No usable trust bundle: none stored yet, or the stored one fails verification."""
