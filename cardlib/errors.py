"""The single error root of :mod:`cardlib`.

Every exception cardlib raises on purpose derives from :class:`CardlibError`,
so a caller (the terminal, the CLI) can translate them once, at its edge.
Modules add their own subclasses next to the code that raises them.
"""


class CardlibError(Exception):
    """Root of every error raised by cardlib."""
