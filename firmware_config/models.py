"""Typed, validated reader and terminal profiles (what the loader returns).

All instances are immutable. Byte strings are decoded from the profile's hex;
durations are seconds; money is rupiah (integers); sizes are bytes.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from cardlib.records.claims import Unit
from cardlib.type2.channel import PassthroughKind, ReaderCapabilities


class Stack(enum.StrEnum):
    """The software stack that drives a reader."""

    PCSC = "pcsc"  #: pcsc-lite + pyscard (cardlib.transport.pcsc)
    NFCPY = "nfcpy"  #: nfcpy's own drivers (cardlib.transport.nfcpy)


class PassThrough(enum.StrEnum):
    """How raw NTAG commands (GET_VERSION, FAST_READ, READ_SIG, READ_CNT, PWD_AUTH) reach the chip."""

    #: ``FF 00 00 00 Lc D4 42 <cmd>``: PN532/PN533 InCommunicateThru (ACR122U API v2.04 §5.3 "Direct Transmit").
    ACR122U = "acr122u"
    #: PC/SC Part 3 §3.2.2.1 "Transparent Session" (``FF C2 00 01 …`` data objects).
    PART3 = "part3"
    #: Only READ BINARY / UPDATE BINARY storage-card pseudo-APDUs (PC/SC Part 3 §3.2.2.1.8/9).
    NONE = "none"
    #: The stack exchanges raw frames itself (nfcpy ``tag.transceive``).
    NATIVE = "native"


class FeedbackChannel(enum.StrEnum):
    """Where LED/buzzer commands go."""

    APDU = "apdu"  #: as pseudo-APDUs on the card connection (needs a card; ACR122U API v2.04 §6.2)
    ESCAPE = "escape"  #: SCardControl(escape_control_code); works without a card (ACR1252U)
    NONE = "none"  #: nothing to drive


class FeedbackEvent(enum.StrEnum):
    """The outcomes a counter signals to the person at the counter."""

    SUCCESS = "success"
    DECLINE = "decline"
    BUSY = "busy"


class CounterMode(enum.StrEnum):
    """What a counter does with a tapped card (the profile's ``counter_mode``)."""

    CLINIC_VISIT = "clinic_visit"  #: records a service delivered; no value leaves the counter
    MARKET_REDEMPTION = "market_redemption"  #: hands over food packages
    CASH_PAYOUT = "cash_payout"  #: pays out cash
    BALANCE_CHECK = "balance_check"  #: read-only tap; never writes the card

    @property
    def unit(self) -> Unit | None:
        """The unit this mode hands out (visits, packages, rupiah); None for a balance check."""
        match self:
            case CounterMode.CLINIC_VISIT:
                return Unit.VISIT
            case CounterMode.MARKET_REDEMPTION:
                return Unit.PACKAGE
            case CounterMode.CASH_PAYOUT:
                return Unit.RUPIAH
        return None

    @classmethod
    def paying(cls, unit: Unit) -> CounterMode:
        """The mode that hands out ``unit``: a programme counted in rupiah is served at a cash counter."""
        return next(mode for mode in cls if mode.unit is unit)


class Language(enum.StrEnum):
    """Counter screen language."""

    ID = "id"  #: Bahasa Indonesia (default)
    EN = "en"


@dataclass(frozen=True, slots=True)
class Feedback:
    """LED/buzzer commands per outcome.

    :ivar channel: where the commands go.
    :ivar success: commands (whole APDUs for ``apdu``, escape payloads for
        ``escape``) sent in order; empty for channel ``none``.
    """

    channel: FeedbackChannel
    success: tuple[bytes, ...] = ()
    decline: tuple[bytes, ...] = ()
    busy: tuple[bytes, ...] = ()

    def sending_first(self, event: FeedbackEvent, command: bytes) -> Feedback:
        """These commands with ``command`` sent before the others of ``event`` (e.g. a buzzer setting)."""
        first = (command, *self.commands(event))
        match event:
            case FeedbackEvent.SUCCESS:
                return replace(self, success=first)
            case FeedbackEvent.DECLINE:
                return replace(self, decline=first)
            case FeedbackEvent.BUSY:
                return replace(self, busy=first)

    def commands(self, event: FeedbackEvent) -> tuple[bytes, ...]:
        """The commands that signal ``event``, in the order to send them."""
        return {
            FeedbackEvent.SUCCESS: self.success,
            FeedbackEvent.DECLINE: self.decline,
            FeedbackEvent.BUSY: self.busy,
        }[event]


@dataclass(frozen=True, slots=True)
class BuzzerOnDetect:
    """Whether the reader beeps by itself when a card enters the field.

    A counter wants it off: the beep must mean "done", not "card seen"
    (ACR122U API v2.04 §6.3: ``FF 00 52 00 00`` off, ``FF 00 52 FF 00`` on).

    :ivar enabled: the wanted setting.
    :ivar set_off: the command that turns it off, if the reader has one.
    :ivar set_on: the command that turns it on, if the reader has one.
    """

    enabled: bool
    set_off: bytes | None = None
    set_on: bytes | None = None

    @property
    def command(self) -> bytes | None:
        """The command that applies :attr:`enabled`, or None when the reader has none."""
        return self.set_on if self.enabled else self.set_off


@dataclass(frozen=True, slots=True)
class SerialSettings:
    """A reader on a serial port (PN532 HSU).

    :ivar device: the device node, e.g. ``/dev/ttyUSB0``.
    :ivar baud: the line speed in bit/s the host opens the port with.
    :ivar driver: the nfcpy driver module (``pn532``).
    """

    device: str
    baud: int
    driver: str = "pn532"

    @property
    def nfcpy_path(self) -> str:
        """nfcpy's path for this port: ``/dev/ttyUSB0`` -> ``tty:USB0:pn532``.

        nfcpy (``nfc/clf/transport.py`` ``TTY.find``) only looks at names
        directly under ``/dev`` matching ``[a-zA-Z0-9-]+``; a device elsewhere
        (a pseudo-terminal under ``/dev/pts``) needs a symlink in ``/dev``.
        """
        name = self.device.removeprefix("/dev/")
        name = name.removeprefix("tty") if re.fullmatch(r"tty(S|ACM|AMA|USB)\d+", name) else name
        return f"tty:{name}:{self.driver}"


@dataclass(frozen=True, slots=True)
class ReaderProfile:
    """One reader model and how to drive it.

    :ivar name: profile name (file stem by convention), e.g. ``acr122u``.
    :ivar name_pattern: searched (``re.search``) in the reader name the stack reports.
    :ivar max_frame: largest raw response payload per command, bytes.
    :ivar poll_interval: presence polling interval, seconds.
    :ivar escape_control_code: SCardControl code for escape commands, if any.
    :ivar nfcpy_path: explicit nfcpy device path (``usb:054c:06c3``), if any.
    :ivar source: the file the profile came from.
    """

    name: str
    description: str
    stack: Stack
    name_pattern: re.Pattern[str]
    pass_through: PassThrough
    max_frame: int
    poll_interval: float
    feedback: Feedback
    buzzer_on_detect: BuzzerOnDetect | None = None
    escape_control_code: int | None = None
    serial: SerialSettings | None = None
    nfcpy_path: str | None = None
    source: Path | None = field(default=None, compare=False)

    def matches(self, reader_name: str) -> bool:
        """True when ``reader_name`` (as the stack reports it) is this kind of reader."""
        return self.name_pattern.search(reader_name) is not None

    def capabilities(self) -> ReaderCapabilities:
        """The profile as cardlib's :class:`~cardlib.type2.channel.ReaderCapabilities`.

        An nfcpy reader (``native``) maps to pass-through kind ``"none"``:
        cardlib's kinds name PC/SC envelopes, and the nfcpy channel carries raw
        frames whatever the kind says; ``max_frame`` still sizes FAST_READ.
        """
        kind: PassthroughKind
        match self.pass_through:
            case PassThrough.ACR122U:
                kind = "acr122u"
            case PassThrough.PART3:
                kind = "part3"
            case PassThrough.NONE | PassThrough.NATIVE:
                kind = "none"
        return ReaderCapabilities(self.name, kind, self.max_frame)

    @property
    def device_path(self) -> str | None:
        """The nfcpy path to open (nfcpy stack only): explicit path, else from :attr:`serial`."""
        if self.nfcpy_path is not None:
            return self.nfcpy_path
        if self.serial is not None:
            return self.serial.nfcpy_path
        return None


@dataclass(frozen=True, slots=True)
class PolicyOverrides:
    """Terminal-local limits that tighten (never loosen) the trust bundle's policy.

    ``None`` means "use the bundle's value". Money in rupiah.

    :ivar offline_cap_per_tap: most one offline tap may redeem.
    :ivar offline_cap_per_card_since_sync: most one card may redeem here since the last sync.
    :ivar offline_terminal_exposure: most this terminal may pay out in total while offline.
    :ivar max_days_since_bundle: days after which a stale bundle stops offline redemptions.
    """

    offline_cap_per_tap: int | None = None
    offline_cap_per_card_since_sync: int | None = None
    offline_terminal_exposure: int | None = None
    max_days_since_bundle: int | None = None


@dataclass(frozen=True, slots=True)
class ReaderBinding:
    """A reader profile attached to a terminal, optionally narrowed to one slot.

    :ivar slot_pattern: also searched in the reader name, e.g. ``PICC`` to skip a SAM slot.
    """

    profile: ReaderProfile
    slot_pattern: re.Pattern[str] | None = None

    def matches(self, reader_name: str) -> bool:
        """True when the reader name matches the profile and the slot pattern (if any)."""
        if not self.profile.matches(reader_name):
            return False
        return self.slot_pattern is None or self.slot_pattern.search(reader_name) is not None


@dataclass(frozen=True, slots=True)
class TerminalKeyStore:
    """Where the terminal key lives (the profile's ``[key]`` table).

    :ivar store: ``file`` (encrypted PKCS#8 at ``paths.key``) or ``pkcs11`` (a token: a TPM's or an HSM's).
    :ivar module: PKCS#11 module path, e.g. ``/usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so``.
    :ivar token: the token label (CKA_LABEL of the token).
    :ivar label: the key pair's CKA_LABEL on the token.
    :ivar alg: ``EdDSA`` (Ed25519) or ``ES256`` (P-256, for tokens without CKM_EDDSA such as TPMs).
    """

    store: str = "file"
    module: str | None = None
    token: str | None = None
    label: str = "huma-terminal"
    alg: str = "EdDSA"


@dataclass(frozen=True, slots=True)
class TerminalProfile:
    """One counter terminal's configuration.

    :ivar terminal_id: e.g. ``T-6271-0001``.
    :ivar region: Kemendagri code, e.g. ``62.71`` (Palangka Raya).
    :ivar sync_interval: seconds between sync attempts.
    :ivar key_path: terminal key file (encrypted PKCS#8), absolute.
    :ivar journal_path: SQLite journal file, absolute.
    :ivar screen_port: TCP port of the counter screen (bound to 127.0.0.1 only).
    :ivar root_key_path: pinned root public key (PEM) that endorses bundle keys, absolute.
    :ivar bundle_path: where the installed trust bundle is kept, absolute.
    :ivar passphrase_path: an explicit file holding the key passphrase, or None
        ($HUMA_KEY_PASSPHRASE, then the systemd credential ``huma-key-passphrase``).
    :ivar key_store: where the key lives (file by default, or a PKCS#11 token).
    :ivar card_keys_path: the provincial card-password key file (docs/card-format.md §2.2), or None.
    :ivar card_keys_passphrase_path: an explicit file holding its passphrase, or None
        ($HUMA_CARD_KEYS_PASSPHRASE, then the systemd credential ``huma-card-keys-passphrase``).
    """

    terminal_id: str
    region: str
    counter_mode: CounterMode
    programmes: tuple[str, ...]
    server_url: str
    sync_interval: float
    key_path: Path
    journal_path: Path
    readers: tuple[ReaderBinding, ...]
    language: Language = Language.ID
    policy: PolicyOverrides = field(default_factory=PolicyOverrides)
    screen_port: int = 8480
    #: supervisor id -> scrypt hash of their password, for manual fallback entries (docs/fallback.md)
    supervisors: Mapping[str, str] = field(default_factory=dict)
    root_key_path: Path | None = None
    bundle_path: Path | None = None
    passphrase_path: Path | None = None
    key_store: TerminalKeyStore = field(default_factory=TerminalKeyStore)
    card_keys_path: Path | None = None
    card_keys_passphrase_path: Path | None = None
    source: Path | None = field(default=None, compare=False)

    def binding_for(self, reader_name: str) -> ReaderBinding | None:
        """The first configured reader binding that matches ``reader_name``, or None."""
        for binding in self.readers:
            if binding.matches(reader_name):
                return binding
        return None
