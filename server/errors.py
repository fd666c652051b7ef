"""The single error root of :mod:`server`."""


class ServerError(Exception):
    """Root of every error raised by the server package."""
