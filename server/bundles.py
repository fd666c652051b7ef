"""Published trust bundles: the newest one, storing one, and signing the next from the registry.

The bundle format and its signature are :mod:`cardlib.records.bundle` (docs/card-format.md);
this module owns what the server keeps of them (:class:`server.models.PublishedBundle`, the
``trust_bundles`` table: opaque signed bytes, version, expiry) and the one use case that
makes a new one, :func:`publish_next_bundle`, shared by ``huma server bundle publish`` and tests.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cardlib.keys.root import RootKeyError, load_root_key
from cardlib.keys.signer import PublicKey
from cardlib.records.bundle import (
    CARD_ID_LENGTH,
    UID_LENGTH,
    BundleKey,
    InvalidProgrammes,
    Programme,
    SortedIdSet,
    TrustBundle,
    keystore_bundle_keys,
    sign_keystore_bundle,
    terminal_bundle_key,
    validate_programmes,
    verify_bundle,
)
from cardlib.records.errors import RecordError
from server.auth import audit
from server.card_blocks import lifted_blocks
from server.errors import BadRequest, ConfigurationError, Conflict
from server.models import Person, PublishedBundle, Terminal, TerminalStatus
from server.reconcile.denylist import lifted_denials
from server.registry import next_deny_sets

__all__ = ["PublishedResult", "enrolment_pin", "load_trust_root", "newest_stored_bundle", "newest_verified_bundle",
           "next_deny_lists", "publish_due", "publish_next_bundle", "store_bundle", "terminal_bundle_keys"]

#: Seconds per day (``valid_days`` → expiry).
DAY_S = 86400
#: Latest not-after (UNIX seconds) for a terminal without a stored certificate.
NO_CERTIFICATE_NOT_AFTER = 2**32 - 1


def load_trust_root(path: str | Path) -> PublicKey:
    """The configured trust root (``TRUST_ROOT_CERT``) as :func:`cardlib.keys.root.load_root_key` reads it.

    :param path: PEM certificate or PEM public key of the keystore's root.
    :raises ConfigurationError: unreadable, or not an Ed25519 / P-256 key (a server
        misconfiguration, answered 500, not the client's fault).
    """
    try:
        return load_root_key(path)
    except RootKeyError as exc:
        raise ConfigurationError(f"TRUST_ROOT_CERT: {exc}") from exc


def newest_stored_bundle(session: Session) -> PublishedBundle | None:
    """The highest-version stored bundle row, or None when none is published yet (not verified)."""
    return session.scalars(select(PublishedBundle).order_by(PublishedBundle.version.desc()).limit(1)).first()


def enrolment_pin(session: Session) -> dict[str, Any] | None:
    """``{"version", "sha256"}`` of the newest stored bundle, given to a counter at enrolment; None if none.

    A fresh counter installs no older bundle and no other bytes at that version
    (:func:`terminal.trust.pin_enrolment_bundle`, docs/security.md "Trust bundle and its keys").
    """
    row = newest_stored_bundle(session)
    return None if row is None else {"version": row.version, "sha256": row.sha256.hex()}


def newest_verified_bundle(session: Session, root: PublicKey) -> TrustBundle:
    """The highest-version stored bundle, verified under ``root`` (:func:`cardlib.records.bundle.verify_bundle`).

    :raises Conflict: no bundle published yet (nothing lists the technician keys), or the
        newest one does not verify under the configured root (publish a good one).
    """
    row = newest_stored_bundle(session)
    if row is None:
        raise Conflict("no trust bundle published: technician keys are unknown")
    try:
        return verify_bundle(row.blob, root)
    except RecordError as exc:
        raise Conflict(f"the newest stored trust bundle does not verify under TRUST_ROOT_CERT: {exc}") from exc


def store_bundle(session: Session, version: int, blob: bytes, expires_at: dt.datetime) -> PublishedBundle:
    """Add a signed bundle (opaque bytes) as ``version``; GET /bundle serves the highest. Not committed.

    :param expires_at: timezone-aware expiry, stored for the response headers.
    :raises Conflict: ``version`` is already stored.
    """
    bundle = PublishedBundle(version=version, blob=blob, sha256=hashlib.sha256(blob).digest(), expires_at=expires_at)
    try:
        with session.begin_nested():
            session.add(bundle)
    except IntegrityError:
        raise Conflict(f"bundle version {version} exists") from None
    return bundle


def terminal_bundle_keys(session: Session) -> list[BundleKey]:
    """Bundle entries of approved (active) and revoked (status REVOKED from the decision time) terminals.

    :returns: one :class:`cardlib.records.bundle.BundleKey` per terminal, in terminal id order;
        not-after is the certificate's (UNIX seconds), or :data:`NO_CERTIFICATE_NOT_AFTER`.
    """
    keys = []
    rows = session.scalars(select(Terminal).where(
        Terminal.status.in_([TerminalStatus.APPROVED, TerminalStatus.REVOKED])).order_by(Terminal.terminal_id))
    for terminal in rows:
        not_after = NO_CERTIFICATE_NOT_AFTER
        if terminal.certificate_der:
            certificate = x509.load_der_x509_certificate(terminal.certificate_der)
            not_after = int(certificate.not_valid_after_utc.timestamp())
        revoked_at = None
        if terminal.status is TerminalStatus.REVOKED:
            revoked_at = int((terminal.decided_at or dt.datetime.now(dt.UTC)).timestamp())
        # an enrolled key is Ed25519 or P-256: the CSR check refused any other
        public_key = cast(PublicKey, load_der_public_key(terminal.public_key))
        keys.append(terminal_bundle_key(public_key, not_after, revoked_at=revoked_at))
    return keys


def next_deny_lists(session: Session, previous: TrustBundle | None) -> tuple[SortedIdSet, SortedIdSet]:
    """The next bundle's deny lists: ``previous``'s, less what an auditor cleared, ∪ today's candidates.

    Today's candidates are :func:`server.registry.next_deny_sets` (confirmed and provisional
    findings, the registry's abandoned and replaced cards, cards blocked at the office); a card an auditor cleared by
    dismissing its finding leaves the list (:func:`server.reconcile.denylist.lifted_denials`), as does a card
    whose office block was lifted (:func:`server.card_blocks.lifted_blocks`),
    every other earlier denial stays.

    :returns: ``(deny_cards, deny_uids)``, sorted and unique.
    """
    cards, uids = next_deny_sets(session)
    if previous is None:
        return cards, uids
    lifted_cards, lifted_uids = lifted_denials(session, cards, uids)
    unblocked_cards, unblocked_uids = lifted_blocks(session, cards, uids)  # blocks lifted at the office
    lifted_cards, lifted_uids = lifted_cards | unblocked_cards, lifted_uids | unblocked_uids
    return (SortedIdSet.from_ids([*(c for c in previous.deny_cards if c not in lifted_cards), *cards], CARD_ID_LENGTH),
            SortedIdSet.from_ids([*(u for u in previous.deny_uids if u not in lifted_uids), *uids], UID_LENGTH))


def _key_marks(keys: Sequence[BundleKey]) -> set[tuple[bytes, int, int, int | None, int]]:
    return {(k.kid, int(k.role), int(k.status), k.status_time, k.not_after) for k in keys}


def publish_due(session: Session, store: Any, *, now: int | None = None) -> str | None:
    """Why the next bundle should be published now, or None when the newest one still says it all.

    Due when no bundle is stored, when the deny lists (:func:`next_deny_lists`) or the keys
    (the keystore's and :func:`terminal_bundle_keys`: a new, retired or revoked key) differ from
    the newest bundle's, or when half of the newest bundle's validity has passed (counters
    fetch a fresh one well before theirs runs out). For a scheduled ``huma server bundle
    publish --if-changed`` (docs/security.md "Deny lists without waiting for a human").

    :param store: an open :class:`cardlib.keys.keystore.KeyStore` (its root verifies the newest bundle).
    :param now: UNIX seconds (default: the current time).
    :returns: a short reason (``"no bundle yet"``, ``"deny list changed"``, ``"keys changed"``,
        ``"half of its validity passed"``) or None.
    :raises Conflict: the newest stored bundle does not verify under the keystore's root.
    """
    row = newest_stored_bundle(session)
    if row is None:
        return "no bundle yet"
    root = store.entry(store.root_kid).public_key
    try:
        previous = verify_bundle(row.blob, root)
    except RecordError as exc:
        raise Conflict(f"stored bundle v{row.version} does not verify under keystore root "
                       f"{store.root_kid.hex()}: {exc}") from None
    cards, uids = next_deny_lists(session, previous)
    if cards.blob != previous.deny_cards.blob or uids.blob != previous.deny_uids.blob:
        return "deny list changed"
    keys = keystore_bundle_keys(store.entries) + tuple(terminal_bundle_keys(session))
    if _key_marks(keys) != _key_marks(previous.keys):
        return "keys changed"
    now = int(time.time()) if now is None else now
    if now - previous.issued_at >= (previous.expires_at - previous.issued_at) / 2:
        return "half of its validity passed"
    return None


@dataclass(frozen=True)
class PublishedResult:
    """What :func:`publish_next_bundle` stored.

    :ivar bundle: the signed bundle's contents. :ivar row: its stored row (``sha256`` is the ETag).
    """

    bundle: TrustBundle
    row: PublishedBundle


#: Bundle policy names with a fixed name: name -> (least, most) value. docs/operations.md §Bundle policies.
FIXED_POLICIES: dict[str, tuple[int, int]] = {
    "offline_cap": (0, 2**53),  # rupiah per card per cycle at one counter (legacy)
    "max_days_offline": (1, 3650),  # bundle age, days, at which every cap reaches its floor
    "pin.max_failures": (1, 254),  # wrong PINs before a card locks
}
#: Per-unit caps, ``<prefix>.<unit>`` (unit: package, rupiah, visit), 0 .. 2**53.
CAP_POLICY_PREFIXES = ("cap.per_tap", "cap.per_card_cycle", "cap.terminal_exposure")
CAP_POLICY_UNITS = ("package", "rupiah", "visit")
#: Per-programme policies, ``<prefix>.<programme name>``: the fallback step limits (units per card
#: per cycle, 0 = never, docs/fallback.md) and ``pin.<programme>`` (1 = the PIN is asked, 0 = not).
PROGRAMME_POLICY_PREFIXES: dict[str, tuple[int, int]] = {
    "fallback.qr": (0, 2**53), "fallback.manual": (0, 2**53), "pin": (0, 1)}


def validate_policy(name: str, value: int, programmes: Sequence[Programme]) -> None:
    """Check one bundle policy before it is signed: a name counters read, a value in its range.

    :param name: e.g. ``fallback.qr.food``, ``cap.per_tap.package``, ``max_days_offline``.
    :param value: the integer value (units, days or a flag, by name).
    :param programmes: the bundle's programmes (``<prefix>.<programme>`` names one of them).
    :raises BadRequest: unknown name, a programme the bundle does not carry, or a value out of range.
    """
    bounds = FIXED_POLICIES.get(name)
    if bounds is None:
        prefix, _, last = name.rpartition(".")
        if prefix in CAP_POLICY_PREFIXES and last in CAP_POLICY_UNITS:
            bounds = (0, 2**53)
        elif prefix in PROGRAMME_POLICY_PREFIXES and name != "pin.max_failures":
            if last not in {p.name for p in programmes}:
                raise BadRequest(f"policy {name}: no programme {last!r} in the bundle "
                                 f"(programmes: {', '.join(p.name for p in programmes) or 'none'})", field="policies")
            bounds = PROGRAMME_POLICY_PREFIXES[prefix]
        else:
            raise BadRequest(f"unknown bundle policy {name!r} (known: {', '.join(FIXED_POLICIES)}, "
                             f"{'/'.join(CAP_POLICY_PREFIXES)}.<unit>, "
                             f"{'/'.join(PROGRAMME_POLICY_PREFIXES)}.<programme>)", field="policies")
    if isinstance(value, bool) or not isinstance(value, int) or not bounds[0] <= value <= bounds[1]:
        raise BadRequest(f"policy {name}: {value!r} is not an integer in {bounds[0]}..{bounds[1]}", field="policies")


def parse_policy_assignment(text: str) -> tuple[str, int]:
    """``NAME=VALUE`` (as ``--policy`` takes it) -> (name, integer value).

    :raises BadRequest: no ``=``, or a value that is not a decimal integer.
    """
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value.lstrip("-").isdigit():
        raise BadRequest(f"policy {text!r}: expected NAME=INTEGER, e.g. fallback.qr.food=1", field="policies")
    return name, int(value)


def publish_next_bundle(session: Session, store: Any, passphrase: bytes, *,
                        programmes: Sequence[Programme] | None = None, valid_days: int = 14,
                        now: int | None = None, person: Person | None = None,
                        audit_detail: Mapping[str, Any] | None = None,
                        set_policies: Mapping[str, int] | None = None,
                        unset_policies: Sequence[str] = ()) -> PublishedResult:
    """Sign and store the next trust bundle (version = newest + 1), audited; the caller commits.

    Keys: the keystore's issuer/technician keys and every approved or revoked terminal
    (:func:`terminal_bundle_keys`). Deny lists: :func:`next_deny_lists` (the previous bundle's
    less what an auditor cleared, ∪ confirmed and provisional clone/fraud findings, abandoned
    and replaced cards).
    Programmes and policies: the previous bundle's unless ``programmes`` is given.
    Policies: the previous bundle's, less ``unset_policies``, with ``set_policies`` set on top
    (each checked by :func:`validate_policy` against the new bundle's programmes).

    :param store: an open :class:`cardlib.keys.keystore.KeyStore`; the previous bundle must
        verify under its root, its active bundle key signs.
    :param passphrase: the bundle key's passphrase (UTF-8 bytes).
    :param valid_days: days before terminals treat the bundle as stale (≥ 1).
    :param now: issue time, UNIX seconds (default: the current time).
    :param person: who publishes (None: a console action, said by ``audit_detail``).
    :param audit_detail: extra fields of the ``bundle.publish`` audit row (e.g. ``via: cli``).
    :raises Conflict: the stored newest bundle does not verify under the keystore's root,
        or another publisher stored this version first.
    :raises KeysError: no active bundle key in the keystore, or a wrong passphrase.
    :raises BadRequest: the programmes fail :func:`cardlib.records.bundle.validate_programmes`
        (empty, unknown unit, duplicate id or name, amount out of range): nothing is signed.
    :raises BadRequest: a policy set fails :func:`validate_policy`, or an unset one is not in the bundle.
    """
    root = store.entry(store.root_kid).public_key
    previous_row = newest_stored_bundle(session)
    previous = None
    if previous_row is not None:
        try:
            previous = verify_bundle(previous_row.blob, root)
        except RecordError as exc:
            raise Conflict(f"stored bundle v{previous_row.version} does not verify under keystore root "
                           f"{store.root_kid.hex()}: {exc}") from None
    cards, uids = next_deny_lists(session, previous)
    if programmes is None:
        programmes = previous.programmes if previous is not None else ()
    try:
        validate_programmes(programmes)
    except InvalidProgrammes as exc:
        raise BadRequest(f"programmes: {exc}", field="programmes") from None
    policies = dict(previous.policies) if previous is not None else {}
    for name in unset_policies:
        if name not in policies:
            raise BadRequest(f"policy {name!r} is not in the current bundle: nothing to unset", field="policies")
        del policies[name]
    for name, value in (set_policies or {}).items():
        validate_policy(name, value, programmes)  # inherited policies were checked when first set
        policies[name] = value
    for name in sorted(n for n, v in policies.items() if n.startswith("fallback.") and v):  # docs/fallback.md
        if policies.get(f"pin.{name.rpartition('.')[2]}"):  # no card at the fallback desk, so no PIN: refused there
            raise BadRequest(f"policy {name}: pin.{name.rpartition('.')[2]}=1 protects the programme by the card "
                             "PIN, which the fallback desk cannot check; unset one of them", field="policies")
    version = (previous_row.version if previous_row is not None else 0) + 1
    issued_at = int(time.time()) if now is None else now
    bundle, blob = sign_keystore_bundle(
        store, passphrase, version=version, issued_at=issued_at, expires_at=issued_at + valid_days * DAY_S,
        terminal_keys=terminal_bundle_keys(session), deny_cards=cards, deny_uids=uids, programmes=programmes,
        policies=policies)
    row = store_bundle(session, version, blob, dt.datetime.fromtimestamp(bundle.expires_at, dt.UTC))
    audit(session, person, "bundle.publish", f"bundle:{version}", sha256=row.sha256.hex(),
          keys=len(bundle.keys), deny_cards=len(cards), deny_uids=len(uids),
          **({"policies_set": dict(set_policies)} if set_policies else {}),
          **({"policies_unset": list(unset_policies)} if unset_policies else {}), **(audit_detail or {}))
    return PublishedResult(bundle, row)
