"""The single error root of :mod:`terminal`, with one subclass per cause.

Declines are *not* errors: a declined card is a normal outcome carried by
:class:`terminal.policy.Decision`. Errors here mean the terminal itself could
not do its job (journal unusable, profile wrong, reader gone, server refused).
"""

from __future__ import annotations


class TerminalError(Exception):
    """Root of every error raised by the terminal package."""


class TerminalProfileError(TerminalError):
    """The terminal profile (TOML) lacks a value the daemon needs (root key, bundle path, passphrase, CSR)."""


class ScreenListenError(TerminalError):
    """The counter screen cannot listen on its ``screen_port`` (in use by another process, no permission)."""


class InputRefused(TerminalError, ValueError):
    """A value typed at the counter screen that the counter refuses (a clerk id with a space, a bad receipt code).

    :ivar code: a stable code the screen shows in the clerk's words and language
        (:data:`terminal.screen.i18n.ERROR_TEXTS`); the message is the English text for logs.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class JournalStoreError(TerminalError):
    """The journal file cannot be opened, written or repaired (disk full, locked, another terminal's or key's)."""


class JournalInUse(JournalStoreError):
    """Another process (a second ``huma terminal run`` on the same profile) holds the journal's writer lock."""


class JournalReadOnly(JournalStoreError):
    """A write (append, upload receipt, settlement) asked of a journal opened read-only
    (:meth:`terminal.journal_store.JournalStore.open_read_only`); nothing was written."""


class JournalVerifyError(TerminalError):
    """An offline journal check failed: broken chain, bad signature, sequence gap.

    :ivar seq: the terminal sequence number of the first failing entry, or None
        when the failure concerns the file as a whole.
    """

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message if seq is None else f"entry seq {seq}: {message}")
        self.seq = seq


class JournalDamaged(JournalStoreError):
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


class JournalEdited(JournalDamaged):
    """The journal's rows disagree with its signed entries: the file was edited outside the counter.

    Found when a counter opens the file (an index column, the ``pending`` state or the chain differs
    from the signed entries) or when it reads back a row it verified (its bytes changed since). The
    counter refuses to serve taps on it; nothing is repaired. ``huma journal verify`` names the row.

    :ivar seq: the terminal seq of the first row found edited, or None.
    """

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message, (message,), False)
        self.seq = seq


class SyncError(TerminalError):
    """An upload or trust-bundle download failed; the sync loop retries with backoff."""


class SyncRejected(SyncError):
    """The server refused a request for a reason retrying will not fix (4xx other than 409/429)."""


class SettlementRefused(SyncError):
    """A signed settlement of a torn write does not match this journal (an entry it lacks, not an open
    card write, another seq or outcome, or one the request did not carry); nothing was recorded or marked."""


class TrustStoreError(TerminalError):
    """No usable trust bundle: none installed yet, the installed one fails verification, or a download is refused."""


class TrustStoreReadOnly(TrustStoreError):
    """An install, confirmation or time correction asked of a trust store opened read-only
    (:meth:`terminal.trust.TrustStore.open_read_only`); nothing was written."""
