"""The `secure` card profile: our card application on a Type 4 card (docs/secure-card.md).

The terminal side of the protocol, pure over a :class:`~cardlib.transport.Connection`:

- :class:`SecureCardSession` — one method per APDU; :meth:`~SecureCardSession.read_identity`,
  :meth:`~SecureCardSession.verify_card` (GET DATA state, INTERNAL AUTHENTICATE
  with every check of §5.1) and :meth:`~SecureCardSession.commit` (UPDATE STATE
  + read-back) with :meth:`~SecureCardSession.external_authenticate` (the terminal's proof,
  with the PIN when asked, §5.5) make a redemption of at most 7 APDUs (§7); :meth:`~SecureCardSession.generate_key` and
  :meth:`~SecureCardSession.personalise` are the provisioning side.
- :func:`check_record_seq` — the card's stored seq must be the slot record's seq.
- :mod:`cardlib.secure.conformance` — the spec's checks against any card.
- errors under :class:`SecureCardError` (a :class:`~cardlib.errors.CardlibError`).
"""

from cardlib.secure.errors import (
    CardAuthenticationFailed,
    CloneSuspected,
    CounterNotIncreasing,
    LifeCycleError,
    PinBlocked,
    PinNotSet,
    PinRequired,
    PinWrong,
    SecureCardError,
    SecureProtocolError,
    StateMismatch,
    StateRollbackRefused,
    TerminalAuthFailed,
    TerminalAuthRequired,
    WriteNotConfirmed,
)
from cardlib.secure.protocol import (
    AID,
    NDEF_AID,
    AuthResponse,
    CardInfo,
    CardState,
    LifeCycle,
    compress_point,
    pin_reset_message,
    sign_pin_reset,
    terminal_card_key,
    terminal_mac,
)
from cardlib.secure.session import SecureCardSession, VerifiedCard, check_record_seq

__all__ = [
    "AID",
    "NDEF_AID",
    "AuthResponse",
    "CardAuthenticationFailed",
    "CardInfo",
    "CardState",
    "CloneSuspected",
    "CounterNotIncreasing",
    "LifeCycle",
    "LifeCycleError",
    "PinBlocked",
    "PinNotSet",
    "PinRequired",
    "PinWrong",
    "SecureCardError",
    "SecureCardSession",
    "SecureProtocolError",
    "StateMismatch",
    "StateRollbackRefused",
    "TerminalAuthFailed",
    "TerminalAuthRequired",
    "VerifiedCard",
    "WriteNotConfirmed",
    "check_record_seq",
    "compress_point",
    "pin_reset_message",
    "sign_pin_reset",
    "terminal_card_key",
    "terminal_mac",
]
