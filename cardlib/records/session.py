"""Card session: read and verify a card's state, redeem tear-safely, recover on the next tap.

Spec: docs/card-format.md §5 (verification) and §6 (update protocol). The
session works on any tag object with the four methods of :class:`TagMemory`
(helper B's :class:`cardlib.type2.Type2Tag` has them) and a trust source with
the two methods of :class:`CardTrust` (the verified
:class:`cardlib.records.bundle.TrustBundle` has them).

Update protocol (NTAG21x has no atomic multi-page write, datasheet §8.5 grants
anti-tearing only to lock/CC pages):

1. :meth:`CardSession.read_state` reads the image, verifies identity and slots,
   picks the valid slot with the highest seq ("current"); the other slot
   (older, empty or corrupt) is the *target*.
2. :meth:`CardSession.prepare_redemption` builds and signs the next state
   (seq + 1, prev_hash = hash of the current slot's COSE bytes) and returns a
   :class:`PendingWrite` that the caller journals (PENDING, fsync) *before*
   3. :meth:`CardSession.commit` writes the target slot's changed pages: COMMITTED
      when every WRITE was acknowledged (the ACK follows programming, datasheet
      §10.4); after a link error it reads the slot back once: COMMITTED if identical,
      else UNCERTAIN; NOT_WRITTEN when the card left before any WRITE.
4. After UNCERTAIN, :meth:`CardSession.recover` on the next presentation
   decides FINISHED (the intended state is on the card: count it once) or
   VOIDED (it is not: nothing was charged), optionally repairing a torn slot.

The current slot is never written, so a tear leaves the old state valid.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import cbor2

from cardlib.errors import CardlibError
from cardlib.keys.signer import Signer, sign1_with
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import KeyRole
from cardlib.records.claims import IdentityClaims, SlotClaims, state_hash
from cardlib.records.cose import KeyResolver, VerifiedSign1, verify1
from cardlib.records.counter_mirror import read_mirror
from cardlib.records.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    CardPasswordRefused,
    CardPasswordUnavailable,
    ClaimsError,
    CorruptSlot,
    CoseError,
    Expired,
    ForkDetected,
    LayoutError,
    NotYetValid,
    NoValidState,
    RedemptionRefused,
    RevokedKid,
    UidMismatch,
    UnknownKid,
    WrongCard,
)
from cardlib.records.layout import (
    FIRST_DATA_PAGE,
    PAGE_SIZE,
    PRIVATE_FIRST_PAGE,
    PUBLIC_HEADER_PAGE,
    CardLayout,
    PublicHeader,
    RecordImage,
    SlotName,
    SlotRegion,
    header_layout,
    pad_payload,
    parse_image,
    parse_private_image,
    parse_public_header,
    split_payload,
)
from cardlib.transport.errors import TagMute
from cardlib.type2.errors import AddressOutOfRange, Nak, PwdAuthFailed, UnsupportedCommand

log = logging.getLogger(__name__)

__all__ = [
    "NTAG215_DATA_PAGES",
    "CardSession",
    "CardState",
    "CardTrust",
    "CommitResult",
    "PendingWrite",
    "RecoveryDecision",
    "RecoveryResult",
    "TagMemory",
    "VerifiedIdentity",
    "VerifiedSlot",
    "WriteOutcome",
    "identity_aad",
    "slot_aad",
]

#: external_aad context strings (docs/card-format.md §5); the version is in the string.
IDENTITY_AAD_CONTEXT = b"huma-betang/card/v1/identity"
SLOT_AAD_CONTEXT = b"huma-betang/card/v1/slot"
#: Pages of the NTAG215 CC data area (496 B / 4); the default first read.
NTAG215_DATA_PAGES = 124
#: First page of the tap's first read after PWD_AUTH: lock bytes and CC (page 3, which tells the chip),
#: not the UID pages the reader already gave, so pages 2-127 fill two 63-page frames exactly.
_FIRST_READ_PAGE = 2
_KEY_ERRORS = (UnknownKid, RevokedKid, AlgorithmNotAllowed)


def identity_aad(uid: bytes) -> bytes:
    """external_aad of the identity record: context ‖ tag UID (7 B)."""
    return IDENTITY_AAD_CONTEXT + bytes(uid)


def slot_aad(uid: bytes, identity_hash: bytes) -> bytes:
    """external_aad of a slot: context ‖ tag UID (7 B) ‖ identity hash (8 B).

    Binding the identity hash means a slot cannot be moved to another issuance
    on the same chip (re-issued card).
    """
    return SLOT_AAD_CONTEXT + bytes(uid) + bytes(identity_hash)


@runtime_checkable
class TagMemory(Protocol):
    """What the session needs from a Type 2 tag (pages are 4 bytes, NTAG21x datasheet §8.5)."""

    @property
    def uid(self) -> bytes:
        """The 7-byte UID."""

    def read_pages(self, first: int, count: int) -> bytes:
        """Read ``count`` pages from page ``first``; returns ``count * 4`` bytes."""

    def write_pages(self, first: int, data: bytes) -> None:
        """Write whole pages from ``first`` (``len(data) % 4 == 0``), one WRITE per page."""

    def read_counter(self) -> int:
        """READ_CNT: the 24-bit NFC counter (NTAG21x datasheet §10.6)."""


class CardTrust(Protocol):
    """Key and deny-list lookups (satisfied by :class:`cardlib.records.bundle.TrustBundle`)."""

    def resolver(self, role: KeyRole) -> KeyResolver:
        """Resolver for keys of one role; raises UnknownKid / RevokedKid."""

    def check_card(self, claims: IdentityClaims, kid: bytes, uid: bytes) -> None:
        """Called once the identity record verified (claims, issuer kid, chip UID).

        :raises DeniedCard: when the card id or UID is on the deny list, carrying that verified identity.
        """


@dataclass(frozen=True)
class VerifiedIdentity:
    """The issuer-verified identity record.

    :ivar cose: the verified message (exact bytes).
    :ivar claims: decoded claims.
    """

    cose: VerifiedSign1
    claims: IdentityClaims

    @property
    def hash(self) -> bytes:
        """8-byte :func:`state_hash` of the identity COSE bytes."""
        return state_hash(self.cose.message)


@dataclass(frozen=True)
class VerifiedSlot:
    """A terminal-verified state slot.

    :ivar name: A or B.
    :ivar cose: the verified message (exact bytes).
    :ivar claims: decoded claims.
    :ivar region: the raw fixed-length payload it was read from.
    """

    name: SlotName
    cose: VerifiedSign1
    claims: SlotClaims
    region: SlotRegion

    @property
    def hash(self) -> bytes:
        """8-byte :func:`state_hash` of the slot's COSE bytes (the next state's prev_hash)."""
        return state_hash(self.cose.message)


@dataclass(frozen=True)
class CardState:
    """A verified card: identity, the current state and what is wrong with the other slot.

    :ivar uid: tag UID (7 bytes).
    :ivar image: the parsed image as read.
    :ivar identity: verified identity.
    :ivar current: the valid slot with the highest seq.
    :ivar other: the other slot when it is valid too (older, or an identical copy).
    :ivar problems: :class:`CorruptSlot` reports for slots that are not valid
        (torn, garbled, unknown key on an *older* state ...). Empty slots are not problems.
    :ivar empty: slots that were never written (all-zero payload).
    """

    uid: bytes
    image: RecordImage
    identity: VerifiedIdentity
    current: VerifiedSlot
    other: VerifiedSlot | None
    problems: tuple[CorruptSlot, ...] = ()
    empty: tuple[SlotName, ...] = ()

    @property
    def layout(self) -> CardLayout:
        return self.image.layout

    @property
    def target(self) -> SlotName:
        """The slot the next write goes to: never the current one."""
        return self.current.name.other

    def remaining_in(self, cycle: int) -> dict[int, int]:
        """Amounts left per programme in ``cycle`` (programme unit).

        A later cycle than the card's starts from the full entitlement.

        :raises RedemptionRefused: ``cycle`` is earlier than the card's cycle.
        """
        claims = self.current.claims
        if cycle < claims.cycle:
            raise RedemptionRefused(
                f"card is already in cycle {claims.cycle}, terminal asked for {cycle}"
            )
        if cycle > claims.cycle:
            return {pid: p.per_cycle for pid, p in self.identity.claims.programmes.items()}
        return dict(claims.remaining)


class WriteOutcome(enum.Enum):
    """Result of :meth:`CardSession.commit`."""

    COMMITTED = "committed"  #: every WRITE acknowledged (or read back identical): the redemption happened
    NOT_WRITTEN = "not_written"  #: no WRITE reached the card: nothing happened
    UNCERTAIN = "uncertain"  #: maybe written: journal it and call recover() on the next tap


@dataclass(frozen=True)
class PendingWrite:
    """What the caller journals before :meth:`CardSession.commit` (enough to recover later).

    :ivar uid: tag UID (7 B).
    :ivar card_id: card id (8 B).
    :ivar slot: target slot.
    :ivar seq: seq of the new state.
    :ivar cose: the new slot's COSE_Sign1 bytes (signed).
    :ivar base_hash: hash of the state it follows (prev_hash in ``cose``).
    :ivar amounts: programme id -> amount redeemed (programme unit).
    :ivar cycle: cycle id of the redemption.
    :ivar first_page: absolute first page of the target slot.
    :ivar slot_len: slot payload length, bytes.
    :ivar old_region: the target slot's bytes as read before writing (unchanged pages are skipped).
    """

    uid: bytes
    card_id: bytes
    slot: SlotName
    seq: int
    cose: bytes
    base_hash: bytes
    amounts: Mapping[int, int]
    cycle: int
    first_page: int
    slot_len: int
    old_region: bytes = field(repr=False)

    @property
    def new_hash(self) -> bytes:
        """8-byte hash of the new state (what a later state's prev_hash points to)."""
        return state_hash(self.cose)

    @property
    def region(self) -> bytes:
        """The full padded slot payload that must end up on the card."""
        return pad_payload(self.cose, self.slot_len)


@dataclass(frozen=True)
class CommitResult:
    """Outcome of a slot write.

    :ivar outcome: COMMITTED / NOT_WRITTEN / UNCERTAIN.
    :ivar pending: the write it is about.
    :ivar pages_written: WRITE commands that were acknowledged.
    :ivar error: the exception that stopped it, if any.
    """

    outcome: WriteOutcome
    pending: PendingWrite
    pages_written: int
    error: Exception | None = None


class RecoveryDecision(enum.Enum):
    """What :meth:`CardSession.recover` concluded about a journalled UNCERTAIN write."""

    FINISHED = "finished"  #: the intended state is (or was) on the card: count the redemption once
    VOIDED = "voided"  #: it never became the card's state: nothing was charged
    DEFERRED = "deferred"  #: the card moved ≥ 2 states on; only the server's chain can tell


@dataclass(frozen=True)
class RecoveryResult:
    """Result of a recovery.

    :ivar decision: FINISHED / VOIDED / DEFERRED.
    :ivar state: the card state read during recovery (after any repair).
    :ivar repaired: True when a torn slot was overwritten with a copy of the current state.
    :ivar note: short explanation for the journal.
    """

    decision: RecoveryDecision
    state: CardState
    repaired: bool
    note: str


class CardSession:
    """One presented card: verified reads, tear-safe redemption, recovery.

    :param tag: the tag (:class:`TagMemory`).
    :param trust: keys and deny list (:class:`CardTrust`).
    :param first_read_pages: pages from page 4 the data reads cover at first; the
        default covers the NTAG215 data area so a standard card needs no further read.
    :param passwords: the provincial card-password keys (:class:`CardPasswordKeys`);
        without them a card with private pages (format 2) raises :class:`CardPasswordUnavailable`.
    """

    def __init__(self, tag: TagMemory, trust: CardTrust, *, first_read_pages: int = NTAG215_DATA_PAGES,
                 passwords: CardPasswordKeys | None = None) -> None:
        self.tag = tag
        self.trust = trust
        self.first_read_pages = first_read_pages
        self.passwords = passwords
        #: The public header of a format-2 card, once read (None for format 1).
        self.public: PublicHeader | None = None
        #: The NFC counter the chip mirrored into the private area on the last read (None: no mirror).
        self.mirrored_counter: int | None = None

    # ------------------------------------------------------------------ reading

    def read_image(self) -> RecordImage:
        """Read the card and parse its layout (no signature checks); authenticate a format-2 card.

        Commands (docs/card-format.md §7): when the UID came from the reader (GET DATA, no card
        command), PWD_AUTH with the current key version before any read, then FAST_READs from
        page 2 (CC, public pages 4-10 and the private area in the same frames): a format-2 card
        under the current version takes PWD_AUTH + 2 FAST_READs on an NTAG215. A NAK (an older
        key version, a format-1 card, a chip without our password) re-selects the chip; the
        format-1 office version is tried next when held, else pages 0-10 are read and the card
        opened as their header says. Without a reader UID: pages 0-10 first, as before.

        :raises LayoutError: not our layout.
        :raises CardPasswordUnavailable: a format-2 card whose key version this session lacks.
        :raises CardPasswordRefused: the chip refused the derived password or its PACK differs (a clone).
        :raises CardlibError: (tag/transport subclasses) the card link failed.
        """
        self.mirrored_counter = None
        self.format1_cc_size = None
        end = FIRST_DATA_PAGE + self.first_read_pages
        opened, refused = self._open_first()
        if opened is not None:
            try:
                area = self._read_first(end)
            except (Nak, TagMute) as exc:  # not an NTAG215/216 image of ours: start over, slowly
                log.debug("first read after PWD_AUTH refused (%s): reading the header first", exc)
                refused = ()
            else:
                return self._parse_opened(area, opened, end)
        head = self._read_head()
        self.public = parse_public_header(head[PUBLIC_HEADER_PAGE * PAGE_SIZE : (PUBLIC_HEADER_PAGE + 1) * PAGE_SIZE])
        if self.public is None:
            data = head[FIRST_DATA_PAGE * PAGE_SIZE :]
            keys = self.passwords
            if keys is not None and keys.format1 is not None and keys.format1 in refused:
                raise CardPasswordRefused("the chip refused the format-1 office password")
            self.open_format1(head)
            first = FIRST_DATA_PAGE + len(data) // PAGE_SIZE
            data += self.tag.read_pages(first, end - first)
            return self._format1_image(data)
        if self.public.key_version in refused:
            raise CardPasswordRefused(f"the chip refused the card password of key version {self.public.key_version}")
        self.authenticate(self.public)
        return self._private_image(self.tag.read_pages(PRIVATE_FIRST_PAGE, end - PRIVATE_FIRST_PAGE))

    def _format1_image(self, data: bytes) -> RecordImage:
        """A format-1 image from bytes read from page 4 on (reads the rest when the image is longer)."""
        layout = header_layout(data)
        missing = layout.pages - len(data) // PAGE_SIZE
        if missing > 0:
            data += self.tag.read_pages(FIRST_DATA_PAGE + len(data) // PAGE_SIZE, missing)
        return parse_image(data)

    def _private_image(self, data: bytes) -> RecordImage:
        """A format-2 image from bytes read from page 11 on (reads the rest when the image is longer)."""
        private = CardLayout(data[0], data[1], 2) if data[0] and data[1] else None
        if private is not None and private.pages > len(data) // PAGE_SIZE:
            data += self.tag.read_pages(PRIVATE_FIRST_PAGE + len(data) // PAGE_SIZE,
                                        private.pages - len(data) // PAGE_SIZE)
        image = parse_private_image(data)
        self.mirrored_counter = read_mirror(data, image.layout, self.first_read_pages)
        return image

    def _open_first(self) -> tuple[int | None, tuple[int, ...]]:
        """PWD_AUTH before any read: the current key version, then the format-1 office version.

        Only when the tag knows its UID from the reader (GET DATA or the stack's activation):
        if it had to read pages 0-10 for it, the header is known and names the version. Every
        card we issue has AUTHLIM = 0 (docs/card-format.md §2.2, §2.3), so a refused try counts
        nowhere; a NAK re-selects the chip (the channel's re-activation).

        :returns: (the version the chip accepted with the right PACK, or None; the versions it
            refused or answered with another PACK).
        """
        keys = self.passwords
        pwd_auth = getattr(self.tag, "pwd_auth", None)
        if keys is None or pwd_auth is None:
            return None, ()
        uid = bytes(self.tag.uid)  # the reader's GET DATA: an exchange with the reader, no card command
        if not getattr(self.tag, "uid_from_reader", False):
            return None, ()
        refused: list[int] = []
        versions = [keys.current] + ([keys.format1] if keys.format1 not in (None, keys.current) else [])
        for version in versions:
            assert version is not None
            pw = keys.password(version, uid)
            try:
                pwd_auth(pw.pwd, expected_pack=pw.pack)
            except UnsupportedCommand:
                return None, ()  # a reader without pass-through: nothing was sent
            except TagMute:
                reactivate = getattr(getattr(self.tag, "channel", None), "reactivate", None)
                if reactivate is not None:
                    reactivate()
                return None, tuple(refused)
            except PwdAuthFailed as exc:
                # A NAK (the chip was re-selected), or another PACK: a fake that takes any password,
                # or a card whose password is half written (an interrupted issuance). Either way
                # this version does not open it; the header decides what that means (a format-1
                # card is not judged by a format-2 version's PACK).
                log.debug("PWD_AUTH under key version %d: %s", version, exc)
                refused.append(version)
                continue
            return version, tuple(refused)
        return None, tuple(refused)

    def _read_first(self, end: int) -> bytes:
        """Pages 2 .. end-1 after PWD_AUTH (two 63-page frames on an ACR122U for an NTAG215)."""
        read_first = getattr(self.tag, "read_first", None)
        if read_first is not None:
            return bytes(read_first(_FIRST_READ_PAGE, end - _FIRST_READ_PAGE))
        return self.tag.read_pages(_FIRST_READ_PAGE, end - _FIRST_READ_PAGE)

    def _parse_opened(self, area: bytes, version: int, end: int) -> RecordImage:
        """Parse pages 2.. read after the chip accepted ``version``'s password."""

        def page(n: int) -> bytes:
            return area[(n - _FIRST_READ_PAGE) * PAGE_SIZE : (n - _FIRST_READ_PAGE + 1) * PAGE_SIZE]

        self.public = parse_public_header(page(PUBLIC_HEADER_PAGE))
        if self.public is None:
            keys = self.passwords
            if keys is not None and version == keys.format1:
                self.format1_cc_size = page(3)[2]  # opened with the office password: migratable
            return self._format1_image(area[(FIRST_DATA_PAGE - _FIRST_READ_PAGE) * PAGE_SIZE :])
        if self.public.key_version != version:
            log.info("card header names key version %d, the chip took version %d's password",
                     self.public.key_version, version)
        return self._private_image(area[(PRIVATE_FIRST_PAGE - _FIRST_READ_PAGE) * PAGE_SIZE :])

    #: CC byte 2 of a format-1 card opened with the office password (:meth:`open_format1`), else None.
    format1_cc_size: int | None = None

    @property
    def possession_proven(self) -> bool:
        """Whether the chip last read answered this session's PWD_AUTH with the right PACK (datasheet §10.7).

        A format-2 card always did (:meth:`read_image` refuses it otherwise); a format-1 card only when this
        session holds the office's format-1 password. A format-1 card read without it proved nothing: its
        records are public and bound to a UID that a UID-changeable chip presents (docs/security.md, red team
        round 7). Meaningful after :meth:`read_image`.
        """
        return self.public is not None or self.format1_cc_size is not None

    def open_format1(self, head: bytes) -> None:
        """PWD_AUTH a format-1 card with the office password, when this session holds it.

        Format-1 cards carry a password derived from the office secret (docs/security.md §What the
        NTAG password stops); a migrated one (:mod:`cardlib.records.migration`) keeps its slots
        behind AUTH0 with PROT = 1, so they answer only after this. Nothing is sent without
        ``passwords.format1``.

        :param head: pages 0-10 as read (the CC on page 3 names the chip's size).
        :raises CardPasswordRefused: NAK or another PACK: not the chip that was issued (a clone).
        :raises CardlibError: (tag/transport subclasses) the card link failed.
        """
        keys = self.passwords
        pwd_auth = getattr(self.tag, "pwd_auth", None)
        if keys is None or keys.format1 is None or pwd_auth is None:
            return
        pw = keys.password(keys.format1, bytes(self.tag.uid))
        try:
            pwd_auth(pw.pwd, expected_pack=pw.pack)
        except PwdAuthFailed as exc:
            raise CardPasswordRefused(f"the chip refused the format-1 office password: {exc}") from exc
        self.format1_cc_size = head[3 * PAGE_SIZE + 2]

    def _read_head(self) -> bytes:
        """Pages 0-10 in one command (a :class:`cardlib.type2.Type2Tag` skips GET_VERSION)."""
        read_head = getattr(self.tag, "read_head", None)
        if read_head is not None:
            return bytes(read_head(PRIVATE_FIRST_PAGE))
        return self.tag.read_pages(0, PRIVATE_FIRST_PAGE)

    def authenticate(self, public: PublicHeader) -> None:
        """PWD_AUTH with this chip's derived password; the PACK must match (datasheet §8.8, §10.7).

        :raises CardPasswordUnavailable: no keys, or not the version the card names.
        :raises CardPasswordRefused: NAK or another PACK: not the chip that was issued.
        """
        if self.passwords is None:
            raise CardPasswordUnavailable("card has private pages and this session holds no card-password keys")
        pw = self.passwords.password(public.key_version, bytes(self.tag.uid))
        pwd_auth = getattr(self.tag, "pwd_auth", None)
        if pwd_auth is None:
            raise CardPasswordUnavailable("this tag link cannot send PWD_AUTH")
        try:
            pwd_auth(pw.pwd, expected_pack=pw.pack)
        except PwdAuthFailed as exc:
            raise CardPasswordRefused(f"the chip refused the card password: {exc}") from exc

    def read_state(self, now: int) -> CardState:
        """Read and verify the card (a balance check: never writes).

        :param now: terminal time, POSIX seconds (UTC), for the validity check.
        :returns: the verified state.
        :raises LayoutError: the card is not in our layout.
        :raises UidMismatch: the identity record is genuine but for another chip.
        :raises BadSignature | MalformedCose | UnknownKid | RevokedKid | AlgorithmNotAllowed:
            the identity record does not verify against an issuer key.
        :raises ClaimsError: identity claims malformed.
        :raises DeniedCard: card id or UID on the deny list.
        :raises Expired | NotYetValid: outside the validity window.
        :raises ForkDetected: two valid slots with equal seq and different bytes.
        :raises NoValidState: neither slot is valid.
        :raises UnknownKid | RevokedKid | AlgorithmNotAllowed: the *newest-looking*
            slot is signed by a key this terminal cannot accept (using the older
            slot instead would roll the card back).
        """
        return self.verify_image(self.read_image(), now)

    def verify_image(self, image: RecordImage, now: int) -> CardState:
        """Verify an already-read image (see :meth:`read_state` for the errors)."""
        uid = bytes(self.tag.uid)
        identity = self._verify_identity(image.identity, uid, now)
        valid: list[VerifiedSlot] = []
        problems: list[CorruptSlot] = []
        key_failures: list[tuple[CorruptSlot, SlotRegion]] = []
        empty: list[SlotName] = []
        for name in SlotName:
            region = image.slots[name]
            try:
                slot = self._verify_slot(region, uid, identity)
            except _EmptySlot:
                empty.append(name)
                continue
            except CorruptSlot as exc:
                problems.append(exc)
                if isinstance(exc.cause, _KEY_ERRORS):
                    key_failures.append((exc, region))
                continue
            valid.append(slot)
        if not valid:
            for failure, _ in key_failures:
                assert failure.cause is not None
                raise failure.cause
            raise NoValidState(tuple(problems))
        valid.sort(key=lambda s: (-s.claims.seq, s.name.value))
        current = valid[0]
        other = valid[1] if len(valid) > 1 else None
        if (other is not None and other.claims.seq == current.claims.seq
                and other.cose.message != current.cose.message):
            raise ForkDetected(current.claims.seq)
        for failure, failed in key_failures:
            if _may_be_newer(failed, current):
                assert failure.cause is not None
                raise failure.cause
        for problem in problems:
            log.info("card state: %s", problem)
        return CardState(uid, image, identity, current, other, tuple(problems), tuple(empty))

    def _verify_identity(self, cose: bytes, uid: bytes, now: int) -> VerifiedIdentity:
        issuers = self.trust.resolver(KeyRole.ISSUER)
        try:
            verified = verify1(cose, issuers, identity_aad(uid))
        except BadSignature:
            record_uid = _unverified_identity_uid(cose)
            if record_uid is not None and record_uid != uid:
                try:
                    verify1(cose, issuers, identity_aad(record_uid))
                except CoseError:
                    pass
                else:
                    raise UidMismatch(uid, record_uid) from None
            raise
        claims = IdentityClaims.from_cbor(verified.payload)
        if claims.uid != uid:
            raise UidMismatch(uid, claims.uid)
        self.trust.check_card(claims, verified.kid, uid)  # only now: the DeniedCard carries verified claims
        today = dt.datetime.fromtimestamp(now, dt.UTC).date()
        if today < claims.valid_from:
            raise NotYetValid(f"card valid from {claims.valid_from.isoformat()}")
        if today > claims.valid_to:
            raise Expired(f"card expired on {claims.valid_to.isoformat()}")
        return VerifiedIdentity(verified, claims)

    def _verify_slot(self, region: SlotRegion, uid: bytes, identity: VerifiedIdentity) -> VerifiedSlot:
        name = region.name.value
        try:
            cose = split_payload(region.raw)
        except LayoutError as exc:
            raise CorruptSlot(name, f"torn or garbled ({exc})", exc) from exc
        if cose is None:
            raise _EmptySlot()
        try:
            verified = verify1(cose, self.trust.resolver(KeyRole.TERMINAL), slot_aad(uid, identity.hash))
            claims = SlotClaims.from_cbor(verified.payload)
        except (CoseError, ClaimsError) as exc:
            raise CorruptSlot(name, f"does not verify: {exc}", exc) from exc
        programmes = identity.claims.programmes
        for pid, amount in claims.remaining.items():
            if pid not in programmes:
                raise CorruptSlot(name, f"remaining for programme {pid} the card is not in")
            if amount > programmes[pid].per_cycle:
                raise CorruptSlot(name, f"remaining {amount} above the entitlement of programme {pid}")
        if claims.seq == 0 and claims.prev_hash != identity.hash:
            raise CorruptSlot(name, "issuance state does not chain to the identity record")
        return VerifiedSlot(region.name, verified, claims, region)

    def nfc_counter(self) -> int:
        """The NFC counter of this RF session: the chip's mirror from the last read, else READ_CNT.

        A format-2 card provisioned with the counter mirror (:mod:`cardlib.records.counter_mirror`,
        NTAG213/215/216 datasheet §8.7) costs no command; any other card sends READ_CNT (§10.6).

        :returns: the 24-bit counter.
        :raises CardlibError: (tag subclasses) READ_CNT failed.
        """
        if self.mirrored_counter is not None:
            return self.mirrored_counter
        return self.tag.read_counter()

    # ------------------------------------------------------------------ writing

    def prepare_redemption(
        self,
        state: CardState,
        *,
        signer: Signer,
        cycle: int,
        amounts: Mapping[int, int],
        terminal_id: int,
        terminal_seq: int,
        now: int,
        nfc_counter: int | None = None,
    ) -> PendingWrite:
        """Build and sign the next state; nothing is written yet.

        :param state: the state read in this session.
        :param signer: the terminal key (software or PKCS#11).
        :param cycle: the current entitlement cycle id.
        :param amounts: programme id -> amount to redeem (programme unit, ≥ 1).
        :param terminal_id: this terminal's id (uint32).
        :param terminal_seq: journal seq of the PENDING entry (uint32).
        :param now: terminal time, POSIX seconds UTC.
        :param nfc_counter: NFC counter if already read this session; else :meth:`nfc_counter`.
        :returns: the pending write to journal, then pass to :meth:`commit`.
        :raises RedemptionRefused: unknown programme, amount < 1 or above what is left,
            or a cycle earlier than the card's.
        :raises CardlibError: (tag subclasses) READ_CNT failed; nothing was written.
        """
        remaining = state.remaining_in(cycle)
        if not amounts:
            raise RedemptionRefused("nothing to redeem")
        for pid, amount in amounts.items():
            if pid not in remaining:
                raise RedemptionRefused(f"card is not in programme {pid}")
            if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
                raise RedemptionRefused(f"amount for programme {pid} must be a positive integer")
            if amount > remaining[pid]:
                raise RedemptionRefused(
                    f"programme {pid}: {amount} asked, {remaining[pid]} left"
                )
            remaining[pid] -= amount
        counter = self.nfc_counter() if nfc_counter is None else nfc_counter
        claims = SlotClaims(
            seq=state.current.claims.seq + 1,
            cycle=cycle,
            remaining=remaining,
            terminal_id=terminal_id,
            terminal_seq=terminal_seq,
            time=now,
            nfc_counter=counter,
            prev_hash=state.current.hash,
        )
        cose = sign1_with(signer, claims.to_cbor(), slot_aad(state.uid, state.identity.hash))
        target = state.target
        region = state.image.slots[target]
        pad_payload(cose, state.layout.slot_len)  # raises LayoutError if it cannot fit
        return PendingWrite(
            uid=state.uid,
            card_id=state.identity.claims.card_id,
            slot=target,
            seq=claims.seq,
            cose=cose,
            base_hash=state.current.hash,
            amounts=dict(amounts),
            cycle=cycle,
            first_page=region.first_page,
            slot_len=state.layout.slot_len,
            old_region=region.raw,
        )

    def commit(self, pending: PendingWrite) -> CommitResult:
        """Write the target slot (changed pages only); read it back only when a WRITE went unanswered.

        Never raises for card-link failures: they become the outcome. The tag's
        ``write_pages`` must raise for any WRITE not answered by an ACK (a tear, a NAK,
        a lost or garbled answer); then the slot is read back once and compared.

        :returns: COMMITTED (every WRITE acknowledged, or read back identical after a
            link error), NOT_WRITTEN (failed before the first WRITE was sent) or
            UNCERTAIN (anything else).
        """
        if bytes(self.tag.uid) != pending.uid:
            raise WrongCard("pending write is for another chip")
        new = pending.region
        runs = _changed_runs(pending.old_region, new)
        written = 0
        sent_any = False
        try:
            for first, count in runs:
                sent_any = True
                chunk = new[first * PAGE_SIZE : (first + count) * PAGE_SIZE]
                self.tag.write_pages(pending.first_page + first, chunk)
                written += count
        except (AddressOutOfRange, UnsupportedCommand) as exc:
            # Refused by the tag layer before anything went on air.
            outcome = WriteOutcome.NOT_WRITTEN if written == 0 else WriteOutcome.UNCERTAIN
            return CommitResult(outcome, pending, written, exc)
        except CardlibError as exc:
            outcome = WriteOutcome.UNCERTAIN if sent_any else WriteOutcome.NOT_WRITTEN
            log.info("slot %s write stopped (%s): %s", pending.slot.value, outcome.value, exc)
            if sent_any and self._reads_back(pending, new):
                # A reader error after a WRITE says nothing about the card: read, never re-send.
                return CommitResult(WriteOutcome.COMMITTED, pending, written, exc)
            return CommitResult(outcome, pending, written, exc)
        # Every WRITE was acknowledged: an NTAG21x sends the ACK only once the page is
        # programmed (NTAG213/215/216 datasheet §10.4), and a PC/SC UPDATE BINARY's SW 9000
        # means the reader received that ACK, so the slot holds ``new``: no read-back.
        return CommitResult(WriteOutcome.COMMITTED, pending, written)

    def _reads_back(self, pending: PendingWrite, new: bytes) -> bool:
        """After a link error during a write: one read of the target slot, True when it holds ``new``.

        Nothing is written again: the outcome of a WRITE whose answer was lost is unknown until
        read (NTAG21x datasheet §10.4: the chip may have programmed the page before the
        ACK was lost). Any error on the read leaves it unknown (False).
        """
        try:
            back = self.tag.read_pages(pending.first_page, pending.slot_len // PAGE_SIZE)
        except CardlibError:
            return False
        return bytes(back) == new

    # ------------------------------------------------------------------ recovery

    def recover(
        self, pending: PendingWrite, now: int, *, repair: bool = True
    ) -> RecoveryResult:
        """Decide a journalled UNCERTAIN write on the card's next presentation.

        FINISHED when a valid slot holds exactly the intended bytes, or when the
        current state follows directly from it (prev_hash); VOIDED when the card's
        state never became it (current seq below it, or a different state with
        that seq). With ``repair``, a torn/garbled target slot is overwritten with
        a copy of the current state, so no remnant of a voided state stays on the card.

        :param pending: what was journalled before the write.
        :param now: terminal time, POSIX seconds UTC.
        :raises WrongCard: another chip or card id.
        :raises RecordError: (subclasses, see :meth:`read_state`) the card does not verify.
        """
        if bytes(self.tag.uid) != pending.uid:
            raise WrongCard("pending write was journalled for another chip")
        state = self.read_state(now)
        if state.identity.claims.card_id != pending.card_id:
            raise WrongCard("pending write was journalled for another card id")
        decision, note = _decide(state, pending)
        repaired = False
        if repair and decision is RecoveryDecision.VOIDED:
            target_region = state.image.slots[state.target]
            if state.target not in state.empty and state.other is None:
                copy = PendingWrite(
                    uid=state.uid,
                    card_id=pending.card_id,
                    slot=state.target,
                    seq=state.current.claims.seq,
                    cose=state.current.cose.message,
                    base_hash=state.current.claims.prev_hash,
                    amounts={},
                    cycle=state.current.claims.cycle,
                    first_page=target_region.first_page,
                    slot_len=state.layout.slot_len,
                    old_region=target_region.raw,
                )
                result = self.commit(copy)
                repaired = result.outcome is WriteOutcome.COMMITTED
                if repaired:
                    state = self.read_state(now)
        return RecoveryResult(decision, state, repaired, note)


class _EmptySlot(Exception):
    """Internal: an all-zero slot payload (never written)."""


def _decide(state: CardState, pending: PendingWrite) -> tuple[RecoveryDecision, str]:
    slots = [state.current] + ([state.other] if state.other is not None else [])
    for slot in slots:
        if slot.cose.message == pending.cose:
            return RecoveryDecision.FINISHED, f"state {pending.seq} is on the card (slot {slot.name.value})"
    for slot in slots:
        if slot.claims.seq == pending.seq:
            return RecoveryDecision.VOIDED, f"seq {pending.seq} on the card is another state"
    cur = state.current.claims
    if cur.seq < pending.seq:
        note = f"card still at seq {cur.seq}; state {pending.seq} never landed"
        if cur.seq < pending.seq - 1 or state.current.hash != pending.base_hash:
            note += " (card is not at the base state: rollback or clone suspected)"
        return RecoveryDecision.VOIDED, note
    if cur.seq == pending.seq + 1:
        if cur.prev_hash == pending.new_hash:
            return RecoveryDecision.FINISHED, f"seq {cur.seq} chains to state {pending.seq}"
        return RecoveryDecision.VOIDED, f"seq {cur.seq} chains to another state {pending.seq}"
    return RecoveryDecision.DEFERRED, f"card moved on to seq {cur.seq}; server reconciliation decides"


def _changed_runs(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """Runs (first page index, page count) of pages where ``new`` differs from ``old``."""
    runs: list[tuple[int, int]] = []
    pages = len(new) // PAGE_SIZE
    start: int | None = None
    for i in range(pages):
        same = old[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] == new[i * PAGE_SIZE : (i + 1) * PAGE_SIZE]
        if not same and start is None:
            start = i
        elif same and start is not None:
            runs.append((start, i - start))
            start = None
    if start is not None:
        runs.append((start, pages - start))
    return runs


def _unverified_identity_uid(cose: bytes) -> bytes | None:
    """The uid claim of an identity record whose signature failed (diagnosis only)."""
    try:
        body = cbor2.loads(cose)
        payload = body.value[2] if isinstance(body, cbor2.CBORTag) else body[2]
        uid = cbor2.loads(payload).get(8)
    except (cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, IndexError, KeyError, EOFError):
        return None
    return uid if isinstance(uid, bytes) and len(uid) == 7 else None


def _unverified_seq(region: SlotRegion) -> int | None:
    """The seq claim of a slot whose key could not be accepted (to avoid rolling back)."""
    payload = _unverified_payload(region)
    if payload is None:
        return None
    try:
        return SlotClaims.from_cbor(payload).seq
    except (ClaimsError, cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, IndexError, EOFError):
        return None

def _may_be_newer(region: SlotRegion, current: VerifiedSlot) -> bool:
    """True when a slot whose key cannot be accepted may hold a state newer than ``current``.

    Its seq at or above the current one says so (using the older slot would roll the card
    back), unless it carries the current state's very claims: a copy of the current state
    torn by a later WRITE that changed only its key id (a format-2 card's genesis copy in
    slot B, or a repaired slot, docs/card-format.md §6) holds nothing newer.
    """
    seq = _unverified_seq(region)
    if seq is None or seq < current.claims.seq:
        return False
    return not (seq == current.claims.seq and _unverified_payload(region) == current.cose.payload)


def _unverified_payload(region: SlotRegion) -> bytes | None:
    """The payload bytes of a slot whose signature could not be checked (comparison only)."""
    try:
        cose = split_payload(region.raw)
        if cose is None:
            return None
        body = cbor2.loads(cose)
        payload = body.value[2] if isinstance(body, cbor2.CBORTag) else body[2]
    except (LayoutError, cbor2.CBORDecodeError, ValueError, TypeError, AttributeError, IndexError, EOFError):
        return None
    return payload if isinstance(payload, bytes) else None


