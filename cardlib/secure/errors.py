"""Errors of the secure card application (docs/secure-card.md), one root under :class:`CardlibError`.

Each error names a cause a counter acts on differently: a card that cannot
prove its key (:class:`CloneSuspected`) is refused and reported, a refused
update (:class:`StateRollbackRefused`) means the terminal tried to write a
state that is not newer, a wrong PIN (:class:`PinWrong`) is asked again.
"""

from __future__ import annotations

from cardlib.apdu import sw_name
from cardlib.errors import CardlibError

__all__ = [
    "CardAuthenticationFailed",
    "CloneSuspected",
    "CounterNotIncreasing",
    "LifeCycleError",
    "PinBlocked",
    "PinNotSet",
    "PinRequired",
    "PinWrong",
    "SecureCardError",
    "SecureProtocolError",
    "StateMismatch",
    "StateRollbackRefused",
    "TerminalAuthFailed",
    "TerminalAuthRequired",
]


class SecureCardError(CardlibError):
    """Root of the errors of :mod:`cardlib.secure`."""


class SecureProtocolError(SecureCardError):
    """The card answered a status word or a response the protocol does not expect.

    :ivar sw: the status word SW1SW2 (0x9000 when the data was malformed).
    :ivar data: the response data.
    """

    def __init__(self, sw: int, data: bytes = b"", context: str = "") -> None:
        text = f"secure card: SW={sw_name(sw)}"
        if context:
            text = f"{text} ({context})"
        super().__init__(text)
        self.sw = sw
        self.data = data


class CardAuthenticationFailed(SecureCardError):
    """The card did not prove that it is the card the identity names (docs/secure-card.md §5.1)."""


class CloneSuspected(CardAuthenticationFailed):
    """The card's signature does not verify under the identity's ``card_public_key``.

    A copy of the readable bytes without the private key answers like this.
    """


class CounterNotIncreasing(CloneSuspected):
    """The card's transaction counter is not above the last value this terminal saw.

    :ivar counter: the counter the card signed.
    :ivar last_seen: the terminal's last value for this card.
    """

    def __init__(self, counter: int, last_seen: int) -> None:
        super().__init__(f"card counter {counter} is not above the last seen {last_seen}: replay or cloned key")
        self.counter = counter
        self.last_seen = last_seen


class StateMismatch(CardAuthenticationFailed):
    """The state the card signed is not the state it let the terminal read (seq or SHA-256 differ)."""


class WriteNotConfirmed(StateMismatch):
    """UPDATE STATE was answered ``90 00`` but the card does not sign that it holds the new state.

    Something between reader and card may have swallowed the update (red team round 4); the state
    on the card is old or new: read it (signed) at the next presentation.
    """


class StateRollbackRefused(SecureCardError):
    """UPDATE STATE refused (``69 85``): the new seq is not higher than the card's (docs/secure-card.md §5.2).

    :ivar seq: the seq the terminal sent.
    """

    def __init__(self, seq: int) -> None:
        super().__init__(f"card refused state seq {seq}: not higher than the stored one")
        self.seq = seq


class PinRequired(SecureCardError):
    """UPDATE STATE refused (``69 82``): this card needs a verified PIN first."""


class PinWrong(SecureCardError):
    """VERIFY answered ``63 Cx`` (docs/secure-card.md §5.3).

    :ivar tries_left: x, wrong tries left before the PIN blocks (0 means the next VERIFY is blocked).
    """

    def __init__(self, tries_left: int) -> None:
        super().__init__(f"wrong PIN, {tries_left} tries left")
        self.tries_left = tries_left


class PinBlocked(SecureCardError):
    """The PIN is blocked (``69 83``); only an issuer-signed reset unblocks it (docs/secure-card.md §5.4)."""


class PinNotSet(SecureCardError):
    """The card has no PIN (``69 84``)."""


class LifeCycleError(SecureCardError):
    """The command is not allowed in the card's life cycle state (``69 86``, docs/secure-card.md §2.1)."""


class TerminalAuthRequired(SecureCardError):
    """The card refused VERIFY or UPDATE STATE (``69 82``): no terminal proved itself in this session (§5.5)."""


class TerminalAuthFailed(SecureCardError):
    """EXTERNAL AUTHENTICATE refused (``69 82``): the card does not take this terminal's proof (§5.5).

    The card's terminal key is not derived from a card-access key this terminal holds (another
    province's card, a damaged personalisation), or the proof was for another session.
    """
