"""The single error root of :mod:`terminal`."""


class TerminalError(Exception):
    """Root of every error raised by the terminal package."""
