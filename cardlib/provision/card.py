"""Turn one blank NTAG215/216 into a beneficiary card, step by step, resumably.

Steps (docs/keys-and-provisioning.md §Provisioning; docs/design.md §Card protection; docs/card-format.md §2):

1. **check**: GET_VERSION says NTAG215/216 (NTAG21x datasheet §10.1); the NXP originality
   signature verifies for the UID (READ_SIG, §10.8; AN11350); the chip is *blank* (factory
   CC, no lock bits, no password), *re-usable* (unlocked, no password, foreign NDEF data), or
   *ours, unfinished* (our password opens it, or it carries our unlocked identity).
2. **write**: CC (T2T 1.0 §2.2) if missing, then the card image (identity record + genesis
   state in slot A + empty slot B, :func:`cardlib.records.issuance.issue_card_image`); for a
   format-2 card with a PIN, the PIN record (claim 9 version 3, :mod:`cardlib.records.pin`) on
   the last two user pages at epoch 1, after checking before any WRITE that it fits. The
   identity payload is padded so slot A starts at page 48: pages 4-47 are then exactly the
   static-lock pages plus two 16-page dynamic-lock granules (NTAG215/216 §8.5.2-3).
3. **lock**: static lock bits L-CC, L4..L15 and their block-lock bits; dynamic lock bits of
   the granules that hold only identity bytes (16-31, 32-47) and the block-lock bit over them.
4. **protect**: PWD/PACK = :func:`cardlib.provision.password.derive_password`, AUTHLIM=0, then
   AUTH0 last. Format 1: ACCESS = NFC_CNT_EN with PROT=0 and AUTH0 = the dynamic lock page,
   so the password guards only the dynamic lock bytes and the configuration. Format 2
   (``StationContext.card_format = 2``, docs/card-format.md §2.2): ACCESS = NFC_CNT_EN | PROT
   and AUTH0 = page 11, so identity and slots can be neither read nor written without the
   password, which terminals derive from the provincial key whose version is on page 10.
5. **verify**: read everything back: the image verifies as a card (issuer key, genesis
   state) against the station's trust bundle, lock bits and configuration are as written,
   and the derived password opens the chip with the expected PACK.

Every step is idempotent, so an interrupted card presented again is finished under the
same card id (the identity already on it is kept if it verifies).
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from cardlib.keys.signer import Signer, spki_der
from cardlib.provision.errors import (
    AlreadyIssued,
    ChipNotBlank,
    CounterfeitChip,
    IssuanceInterrupted,
    ReadBackMismatch,
    StationIdMismatch,
    StationInputError,
    StationKeyNotTrusted,
    WrongChip,
)
from cardlib.provision.households import Household
from cardlib.provision.password import MIN_SECRET_BYTES, CardPassword, derive_password
from cardlib.provision.profile import Profile
from cardlib.records.access import CardPasswordKeys
from cardlib.records.bundle import KeyRole, TrustBundle
from cardlib.records.claims import (
    PIN_V2_SALT_BYTES,
    IdentityClaims,
    PinVerifier,
    check_pin_digits,
    state_hash,
    terminal_id_of,
)
from cardlib.records.counter_mirror import cfg0_mirror_bytes, mirror_fits
from cardlib.records.errors import CoseError, LayoutError, RecordError, RevokedKid
from cardlib.records.issuance import issue_card_image
from cardlib.records.layout import (
    FIRST_DATA_PAGE,
    PAGE_SIZE,
    PRIVATE_FIRST_PAGE,
    CardLayout,
    SlotName,
    build_image,
    build_private_image,
    build_public_area,
)
from cardlib.records.pin import (
    PIN_RECORD_PAGES,
    encode_failures,
    make_record,
    pin_record_fits,
    pin_record_page,
    read_record,
)
from cardlib.records.session import NTAG215_DATA_PAGES, CardSession
from cardlib.transport.errors import SessionLost
from cardlib.type2.chip import ChipType
from cardlib.type2.errors import Nak, OriginalityError, PwdAuthFailed, TagError
from cardlib.type2.originality import NXP_NTAG21X_PUBLIC_KEY, verify_originality
from cardlib.type2.tag import Type2Tag

_log = logging.getLogger(__name__)

SUPPORTED_CHIPS = (ChipType.NTAG215, ChipType.NTAG216)
CC_PAGE = 3
STATIC_LOCK_PAGE = 2
#: Dynamic lock granule on NTAG215/216: one lock bit per 16 pages from page 16 (datasheet §8.5.3).
PAGES_PER_DYNAMIC_LOCK_BIT = 16
FIRST_DYNAMIC_LOCK_PAGE = 16
#: Slot A payload starts here so that pages 4-47 (identity only) lock exactly.
SLOT_A_ALIGNED_PAGE = 48
#: Dynamic lock bits per block-lock bit on NTAG215/216 (datasheet §8.5.3).
LOCK_BITS_PER_BLOCK_BIT = 2
FACTORY_AUTH0 = 0xFF
FACTORY_CC = {ChipType.NTAG215: bytes.fromhex("E1103E00"), ChipType.NTAG216: bytes.fromhex("E1106D00")}
#: scrypt cost of the PIN verifier issued today (N = 2^14, r = 8, p = 1: 16 MiB, ~60 ms per check; docs/security.md).
PIN_SCRYPT_LOG2_N = 14


class StaticLock(enum.IntFlag):
    """Static lock byte 0 (page 2 byte 2) bits; byte 1 holds L8..L15 (datasheet §8.5.2)."""

    BL_CC = 0x01
    BL_9_4 = 0x02
    BL_15_10 = 0x04
    L_CC = 0x08
    L_4 = 0x10
    L_5 = 0x20
    L_6 = 0x40
    L_7 = 0x80


class Access(enum.IntFlag):
    """ACCESS byte (CFG1 byte 0) bits (datasheet §8.5.7, Table 12); AUTHLIM = bits 2-0."""

    PROT = 0x80
    CFGLCK = 0x40
    NFC_CNT_EN = 0x10
    NFC_CNT_PWD_PROT = 0x08


AUTHLIM_MASK = 0x07
STATIC_LOCK_ALL = (
    bytes((StaticLock.L_CC | StaticLock.L_4 | StaticLock.L_5 | StaticLock.L_6 | StaticLock.L_7
           | StaticLock.BL_CC | StaticLock.BL_9_4 | StaticLock.BL_15_10, 0xFF))
)


class Step(str, enum.Enum):
    CHECK = "check chip"
    WRITE = "write image"
    LOCK = "lock identity pages"
    PROTECT = "set password"
    VERIFY = "read back and verify"


class ChipState(str, enum.Enum):
    BLANK = "blank"
    REUSABLE = "re-usable"
    OURS_UNFINISHED = "ours, unfinished"
    OURS_COMPLETE = "ours, locked and protected"


@dataclass(frozen=True)
class ChipCheck:
    """Outcome of step 1. :ivar uid: 7 bytes. :ivar existing_card_id: card id of our identity on it, if any."""

    uid: bytes
    chip: ChipType
    state: ChipState
    existing_card_id: bytes | None = None


@dataclass(frozen=True)
class StationContext:
    """Everything the issuing station needs.

    :ivar issuer: signs identity records (issuer key; file or PKCS#11).
    :ivar station: the station's terminal key, signs genesis states (listed in the bundle
        as a terminal key).
    :ivar station_id: slot ``terminal_id`` (uint32) of genesis states; None (default
        in the CLI) = the station key's kid read big-endian (§conventions, :attr:`terminal_id`),
        the only value allowed: another is refused (:class:`StationIdMismatch`).
    :ivar trust: the current trust bundle (read-back verification uses it).
    :ivar password_secret: ≥ 16 bytes; the per-card password is derived from it (for format 2
        the provincial card-password key of version ``password_key_version``).
    :ivar originality_key: secp128r1 key for READ_SIG (NXP's by default).
    :ivar card_format: 1 (slots writable without a password) or 2 (private pages, docs/card-format.md §2.2).
    :ivar password_key_version: the key version written on page 10 of format-2 cards (1..255).
    :raises StationInputError: a bad card format or a short password secret.
    :raises StationIdMismatch: ``station_id`` is not the station key's own slot terminal id.
    :raises StationKeyNotTrusted: ``trust`` does not accept the station or issuer key
        (:func:`check_station_keys`): refused here, before any card is touched.
    """

    issuer: Signer
    station: Signer
    station_id: int | None
    trust: TrustBundle
    profile: Profile
    password_secret: bytes = field(repr=False)
    originality_key: bytes = NXP_NTAG21X_PUBLIC_KEY
    card_format: int = 1
    password_key_version: int = 1

    @property
    def passwords(self) -> CardPasswordKeys:
        """The station's card-password key as a one-version key ring (opens format-2 cards)."""
        return CardPasswordKeys({self.password_key_version: self.password_secret}, self.password_key_version)

    def __post_init__(self) -> None:
        if self.card_format not in (1, 2):
            raise StationInputError(f"card format {self.card_format} is neither 1 nor 2")
        if len(self.password_secret) < MIN_SECRET_BYTES:
            raise StationInputError(
                f"card-password secret is {len(self.password_secret)} bytes; it needs at least "
                f"{MIN_SECRET_BYTES} random bytes (e.g. `head -c 32 /dev/urandom > pwd.secret`)")
        check_station_keys(self.trust, self.issuer, self.station)
        own = terminal_id_of(self.station.kid)
        if self.station_id is not None and self.station_id != own:
            raise StationIdMismatch(
                f"--station-id {self.station_id} is not this station's: genesis states carry the station key's "
                f"slot terminal id, its kid {self.station.kid.hex()} read big-endian ({own}); leave the option "
                f"out (docs/card-format.md §4); no card was touched")

    @property
    def terminal_id(self) -> int:
        """The uint32 ``terminal_id`` written into genesis slots (docs/card-format.md §conventions)."""
        return terminal_id_of(self.station.kid) if self.station_id is None else self.station_id


#: What a station whose key the bundle does not accept must do (docs/keys-and-provisioning.md).
_ENROL_HINT = ("enrol the station with the server (docs/keys-and-provisioning.md §Enrolling a provisioning "
               "station) and give the bundle published after its approval with --bundle (offline: `huma keys bundle "
               "--terminal-cert` with its certificate); no card was touched")


def check_station_keys(trust: TrustBundle, issuer: Signer, station: Signer) -> None:
    """Refuse, before any card, keys whose records the read-back (:func:`verify_card`) and counters would refuse.

    The same resolvers :class:`cardlib.records.session.CardSession` verifies a card with:
    ``trust.resolver(KeyRole.TERMINAL)`` for the station key that signs genesis states and
    ``trust.resolver(KeyRole.ISSUER)`` for the issuer key that signs identities (active and
    retired keys pass, revoked ones and keys of another role do not); the listed public key
    must be the signer's own.

    :param trust: the station's trust bundle. :param issuer: the issuer key's signer.
    :param station: the station's terminal key's signer.
    :raises StationKeyNotTrusted: a key the bundle does not accept (one line naming its kid and what to do).
    """
    for what, signer, role, hint in (
        ("station key", station, KeyRole.TERMINAL, _ENROL_HINT),
        ("issuer key", issuer, KeyRole.ISSUER, "publish a bundle that lists the keystore's active issuer key and "
                                               "give it with --bundle; no card was touched"),
    ):
        kid = signer.kid.hex()
        try:
            listed = trust.resolver(role)(signer.kid)
        except RevokedKid:
            raise StationKeyNotTrusted(f"{what} {kid} is revoked in trust bundle v{trust.version}: its records "
                                       f"would not verify on any counter; {hint}") from None
        except CoseError:
            raise StationKeyNotTrusted(f"{what} {kid} is not a{'n' if role is KeyRole.ISSUER else ''} "
                                       f"{role.name.lower()} key of trust bundle v{trust.version}: cards signed with "
                                       f"it would not verify; {hint}") from None
        if spki_der(listed.public_key) != spki_der(signer.public_key):
            raise StationKeyNotTrusted(f"{what} {kid}: trust bundle v{trust.version} lists another public key "
                                       f"under this kid; {hint}")


@dataclass(frozen=True)
class PersonalisedCard:
    """A finished card. :ivar identity_hash: 8-byte state_hash of the identity COSE.
    :ivar identity_cose: the identity record's exact COSE_Sign1 bytes as read back.
    :ivar genesis_cose: the genesis state's exact COSE_Sign1 bytes as read back (for the issuance file)."""

    card_id: bytes
    uid: bytes
    identity_hash: bytes
    issuer_kid: bytes
    layout: CardLayout
    identity_cose: bytes = b""
    genesis_cose: bytes = b""


def _cfg(tag: Type2Tag) -> tuple[int, int, int, int]:
    """(CFG0 page, CFG1 page, PWD page, PACK page) of the identified chip."""
    chip = tag.identify()
    assert chip.cfg_page is not None and chip.pwd_page is not None and chip.pack_page is not None
    return chip.cfg_page, chip.cfg_page + 1, chip.pwd_page, chip.pack_page


def check_chip(tag: Type2Tag, ctx: StationContext) -> ChipCheck:
    """Step 1: identify, check originality and decide whether we may write this chip.

    :raises WrongChip: not an NTAG215/216.
    :raises CounterfeitChip: the originality signature does not verify.
    (A chip carrying our card, finished or not, is *not* refused here: only the batch journal
    can tell whether it is the interrupted card to finish or a card issued before.)
    :raises ChipNotBlank: locks, a foreign password or a non-standard CC.
    """
    chip = tag.identify()
    uid = tag.uid
    if chip.chip not in SUPPORTED_CHIPS:
        raise WrongChip(f"chip is {chip.chip.value}; cards need NTAG215 or NTAG216", uid)
    try:
        verify_originality(uid, tag.read_signature(), ctx.originality_key)
    except OriginalityError as exc:
        raise CounterfeitChip(f"chip {uid.hex().upper()} fails the NXP originality check: {exc}", uid) from exc
    cfg0_page, _, _, _ = _cfg(tag)
    head = tag.read_pages(0, PRIVATE_FIRST_PAGE)
    if head[40:42] == b"HB":
        # A format-2 card: configuration and lock pages are read-protected. Ours open with our
        # password (AUTHLIM 0, so a wrong guess on a foreign chip cannot count against it).
        pw = derive_password(ctx.password_secret, uid)
        try:
            tag.pwd_auth(pw.pwd, expected_pack=pw.pack)
        except PwdAuthFailed as exc:
            raise ChipNotBlank("chip has private pages under a password that is not ours", uid) from exc
    cfg = tag.read_pages(cfg0_page, 2)
    auth0, access = cfg[3], cfg[4]
    locks = tag.read_lock_bits()
    cc = head[CC_PAGE * PAGE_SIZE:(CC_PAGE + 1) * PAGE_SIZE]
    existing = _our_identity(tag, ctx) if _ours(head) else None
    if auth0 <= cfg0_page:
        # Someone set a password. Try ours only when a wrong guess cannot count (AUTHLIM 0).
        if access & AUTHLIM_MASK:
            raise ChipNotBlank(f"chip is password-protected with AUTHLIM {access & AUTHLIM_MASK}", uid)
        pw = derive_password(ctx.password_secret, uid)
        try:
            tag.pwd_auth(pw.pwd, expected_pack=pw.pack)
        except PwdAuthFailed as exc:
            raise ChipNotBlank("chip is protected by a password that is not ours", uid) from exc
        if existing is not None and _fully_locked(locks.static, locks.dynamic):
            return ChipCheck(uid, chip.chip, ChipState.OURS_COMPLETE, existing)
        return ChipCheck(uid, chip.chip, ChipState.OURS_UNFINISHED, existing)
    if locks.any_user_lock or any(locks.static):
        if existing is not None:
            return ChipCheck(uid, chip.chip, ChipState.OURS_UNFINISHED, existing)
        raise ChipNotBlank(f"chip has lock bits set (static {locks.static.hex()}, dynamic {locks.dynamic.hex()})", uid)
    if any(cc) and cc != FACTORY_CC[chip.chip]:
        raise ChipNotBlank(f"CC is {cc.hex()}, not the factory {FACTORY_CC[chip.chip].hex()}", uid)
    if existing is not None:
        return ChipCheck(uid, chip.chip, ChipState.OURS_UNFINISHED, existing)
    data = tag.read_pages(FIRST_DATA_PAGE, 4)
    blank = data[:3] == b"\x03\x00\xfe" or not any(data)
    return ChipCheck(uid, chip.chip, ChipState.BLANK if blank else ChipState.REUSABLE)


def _ours(head: bytes) -> bool:
    """Pages 0-10 hold a format-1 NDEF TLV (``03 FF``) or a format-2 public header (``HB``)."""
    return head[16:18] == b"\x03\xff" or head[40:42] == b"HB"


def _fully_locked(static: bytes, dynamic: bytes) -> bool:
    """True when our static locks and at least the first dynamic granule are set (issued card)."""
    want = STATIC_LOCK_ALL
    return bytes(a & b for a, b in zip(static, want, strict=False)) == want and bool(dynamic[0] & 0x01)


def _our_identity(tag: Type2Tag, ctx: StationContext) -> bytes | None:
    """Card id of a verifying identity of ours on this chip, else None (never raises RecordError)."""
    try:
        state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(_now())
    except (RecordError, TagError):
        return None
    return state.identity.claims.card_id


def _now() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


def _locked_end(slot_a_first_page: int) -> int:
    """First page *not* locked by :func:`dynamic_lock_bytes` (16-page granules below slot A)."""
    granules = max(0, (slot_a_first_page - FIRST_DYNAMIC_LOCK_PAGE) // PAGES_PER_DYNAMIC_LOCK_BIT)
    return FIRST_DYNAMIC_LOCK_PAGE + granules * PAGES_PER_DYNAMIC_LOCK_BIT


def _aligned_layout(layout: CardLayout, data_area: int) -> CardLayout:
    """Pad the identity so that slot A's payload starts at :data:`SLOT_A_ALIGNED_PAGE` when it
    would start earlier: the identity payload then ends inside the lockable pages 4-47.

    :raises ChipNotBlank: never; logs a warning when the identity payload reaches past the
        lockable pages (it stays signed, but those pages cannot be locked without locking slot A).
    """
    first_a = layout.slot_first_page(SlotName.A)
    if first_a < SLOT_A_ALIGNED_PAGE:
        padded = CardLayout(layout.identity_len + (SLOT_A_ALIGNED_PAGE - first_a) * PAGE_SIZE, layout.slot_len)
        if padded.image_len <= data_area:
            layout = padded
    if layout.identity_pages[-1] >= _locked_end(layout.slot_first_page(SlotName.A)):
        _log.warning("identity payload reaches page %d: pages from %d cannot be locked without locking slot A",
                     layout.identity_pages[-1], _locked_end(layout.slot_first_page(SlotName.A)))
    return layout


def dynamic_lock_bytes(slot_a_first_page: int) -> bytes:
    """Dynamic lock bytes locking every 16-page granule below slot A, plus their block-lock bits.

    :returns: 3 bytes (lock bits little-endian in bytes 0-1, BL bits in byte 2; §8.5.3).
    """
    granules = max(0, (slot_a_first_page - FIRST_DYNAMIC_LOCK_PAGE) // PAGES_PER_DYNAMIC_LOCK_BIT)
    bits = (1 << granules) - 1
    bl = 0
    for b in range(granules // LOCK_BITS_PER_BLOCK_BIT):
        bl |= 1 << b
    return bits.to_bytes(2, "little") + bytes((bl,))


def build_identity(ctx: StationContext, household: Household, card_id: bytes, uid: bytes, today: dt.date,
                   pin: str | None = None) -> IdentityClaims:
    """Identity claims for a household from the station profile (programmes of the row only)."""
    progs = {pid: ctx.profile.programmes[pid] for pid in household.programmes}
    caps = {pid: ctx.profile.offline_cap[pid] for pid in household.programmes}
    verifier: PinVerifier | None = None
    if pin and ctx.card_format == 2:
        # Claim 9 version 3: the cost is signed, the PIN goes into the card's keyed PIN record
        # (cardlib.records.pin), which an office can rewrite (docs/card-format.md §3.2).
        check_pin_digits(pin)
        verifier = PinVerifier.v3(log2_n=PIN_SCRYPT_LOG2_N)
    elif pin:
        verifier = PinVerifier.derive_v2(pin, card_id, uid, secrets.token_bytes(PIN_V2_SALT_BYTES),
                                         log2_n=PIN_SCRYPT_LOG2_N)
    return IdentityClaims(
        card_id=card_id, household_ref=household.household_ref, region=household.region,
        programmes=progs, valid_from=today, valid_to=today + dt.timedelta(days=ctx.profile.valid_days),
        offline_cap=caps, uid=uid, pin=verifier,
    )


def personalise(
    tag: Type2Tag,
    ctx: StationContext,
    household: Household,
    card_id: bytes,
    check: ChipCheck,
    *,
    remaining: Mapping[int, int] | None = None,
    pin: str | None = None,
    now: int | None = None,
    on_step: Callable[[Step], None] | None = None,
) -> PersonalisedCard:
    """Steps 2-5 on a chip that passed :func:`check_chip`. Journal the card id *before* calling.

    :param card_id: 8 bytes; on a resumed chip, the card id already journalled for it.
    :param remaining: for a re-issued card: the remaining entitlement per programme that the
        genesis state carries (default: the full per-cycle entitlement).
    :param pin: optional 6-digit PIN typed by the beneficiary (or read from --pin-file by the CLI); never stored.
    :raises IssuanceInterrupted: the card left the field; journal it as interrupted.
    :raises ReadBackMismatch: read-back differs from what was written.
    :raises ChipNotBlank: the chip refused a write (a page we must write is locked).
    """
    now = _now() if now is None else now
    uid = check.uid
    step = Step.WRITE
    pw = derive_password(ctx.password_secret, uid)

    def enter(s: Step) -> None:
        nonlocal step
        step = s
        _log.debug("card %s: %s", uid.hex(), s.value)
        if on_step is not None:
            on_step(s)

    try:
        chip = tag.identify()
        data_area = FACTORY_CC[chip.chip][2] * 8
        enter(Step.WRITE)
        identity_cose: bytes
        pin_claim: PinVerifier | None
        if check.existing_card_id is not None:
            if check.existing_card_id != card_id:
                raise AlreadyIssued(f"chip carries card {check.existing_card_id.hex()}, expected {card_id.hex()}", uid)
            current = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(now)
            identity_cose = current.identity.cose.message
            layout = current.image.layout
            pin_claim = current.identity.claims.pin
            _log.info("card %s: identity already written, resuming", card_id.hex())
        else:
            identity = build_identity(ctx, household, card_id, uid, dt.datetime.fromtimestamp(now, dt.UTC).date(), pin)
            pin_claim = identity.pin
            issued = issue_card_image(identity, ctx.issuer, ctx.station, cycle=ctx.profile.cycle_at(now),
                                      now=now, station_id=ctx.terminal_id)
            genesis = issued.genesis_cose
            if remaining is not None:
                genesis = _reissue_genesis(ctx, issued.identity_cose, uid, remaining, now)
            if ctx.card_format == 2:
                # Slot B holds a copy of the genesis state, so the first redemption rewrites only
                # the pages that differ, like every later one (docs/card-format.md §7).
                layout = CardLayout(issued.layout.identity_len, issued.layout.slot_len, 2)
                layout.check_fits(data_area)
                if pin_claim is not None and pin_claim.on_card and not pin_record_fits(layout, chip.user_pages,
                                                                                       data_area):
                    # Checked before the first WRITE: a card that cannot hold its PIN record is never started.
                    raise LayoutError(f"card image ends at page {layout.end_page - 1}: no room for the failed-PIN "
                                      f"count and the PIN record (pages {chip.user_pages.stop - PIN_RECORD_PAGES}"
                                      f"-{chip.user_pages.stop - 1}) on {chip.chip.value}")
                image = build_public_area(ctx.password_key_version) + build_private_image(
                    layout, issued.identity_cose, genesis, genesis) + encode_failures(0)  # the PIN page
            else:
                layout = _aligned_layout(issued.layout, data_area)
                layout.check_fits(data_area)
                image = build_image(layout, issued.identity_cose, genesis, None)
            identity_cose = issued.identity_cose
            cc = tag.read_pages(CC_PAGE, 1)
            if not any(cc):
                tag.channel.write4(CC_PAGE, FACTORY_CC[chip.chip])
            padded = image + bytes(-len(image) % PAGE_SIZE)
            pages = len(padded) // PAGE_SIZE
            # Write only pages that differ (a blank chip's zero pages, e.g. empty slot B,
            # need no WRITE): one FAST_READ range instead of ~35 WRITEs.
            before = tag.read_pages(FIRST_DATA_PAGE, pages)
            for i in range(pages):
                chunk = padded[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]
                if before[i * PAGE_SIZE:(i + 1) * PAGE_SIZE] != chunk:
                    tag.write_page(FIRST_DATA_PAGE + i, chunk)
            if tag.read_pages(FIRST_DATA_PAGE, pages) != padded:
                raise ReadBackMismatch(f"card {card_id.hex()}: image read back differs")
        if layout.version == 2 and pin_claim is not None and pin_claim.on_card:
            _write_pin_record(tag, ctx, card_id, uid, pin_claim, pin)

        enter(Step.LOCK)
        slot_a = layout.slot_first_page(SlotName.A)
        auth0 = tag.read_pages(_cfg(tag)[0], 1)[3]
        if auth0 <= _cfg(tag)[0]:
            tag.pwd_auth(pw.pwd, expected_pack=pw.pack)  # resumed after protect: config needs auth
        tag.set_lock_bits(STATIC_LOCK_ALL, dynamic_lock_bytes(slot_a), irreversible=True)

        enter(Step.PROTECT)
        mirror = layout.version == 2 and data_area >= NTAG215_DATA_PAGES * PAGE_SIZE and mirror_fits(
            layout, NTAG215_DATA_PAGES)  # the NFC counter comes with the private read: no READ_CNT
        _protect(tag, pw, private=layout.version == 2, counter_mirror=mirror)

        enter(Step.VERIFY)
        result = verify_card(tag, ctx, card_id, identity_cose, layout, now)
        if layout.version == 2 and pin_claim is not None and pin_claim.on_card:
            assert pin is not None  # _write_pin_record refused a v3 card without one
            if read_record(tag) != make_record(ctx.passwords.pin_key(ctx.password_key_version, uid), pin_claim, pin,
                                               card_id, uid, 1):
                raise ReadBackMismatch(f"card {card_id.hex()}: PIN record read back differs")
        _log.info("issued card %s on chip %s", card_id.hex(), uid.hex())
        return result
    except SessionLost as exc:
        raise IssuanceInterrupted(uid, card_id, step.value) from exc
    except Nak as exc:
        raise ChipNotBlank(f"chip refused a write during '{step.value}': {exc}", uid) from exc


def _write_pin_record(tag: Type2Tag, ctx: StationContext, card_id: bytes, uid: bytes, claim: PinVerifier,
                      pin: str | None) -> None:
    """Write the PIN record of a version-3 PIN claim at epoch 1 (cardlib.records.pin), unless it is there.

    :raises StationInputError: a resumed card started with a PIN and none typed now.
    """
    if pin is None:
        raise StationInputError(f"card {card_id.hex()} was started with a PIN: give --pin and type it again")
    record = make_record(ctx.passwords.pin_key(ctx.password_key_version, uid), claim, pin, card_id, uid, 1)
    if read_record(tag) != record:
        tag.write_pages(pin_record_page(tag), record.encode())


def _reissue_genesis(
    ctx: StationContext, identity_cose: bytes, uid: bytes, remaining: Mapping[int, int], now: int
) -> bytes:
    """Genesis state carrying a lost card's remaining entitlement (re-issue)."""
    from cardlib.keys.signer import sign1_with
    from cardlib.records.claims import SlotClaims
    from cardlib.records.session import slot_aad

    id_hash = state_hash(identity_cose)
    genesis = SlotClaims(seq=0, cycle=ctx.profile.cycle_at(now), remaining=dict(remaining), terminal_id=ctx.terminal_id,
                         terminal_seq=0, time=now, nfc_counter=0, prev_hash=id_hash)
    return sign1_with(ctx.station, genesis.to_cbor(), slot_aad(uid, id_hash))


def _protection(tag: Type2Tag, private: bool) -> tuple[int, int]:
    """(AUTH0, ACCESS) of an issued card: format 2 read- and write-protects from page 11."""
    if private:
        return PRIVATE_FIRST_PAGE, Access.NFC_CNT_EN | Access.PROT
    dyn_lock_page = tag.identify().dynamic_lock_page
    assert dyn_lock_page is not None
    return dyn_lock_page, Access.NFC_CNT_EN


def _protect(tag: Type2Tag, pw: CardPassword, *, private: bool = False, counter_mirror: bool = False) -> None:
    """Step 4: PWD, PACK, ACCESS (NFC_CNT_EN, PROT = ``private``, AUTHLIM=0), then AUTH0 last (§8.8).

    :param counter_mirror: also set MIRROR_CONF/MIRROR_BYTE/MIRROR_PAGE (CFG0, datasheet §8.7)
        so the chip mirrors its NFC counter on the end of the data area
        (:mod:`cardlib.records.counter_mirror`).
    """
    cfg0, cfg1, pwd_page, pack_page = _cfg(tag)
    auth0, access = _protection(tag, private)
    current = tag.read_pages(cfg0, 2)
    tag.channel.write4(pwd_page, pw.pwd)
    tag.channel.write4(pack_page, pw.pack + b"\x00\x00")
    tag.channel.write4(cfg1, bytes((access,)) + current[5:8])
    mirror, mirror_page = cfg0_mirror_bytes(NTAG215_DATA_PAGES) if counter_mirror else (current[0], current[2])
    tag.channel.write4(cfg0, bytes((mirror, current[1], mirror_page, auth0)))


def verify_card(tag: Type2Tag, ctx: StationContext, card_id: bytes, identity_cose: bytes, layout: CardLayout,
                now: int) -> PersonalisedCard:
    """Step 5: the card as a terminal sees it, plus locks and configuration.

    :raises ReadBackMismatch: any difference.
    """
    uid = tag.uid
    try:
        state = CardSession(tag, ctx.trust, passwords=ctx.passwords).read_state(now)
    except RecordError as exc:
        raise ReadBackMismatch(f"card {card_id.hex()} does not verify after issuance: {exc}") from exc
    if state.identity.claims.card_id != card_id or state.identity.cose.message != identity_cose:
        raise ReadBackMismatch(f"card {card_id.hex()}: identity read back differs")
    if state.current.claims.seq != 0:
        raise ReadBackMismatch(f"card {card_id.hex()}: genesis state expected, found seq {state.current.claims.seq}")
    locks = tag.read_lock_bits()
    want_dyn = dynamic_lock_bytes(layout.slot_first_page(SlotName.A))
    if bytes(a & b for a, b in zip(locks.static, STATIC_LOCK_ALL, strict=False)) != STATIC_LOCK_ALL or \
            bytes(a & b for a, b in zip(locks.dynamic, want_dyn, strict=False)) != want_dyn:
        raise ReadBackMismatch(f"card {card_id.hex()}: lock bits read back {locks.static.hex()}/{locks.dynamic.hex()}")
    first_slot_lock_bit = (layout.slot_first_page(SlotName.A) - FIRST_DYNAMIC_LOCK_PAGE) // PAGES_PER_DYNAMIC_LOCK_BIT
    if int.from_bytes(locks.dynamic[:2], "little") >> first_slot_lock_bit:
        raise ReadBackMismatch(f"card {card_id.hex()}: slot pages are locked")
    cfg0, _, _, _ = _cfg(tag)
    cfg = tag.read_pages(cfg0, 2)
    want_auth0, want_access = _protection(tag, layout.version == 2)
    if cfg[3] != want_auth0 or cfg[4] != want_access:
        raise ReadBackMismatch(f"card {card_id.hex()}: AUTH0 {cfg[3]:02X} / ACCESS {cfg[4]:02X} read back")
    last_slot_page = layout.slot_pages(SlotName.B)[-1]
    if layout.version == 1 and cfg[3] <= last_slot_page:
        raise ReadBackMismatch("AUTH0 would protect slot pages")
    pw = derive_password(ctx.password_secret, uid)
    try:
        tag.pwd_auth(pw.pwd, expected_pack=pw.pack)
    except PwdAuthFailed as exc:
        raise ReadBackMismatch(f"card {card_id.hex()}: derived password does not open the chip") from exc
    return PersonalisedCard(card_id, uid, state.identity.hash, state.identity.cose.kid, layout,
                            state.identity.cose.message, state.current.cose.message)


__all__ = [
    "ChipCheck", "ChipState", "PersonalisedCard", "StationContext", "Step",
    "build_identity", "check_chip", "check_station_keys", "dynamic_lock_bytes", "personalise", "verify_card",
]
