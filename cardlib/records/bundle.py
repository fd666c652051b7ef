"""The trust bundle: one signed, versioned file every terminal holds (docs/design.md §Keys and trust, §Deny lists).

Contents (payload of a COSE_Sign1 by the bundle key, CBOR map with integer keys)::

    1  format         uint   BUNDLE_FORMAT (1)
    2  version        uint   strictly increasing; terminals refuse an older one
    3  issued_at      uint   UNIX seconds (UTC)
    4  expires_at     uint   UNIX seconds; past it the bundle is *stale*: terminals
                             tighten offline limits (policy), they do not stop
    5  keys           [ [kid bstr(4), role uint, alg int, pub bstr, status uint,
                         status_time uint/null, not_after uint], ... ]
    6  deny_cards     bstr   sorted, unique 8-byte card ids, concatenated
    7  deny_uids      bstr   sorted, unique 7-byte chip UIDs, concatenated
    8  programmes     [ {1: id uint, 2: name tstr, 3: unit tstr, 4: per_cycle uint,
                         5: cycle_days uint (optional, ignored)}, ... ]
                             cycles are province-wide (cardlib.records.claims.cycle_of),
                             never per programme
    9  policies       { tstr: int }   e.g. "offline_cap" (rupiah), "max_days_offline"

File = CBOR array ``[endorsement, bundle]`` or ``[endorsement, bundle, revocations]``:
``endorsement`` is the root's COSE_Sign1 over the bundle key
(:func:`cardlib.keys.keystore.endorse`), so a terminal needs to pin only the root public
key, and the bundle key can rotate without touching terminals; ``revocations`` is the
root's signed list of revoked bundle keys (:func:`cardlib.keys.keystore.sign_revocations`).

Trust chain (docs/security.md, "Trust bundle and its keys"): the endorsement of a bundle
key carries its own short period (≤ :data:`cardlib.keys.keystore.MAX_ENDORSEMENT_DAYS`),
which counters check against *their* trusted time, never against the ``issued_at`` the
signer chose; a bundle is in force at most until ``min(expires_at, endorsement end)``; a
kid on any revocation list a counter has seen signs nothing it installs again; a new
version may exceed the installed one by at most :data:`MAX_VERSION_STEP`; programmes
must pass :func:`validate_programmes`.

Deny-list lookup: the lists stay one sorted ``bytes`` blob each and are searched by
bisection (≈19 probes at 300,000 entries, a few microseconds; memory = 8 B per card id
instead of ~70 B per Python object). The verifier checks the blobs are sorted and unique,
so a lookup can trust the order.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from cardlib.keys.errors import KeysError
from cardlib.keys.keystore import MAX_ENDORSEMENT_DAYS, RevocationList, read_endorsement, verify_revocations
from cardlib.keys.keystore import Role as KeystoreRole
from cardlib.keys.signer import PublicKey, Signer, cose_key, public_key_from_raw, raw_public_bytes, sign1_with
from cardlib.records.claims import UINT32_MAX, IdentityClaims, Unit
from cardlib.records.cose import Algorithm, CoseError, CoseKey, verify1
from cardlib.records.errors import DeniedCard, DenyEntry, RecordError, RevokedKid, UnknownKid

BUNDLE_FORMAT = 1
BUNDLE_AAD = b"huma-betang/trust-bundle/v1"
"""COSE external_aad of the bundle: context string so no other signed object fits."""
CARD_ID_LENGTH = 8
UID_LENGTH = 7
MAX_VERSION_STEP = 1000
"""Most a new bundle's version may exceed the installed one by: a stolen key cannot jump
to 2^62 and lock every later legitimate bundle out (the server counts up by one)."""
MAX_PER_CYCLE = {"package": 1_000, "visit": 1_000, "rupiah": 100_000_000}
"""Largest entitlement per half-year cycle a programme may grant, per unit (packages,
visits, rupiah); a bundle that names more is a typing error, not a policy."""
PROGRAMME_ID_RANGE = (1, 23)
"""Programme ids a card can hold (docs/card-format.md: CBOR keys 1..23, one byte)."""
_DAY_S = 86400


class BundleError(RecordError):
    """Root of trust-bundle errors."""


class MalformedBundle(BundleError):
    """The file is not a well-formed trust bundle of a format we know."""


class BundleSignatureError(BundleError):
    """The endorsement (root) or the bundle signature (bundle key) does not verify."""


class StaleBundleVersion(BundleError):
    """The bundle's version is lower than the one the terminal already holds.

    :ivar version: the offered version. :ivar held: the version held.
    """

    def __init__(self, version: int, held: int) -> None:
        super().__init__(f"bundle version {version} is older than the held version {held}")
        self.version = version
        self.held = held


class BundleVersionJump(BundleError):
    """The bundle's version exceeds the installed one by more than :data:`MAX_VERSION_STEP`."""


class EndorsementNotValid(BundleSignatureError):
    """The root's endorsement of the bundle key has no period, is not yet or no longer
    valid at the terminal's trusted time, or does not cover the bundle's ``issued_at``."""


class BundleKeyRevoked(BundleSignatureError):
    """The bundle key is on a root-signed revocation list."""


class InvalidProgrammes(BundleError):
    """The programme list is empty, or a programme has an unknown unit, a duplicate id or
    name, or an amount outside 1..:data:`MAX_PER_CYCLE`."""


class KeyRole(enum.IntEnum):
    """Roles of keys listed in a bundle (what their signatures may be used for)."""

    ISSUER = 1
    TERMINAL = 2
    TECHNICIAN = 3


class KeyState(enum.IntEnum):
    """Key status in a bundle."""

    ACTIVE = 0
    RETIRED = 1  # verify-only
    REVOKED = 2


@dataclass(frozen=True)
class BundleKey:
    """One public key listed in the bundle.

    :ivar status_time: UNIX seconds of retirement/revocation; None while active.
    """

    kid: bytes
    role: KeyRole
    alg: Algorithm
    public_key: PublicKey = field(repr=False)
    status: KeyState = KeyState.ACTIVE
    status_time: int | None = None
    not_after: int = 2**32 - 1

    def _encode(self) -> list[Any]:
        return [self.kid, int(self.role), int(self.alg), raw_public_bytes(self.public_key),
                int(self.status), self.status_time, self.not_after]

    @classmethod
    def _decode(cls, item: Any) -> BundleKey:
        kid, role, alg, pub, status, status_time, not_after = item
        a = Algorithm(alg)
        key = cls(kid, KeyRole(role), a, public_key_from_raw(a, pub), KeyState(status), status_time, not_after)
        if cose_key(key.public_key).kid != kid:
            raise MalformedBundle(f"bundle key {kid.hex()}: kid does not match its public key")
        return key


@dataclass(frozen=True)
class Programme:
    """A benefit programme (docs/design.md §The job).

    :ivar per_cycle: entitlement per cycle in ``unit`` (e.g. rupiah or packages).
    :ivar cycle_days: ignored legacy field (0 = absent, not encoded). Every programme
        uses the one province-wide half-year calendar of
        :func:`cardlib.records.claims.cycle_of`; a bundle cannot define another.
    """

    id: int
    name: str
    unit: str
    per_cycle: int
    cycle_days: int = 0

    def _encode(self) -> dict[int, Any]:
        out = {1: self.id, 2: self.name, 3: self.unit, 4: self.per_cycle}
        if self.cycle_days:
            out[5] = self.cycle_days
        return out

    @classmethod
    def _decode(cls, m: Mapping[int, Any]) -> Programme:
        return cls(m[1], m[2], m[3], m[4], m.get(5, 0))


class SortedIdSet:
    """A set of fixed-width ids stored as one sorted, unique ``bytes`` blob.

    Membership by bisection: O(log n) slices, no per-entry objects.

    :param blob: concatenated ids, sorted ascending, no duplicates.
    :param width: bytes per id.
    :raises MalformedBundle: when the length is not a multiple of ``width`` or the ids
        are not strictly increasing.
    """

    def __init__(self, blob: bytes, width: int, *, check: bool = True) -> None:
        if len(blob) % width:
            raise MalformedBundle(f"id list of {len(blob)} bytes is not a multiple of {width}")
        self._blob = bytes(blob)
        self._width = width
        self._n = len(blob) // width
        if check:
            prev = b""
            for i in range(self._n):
                cur = self._blob[i * width:(i + 1) * width]
                if cur <= prev:
                    raise MalformedBundle("deny list is not sorted and unique")
                prev = cur

    @classmethod
    def from_ids(cls, ids: Iterable[bytes], width: int) -> SortedIdSet:
        """Build from any iterable of ``width``-byte ids (sorted and de-duplicated here).

        :raises MalformedBundle: on an id of the wrong length.
        """
        unique = set(ids)
        for i in unique:
            if len(i) != width:
                raise MalformedBundle(f"id {i.hex()} is not {width} bytes")
        return cls(b"".join(sorted(unique)), width, check=False)

    @property
    def blob(self) -> bytes:
        return self._blob

    def __len__(self) -> int:
        return self._n

    def __iter__(self) -> Iterator[bytes]:
        w = self._width
        return (self._blob[i * w:(i + 1) * w] for i in range(self._n))

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, (bytes, bytearray)) or len(item) != self._width:
            return False
        item = bytes(item)
        blob, w = self._blob, self._width
        lo, hi = 0, self._n
        while lo < hi:
            mid = (lo + hi) // 2
            v = blob[mid * w:(mid + 1) * w]
            if v < item:
                lo = mid + 1
            elif v > item:
                hi = mid
            else:
                return True
        return False


@dataclass(frozen=True)
class TrustBundle:
    """A verified (or to-be-signed) trust bundle. See the module doc for the wire format."""

    version: int
    issued_at: int
    expires_at: int
    keys: tuple[BundleKey, ...] = ()
    deny_cards: SortedIdSet = field(default_factory=lambda: SortedIdSet(b"", CARD_ID_LENGTH))
    deny_uids: SortedIdSet = field(default_factory=lambda: SortedIdSet(b"", UID_LENGTH))
    programmes: tuple[Programme, ...] = ()
    policies: Mapping[str, int] = field(default_factory=dict)
    signer_kid: bytes = b""
    """kid of the bundle key that signed it (set by :func:`verify_bundle`)."""
    endorsed_until: int | None = None
    """End of the root's endorsement of the signing key, UNIX seconds (set by :func:`verify_bundle`)."""
    revocations: RevocationList | None = None
    """The root's revocation list carried in the file, if any (set by :func:`verify_bundle`)."""

    @property
    def in_force_until(self) -> int:
        """UNIX seconds after which the bundle is expired: ``expires_at``, cut at the endorsement's end."""
        if self.endorsed_until is None:
            return self.expires_at
        return min(self.expires_at, self.endorsed_until)

    # ------------------------------------------------------------------ terminal queries

    def check_card(self, claims: IdentityClaims, kid: bytes, uid: bytes) -> None:
        """Refuse a denied card (by its 8-byte card id or its 7-byte chip UID).

        Call it only once the identity record verified (docs/card-format.md §5: signature, claims,
        UID, then the deny list): the :class:`DeniedCard` carries these claims as verified.

        :param claims: the identity record's verified claims.
        :param kid: the issuer key id the record verified under.
        :param uid: the chip UID the record verified for (``cardlib.records.secure.NO_UID`` for a secure card).
        :raises DeniedCard: when the card id or the UID is on the deny list, with the card's verified identity.
        """
        listed: DenyEntry | None = ("card_id" if claims.card_id in self.deny_cards
                                    else "uid" if uid in self.deny_uids else None)
        if listed is not None:
            raise DeniedCard(card_id=claims.card_id, household_ref=claims.household_ref, kid=kid, uid=uid,
                             listed=listed, bundle_version=self.version)

    def is_stale(self, now: int | None = None) -> bool:
        """True once ``now`` (UNIX seconds) is past ``expires_at``: tighten offline limits."""
        return (int(time.time()) if now is None else now) > self.expires_at

    def key(self, kid: bytes) -> BundleKey:
        """:raises UnknownKid: when the bundle lists no such key."""
        for k in self.keys:
            if k.kid == kid:
                return k
        raise UnknownKid(kid)

    def resolver(self, role: KeyRole) -> _Resolver:
        """A :data:`cardlib.records.cose.KeyResolver` for ``verify1`` over keys of ``role``.

        Active and retired (verify-only) keys resolve; revoked keys raise
        :class:`RevokedKid`; keys of another role raise :class:`UnknownKid`, so a
        terminal key can never pass as an issuer key.
        """
        return _Resolver(self, role)

    # ------------------------------------------------------------------ encoding

    def payload(self) -> bytes:
        """The CBOR payload (deterministic: fixed key order)."""
        return cbor2.dumps({
            1: BUNDLE_FORMAT,
            2: self.version,
            3: self.issued_at,
            4: self.expires_at,
            5: [k._encode() for k in self.keys],
            6: self.deny_cards.blob,
            7: self.deny_uids.blob,
            8: [p._encode() for p in self.programmes],
            9: dict(sorted(self.policies.items())),
        })


@dataclass(frozen=True)
class _Resolver:
    bundle: TrustBundle
    role: KeyRole

    def __call__(self, kid: bytes) -> CoseKey:
        k = self.bundle.key(kid)
        if k.role is not self.role:
            raise UnknownKid(kid, f"kid {kid.hex()} is a {k.role.name.lower()} key, not {self.role.name.lower()}")
        if k.status is KeyState.REVOKED:
            raise RevokedKid(kid)
        return CoseKey(k.kid, k.alg, k.public_key)


def sign_bundle(bundle: TrustBundle, bundle_signer: Signer, endorsement: bytes,
                revocations: bytes | None = None) -> bytes:
    """Sign a bundle with the bundle key and attach the root's endorsement of that key.

    :param endorsement: from :meth:`cardlib.keys.keystore.KeyStore.endorsement` for the
        bundle key's kid.
    :param revocations: the root's revocation list (:meth:`cardlib.keys.keystore.KeyStore.revocations`).
    :returns: the bundle file bytes (CBOR array of two or three COSE_Sign1 messages).
    :raises BundleError: when ``issued_at >= expires_at`` or the version is negative.
    """
    if bundle.version < 0 or bundle.expires_at <= bundle.issued_at:
        raise BundleError("bundle needs version >= 0 and expires_at > issued_at")
    parts = [endorsement, sign1_with(bundle_signer, bundle.payload(), BUNDLE_AAD)]
    return cbor2.dumps(parts if revocations is None else [*parts, revocations])


def validate_programmes(programmes: Iterable[Programme]) -> None:
    """Refuse a programme list no counter should act on (server before signing, counter before installing).

    Rules: at least one programme; ids in :data:`PROGRAMME_ID_RANGE` and unique; names
    1..64 characters and unique; unit one of :class:`cardlib.records.claims.Unit` in lower
    case (``package``, ``rupiah``, ``visit``); ``per_cycle`` an integer in
    1..:data:`MAX_PER_CYCLE` of its unit (never above the card's uint32).

    :raises InvalidProgrammes: naming the first programme that breaks a rule.
    """
    items = list(programmes)
    if not items:
        raise InvalidProgrammes("the programme list is empty: every card would be declined")
    ids: set[int] = set()
    names: set[str] = set()
    units = {u.name.lower() for u in Unit}
    for p in items:
        what = f"programme {p.id!r} ({p.name!r})"
        if type(p.id) is not int or not PROGRAMME_ID_RANGE[0] <= p.id <= PROGRAMME_ID_RANGE[1]:
            raise InvalidProgrammes(f"{what}: id must be {PROGRAMME_ID_RANGE[0]}..{PROGRAMME_ID_RANGE[1]}")
        if p.id in ids:
            raise InvalidProgrammes(f"{what}: duplicate programme id {p.id}")
        if not isinstance(p.name, str) or not 1 <= len(p.name) <= 64 or p.name != p.name.strip():
            raise InvalidProgrammes(f"{what}: name must be 1..64 characters without outer spaces")
        if p.name in names:
            raise InvalidProgrammes(f"{what}: duplicate programme name {p.name!r}")
        if p.unit not in units:
            raise InvalidProgrammes(f"{what}: unknown unit {p.unit!r} (one of {', '.join(sorted(units))})")
        limit = min(MAX_PER_CYCLE[p.unit], UINT32_MAX)
        if type(p.per_cycle) is not int or not 1 <= p.per_cycle <= limit:
            raise InvalidProgrammes(f"{what}: per_cycle {p.per_cycle!r} {p.unit} is outside 1..{limit}")
        ids.add(p.id)
        names.add(p.name)


def check_version_step(version: int, floor: int | None) -> None:
    """Refuse a version below ``floor`` or more than :data:`MAX_VERSION_STEP` above it.

    :param floor: the highest version the terminal holds from a key not revoked (None: none yet).
    :raises StaleBundleVersion: ``version < floor``.
    :raises BundleVersionJump: ``version > floor + MAX_VERSION_STEP``.
    """
    if floor is None:
        return
    if version < floor:
        raise StaleBundleVersion(version, floor)
    if version > floor + MAX_VERSION_STEP:
        raise BundleVersionJump(f"bundle version {version} jumps more than {MAX_VERSION_STEP} past the held "
                                f"version {floor}; refused")


def bundle_revocations(data: bytes, root_public_key: PublicKey) -> RevocationList | None:
    """The root's revocation list in a bundle file, verified, without trusting the rest of the file.

    A counter learns it even from a bundle it then refuses: it is the root's word.

    :raises MalformedBundle: not a bundle file. :raises BundleSignatureError: the list is not the root's.
    """
    parts = _file_parts(data)
    if len(parts) < 3:
        return None
    try:
        return verify_revocations(parts[2], root_public_key)
    except KeysError as exc:
        raise BundleSignatureError(f"revocation list: {exc}") from exc


def _file_parts(data: bytes) -> list[bytes]:
    try:
        outer = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, EOFError) as exc:
        raise MalformedBundle(f"not CBOR: {exc}") from exc
    if not (isinstance(outer, list) and len(outer) in (2, 3) and all(isinstance(x, bytes) for x in outer)):
        raise MalformedBundle("bundle file must be [endorsement, bundle] or [endorsement, bundle, revocations]")
    return outer


def verify_bundle(
    data: bytes,
    root_public_key: PublicKey,
    *,
    held_version: int | None = None,
    now: int | None = None,
    revoked: Iterable[bytes] = (),
) -> TrustBundle:
    """Verify a trust bundle file and decode it.

    Order: structure → root endorsement of the bundle key (pinned root) → the key on no
    revocation list (``revoked`` and the file's own) → endorsement period covers ``now``
    and ``issued_at`` (when ``now`` is given) → bundle key not expired → bundle signature
    → format → version ≥ held → canonical deny lists. Expiry is *not* an error (see
    :attr:`TrustBundle.in_force_until`).

    :param root_public_key: the root key pinned on the terminal.
    :param held_version: the version the terminal already trusts; an equal version is
        accepted (same bundle fetched again), a lower one refused.
    :param now: the terminal's trusted time, UNIX seconds (never earlier than the newest
        ``issued_at`` it installed); None skips the period checks (the server's stored copies).
    :param revoked: kids (4 bytes) of bundle keys the root revoked, as the terminal learnt them.
    :raises MalformedBundle: bad structure or unknown format.
    :raises BundleSignatureError: endorsement or bundle signature does not verify.
    :raises BundleKeyRevoked: the bundle key is revoked.
    :raises EndorsementNotValid: the endorsement has no period, its period is longer than
        :data:`cardlib.keys.keystore.MAX_ENDORSEMENT_DAYS`, or misses ``now`` or ``issued_at``.
    :raises StaleBundleVersion: version lower than ``held_version``.
    """
    parts = _file_parts(data)
    endorsement, message = parts[0], parts[1]
    try:
        endorsed = read_endorsement(endorsement, root_public_key, KeystoreRole.BUNDLE)
    except KeysError as exc:
        raise BundleSignatureError(f"bundle key endorsement: {exc}") from exc
    bkey = endorsed.entry
    own = bundle_revocations(data, root_public_key)
    if bkey.kid in set(revoked) | (own.revoked if own is not None else frozenset()):
        raise BundleKeyRevoked(f"bundle key {bkey.kid.hex()} is revoked by the root")
    start, end = endorsed.valid_from, endorsed.valid_until
    if now is not None:
        if start is None or end is None:
            raise EndorsementNotValid(f"endorsement of bundle key {bkey.kid.hex()} has no validity period")
        if end - start > MAX_ENDORSEMENT_DAYS * _DAY_S:
            raise EndorsementNotValid(f"endorsement of bundle key {bkey.kid.hex()} is longer than "
                                      f"{MAX_ENDORSEMENT_DAYS} days")
        if not start <= now <= end:
            raise EndorsementNotValid(f"endorsement of bundle key {bkey.kid.hex()} is valid {start}..{end}, "
                                      f"not at trusted time {now}")
        if now > bkey.not_after:
            raise EndorsementNotValid(f"bundle key {bkey.kid.hex()} expired at {bkey.not_after} (endorsement)")
    try:
        verified = verify1(message, {bkey.kid: cose_key(bkey.public_key)}, BUNDLE_AAD)
    except CoseError as exc:
        raise BundleSignatureError(f"bundle signature: {exc}") from exc
    try:
        m = cbor2.loads(verified.payload)
        if m[1] != BUNDLE_FORMAT:
            raise MalformedBundle(f"unknown bundle format {m[1]!r}")
        bundle = TrustBundle(
            version=int(m[2]),
            issued_at=int(m[3]),
            expires_at=int(m[4]),
            keys=tuple(BundleKey._decode(k) for k in m[5]),
            deny_cards=SortedIdSet(m[6], CARD_ID_LENGTH),
            deny_uids=SortedIdSet(m[7], UID_LENGTH),
            programmes=tuple(Programme._decode(p) for p in m[8]),
            policies=dict(m[9]),
            signer_kid=bkey.kid,
            endorsed_until=end,
            revocations=own,
        )
    except MalformedBundle:
        raise
    except (cbor2.CBORDecodeError, KeyError, TypeError, ValueError, KeysError) as exc:
        raise MalformedBundle(f"bad bundle payload: {exc!r}") from exc
    if bundle.issued_at > bkey.not_after:
        raise BundleSignatureError(f"bundle key {bkey.kid.hex()} had expired when this bundle was issued")
    if now is not None and start is not None and end is not None and not start <= bundle.issued_at <= end:
        raise EndorsementNotValid(f"bundle issued at {bundle.issued_at}, outside its key's endorsement "
                                  f"{start}..{end}")
    if held_version is not None and bundle.version < held_version:
        raise StaleBundleVersion(bundle.version, held_version)
    return bundle


def keystore_bundle_keys(entries: Iterable[Any]) -> tuple[BundleKey, ...]:
    """Bundle keys for the issuer and technician keys of a keystore (status and times carried over).

    :param entries: :class:`cardlib.keys.keystore.KeyEntry` objects (``KeyStore.entries``).
    :returns: one :class:`BundleKey` per issuer/technician key; other roles are not for terminals.
    """
    roles = {KeystoreRole.ISSUER: KeyRole.ISSUER, KeystoreRole.TECHNICIAN: KeyRole.TECHNICIAN}
    states = {"active": KeyState.ACTIVE, "retired": KeyState.RETIRED, "revoked": KeyState.REVOKED}
    return tuple(
        BundleKey(e.kid, roles[e.role], e.alg, e.public_key, states[e.status.value], e.status_time, e.not_after)
        for e in entries if e.role in roles
    )


def terminal_bundle_key(public_key: PublicKey, not_after: int, *, revoked_at: int | None = None) -> BundleKey:
    """The bundle entry of an enrolled terminal (from its verified certificate).

    :param not_after: the certificate's not-after, UNIX seconds.
    :param revoked_at: compromise time when the terminal key is revoked.
    """
    ck = cose_key(public_key)
    return BundleKey(ck.kid, KeyRole.TERMINAL, ck.alg, public_key,
                     KeyState.REVOKED if revoked_at is not None else KeyState.ACTIVE, revoked_at, not_after)


def sign_keystore_bundle(
    store: Any,
    bundle_passphrase: bytes,
    *,
    version: int,
    issued_at: int,
    expires_at: int,
    terminal_keys: Iterable[BundleKey] = (),
    deny_cards: SortedIdSet | None = None,
    deny_uids: SortedIdSet | None = None,
    programmes: Iterable[Programme] = (),
    policies: Mapping[str, int] | None = None,
) -> tuple[TrustBundle, bytes]:
    """Build and sign a bundle from a keystore: its issuer/technician keys plus ``terminal_keys``.

    The one bundle builder of ``huma keys bundle`` (offline) and ``huma server bundle publish``.

    :param store: an open :class:`cardlib.keys.keystore.KeyStore`; its active BUNDLE key signs,
        and the root's endorsement of that key is attached.
    :param bundle_passphrase: passphrase of the bundle key (UTF-8 bytes).
    :param issued_at: UNIX seconds. :param expires_at: UNIX seconds, > ``issued_at``; cut at
        the end of the bundle key's endorsement (counters would cut it there anyway).
    :returns: ``(bundle, file bytes)``; the root's revocation list is attached when the
        keystore has one.
    :raises KeysError: no active bundle key or a wrong passphrase.
    :raises BundleError: see :func:`sign_bundle`.
    """
    key = store.active(KeystoreRole.BUNDLE)
    endorsement = store.endorsement(key.kid)
    endorsed = read_endorsement(endorsement, store.entry(store.root_kid).public_key, KeystoreRole.BUNDLE)
    if endorsed.valid_until is not None and endorsed.valid_until < expires_at:
        expires_at = max(endorsed.valid_until, issued_at + 1)
    bundle = TrustBundle(
        version=version, issued_at=issued_at, expires_at=expires_at,
        keys=keystore_bundle_keys(store.entries) + tuple(terminal_keys),
        deny_cards=deny_cards if deny_cards is not None else SortedIdSet(b"", CARD_ID_LENGTH),
        deny_uids=deny_uids if deny_uids is not None else SortedIdSet(b"", UID_LENGTH),
        programmes=tuple(programmes), policies=dict(policies or {}),
    )
    signer = store.signer(key.kid, bundle_passphrase)
    return bundle, sign_bundle(bundle, signer, endorsement, store.revocations())
